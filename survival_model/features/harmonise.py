"""Site harmonisation of feature columns with ComBat (combatlearn), fitted on training rows only.

:class:`SiteHarmoniser` is a scikit-learn transformer over a feature-table frame: ``fit`` learns, from
the rows it is given (a training fold), each site's location and scale effect per feature (ComBat's
empirical-Bayes estimates, via ``combatlearn.ComBat(batch=..., method=...)``); ``transform`` removes
those effects from any rows of seen sites, with the estimates frozen: a held-out row is harmonised the
same way alone or in a batch, and never influences the fit (DESIGN.md 7).

Columns: the feature columns are the numeric columns whose names start with ``feature_prefixes``;
every other column (site, case id, clinical fields, outcomes) passes through unchanged.

Covariates (``method="fortin"`` only; Johnson's ComBat ignores them) are columns whose biological
effect ComBat must protect, e.g. age or primary cancer. Numeric covariates enter linearly; others are
one-hot encoded with the levels seen in ``fit`` (a level not seen in ``fit`` is an error). Survival
outcomes are never covariates: ``time_days``, ``event`` and any name starting with ``time``,
``event``, ``os_``, ``death``, ``dead``, ``surv`` or ``censor`` (any case) are refused with a
``ValueError``, since protecting the outcome would leak it into the harmonised features.

Missing values (ComBat itself accepts none), decided on the training rows:

* columns that are constant on the observed training rows (including all-NaN ones) carry no site
  effect that can be estimated: they pass through unchanged;
* columns without NaN are harmonised together (their empirical-Bayes priors pooled);
* columns with NaN are grouped by their missingness pattern (e.g. all ``netc`` features are missing
  for the patients without necrosis) and each group is harmonised on the rows where it is observed.
  A group with exactly 1 observed row in some training site cannot be estimated for that site:
  it passes through unchanged, with a warning;
* a group not observed at all in a training site (e.g. ``int_*_t2f`` at a site that does not acquire FLAIR:
  all NaN there) is harmonised among the sites where it is observed, when there are at least two of them
  (``absent_sites_`` records, per column, the sites left out); observed in one site only, it has no site
  effect to estimate and passes through unchanged, with a warning. A column NaN for the whole cohort is
  constant (above). At transform time a value of such a column in a site its fit left out (the site
  acquired the sequence for new patients only) passes through unchanged: its effect was never estimated;
* at transform time NaN stays NaN; the other values of a row are harmonised as usual (Johnson's and
  Fortin's ComBat adjust each feature separately, so a missing value does not affect the others; this
  is why the PCA-based CovBat (``chen``) is not offered).

``passthrough_`` records which feature columns were left unchanged, and why.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from combatlearn import ComBat
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

#: combatlearn method names (and aliases) accepted: the methods that adjust features one by one.
METHODS: dict[str, str] = {
    "johnson": "johnson",
    "classic_combat": "johnson",
    "fortin": "fortin",
    "neurocombat": "fortin",
}

_OUTCOME_NAME = re.compile(r"^(time|event|os_|death|dead|surv|censor)")


def outcome_like(name: str) -> bool:
    """Whether a column name looks like a survival outcome (never allowed as a ComBat covariate)."""
    lowered = name.strip().lower()
    return bool(_OUTCOME_NAME.match(lowered)) or lowered == "os"


@dataclass
class _Group:
    """Feature columns harmonised together by one fitted ComBat model."""

    columns: list[str]
    model: Any  # combatlearn.ComBat
    fill: pd.Series  # training means, used for NaN while transforming (see the module docstring)
    sites: list[str]  # the sites the model was fitted on (where the group is observed)


class SiteHarmoniser(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """ComBat site harmonisation of a feature-table frame (see the module docstring).

    Parameters
    ----------
    site_column:
        The batch column (the institution).
    covariates:
        Columns to protect (``method="fortin"``); outcome-like names raise ``ValueError``.
    method:
        ``"johnson"`` (classic ComBat, no covariates) or ``"fortin"`` (neuroComBat, with covariates).
    feature_prefixes:
        Columns starting with one of these are harmonised.
    """

    def __init__(
        self,
        site_column: str = "site",
        covariates: Sequence[str] = (),
        method: str = "johnson",
        feature_prefixes: Sequence[str] = ("vol_", "int_", "rad_"),
    ) -> None:
        self.site_column = site_column
        self.covariates = covariates
        self.method = method
        self.feature_prefixes = feature_prefixes
        self._check_params()

    # ----------------------------------------------------------------------------------------------

    def _check_params(self) -> str:
        method = METHODS.get(str(self.method).lower())
        if method is None:
            raise ValueError(f"method {self.method!r} is not supported; use one of {sorted(METHODS)} "
                             "(methods that adjust each feature separately, so that missing values stay local)")
        if isinstance(self.covariates, str):
            raise ValueError(f"covariates must be a list of column names, not the string {self.covariates!r}")
        outcomes = [c for c in self.covariates if outcome_like(str(c))]
        if outcomes:
            raise ValueError(
                f"covariate(s) {outcomes} look like survival outcomes; ComBat must never protect the outcome "
                "(it would leak survival into the harmonised features): remove them from covariates"
            )
        if self.site_column in self.covariates:
            raise ValueError(f"the site column {self.site_column!r} cannot also be a covariate")
        prefixed = [c for c in self.covariates if str(c).startswith(tuple(self.feature_prefixes))]
        if prefixed:
            raise ValueError(f"covariate(s) {prefixed} are feature columns (prefixes {tuple(self.feature_prefixes)})")
        if self.covariates and method == "johnson":
            raise ValueError("method 'johnson' ignores covariates; use method='fortin' to protect "
                             f"{list(self.covariates)}")
        return method

    def _feature_columns(self, frame: pd.DataFrame) -> list[str]:
        columns = [str(c) for c in frame.columns if str(c).startswith(tuple(self.feature_prefixes))]
        bad = [c for c in columns if not (pd.api.types.is_numeric_dtype(frame[c]) or frame[c].isna().all())]
        if bad:
            raise ValueError(f"feature column(s) {bad[:5]} are not numeric")
        return columns

    def _check_frame(self, frame: Any, what: str) -> pd.DataFrame:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{what} needs a pandas DataFrame with the site column, covariates and features")
        needed = [self.site_column, *self.covariates]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{what}: column(s) {missing} missing (columns: {list(frame.columns)[:10]}...)")
        for column in needed:
            if frame[column].isna().any():
                raise ValueError(f"{what}: column {column!r} has {int(frame[column].isna().sum())} missing "
                                 "value(s); impute covariates (inside the fold) or drop the rows first")
        return frame

    def _covariate_frame(self, frame: pd.DataFrame, fitting: bool) -> pd.DataFrame | None:
        if not self.covariates:
            return None
        parts: list[pd.Series] = []
        if fitting:
            self.covariate_levels_: dict[str, list[str]] = {}
        for column in self.covariates:
            values = frame[column]
            if pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
                parts.append(values.astype("float64").rename(column).reset_index(drop=True))
                continue
            text = values.astype(str)
            if fitting:
                self.covariate_levels_[column] = sorted(str(v) for v in text.unique())
            levels = self.covariate_levels_[column]
            unseen = sorted(str(v) for v in set(text) - set(levels))
            if unseen:
                raise ValueError(f"covariate {column!r} has level(s) {unseen} not seen when fitting "
                                 f"(seen: {levels}); fit on rows that include them")
            for level in levels[1:]:  # the first level is the reference
                parts.append((text == level).astype("float64").rename(f"{column}={level}").reset_index(drop=True))
        return pd.concat(parts, axis=1) if parts else None

    # ----------------------------------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y: Any = None) -> SiteHarmoniser:  # noqa: N803 - scikit-learn's name
        """Estimate the site effects on these rows only (the training rows of a fold)."""
        method = self._check_params()
        frame = self._check_frame(X, "fit")
        sites = frame[self.site_column].astype(str).reset_index(drop=True)
        counts = sites.value_counts()
        small = sorted(str(s) for s in counts[counts < 2].index)
        if small:
            raise ValueError(f"site(s) {small} have fewer than 2 rows in the fitting data; ComBat needs at least "
                             "2 rows per site: merge or drop those sites")
        self.sites_: list[str] = sorted(str(s) for s in counts.index)
        self.feature_columns_: list[str] = self._feature_columns(frame)
        covariates = self._covariate_frame(frame, fitting=True)
        features = frame[self.feature_columns_].astype("float64").reset_index(drop=True)
        self.passthrough_: dict[str, str] = {}
        self.absent_sites_: dict[str, list[str]] = {}
        self.groups_: list[_Group] = []
        if len(self.sites_) < 2:
            warnings.warn(f"only one site ({self.sites_[0]!r}) in the fitting data: nothing to harmonise, "
                          "features pass through unchanged", UserWarning, stacklevel=2)
            self.passthrough_ = dict.fromkeys(self.feature_columns_, "single site")
            return self

        patterns: dict[bytes, list[str]] = {}
        for column in self.feature_columns_:
            values = features[column]
            observed = values.dropna()
            if observed.empty or observed.nunique() == 1:
                self.passthrough_[column] = "constant on the fitting rows"
                continue
            patterns.setdefault(values.isna().to_numpy().tobytes(), []).append(column)

        for key, columns in patterns.items():
            rows = ~np.frombuffer(key, dtype=bool)
            group_sites = sites[rows]
            per_site = group_sites.value_counts().reindex(self.sites_, fill_value=0)
            seen_sites = [str(s) for s in self.sites_ if per_site[s] > 0]
            if (per_site == 1).any():
                thin = sorted(str(s) for s in per_site[per_site == 1].index)
                warnings.warn(
                    f"{len(columns)} feature column(s) (e.g. {columns[0]!r}) have fewer than 2 observed values in "
                    f"site(s) {thin}: left unharmonised", UserWarning, stacklevel=2)
                self.passthrough_.update(dict.fromkeys(columns, f"fewer than 2 observed rows in site(s) {thin}"))
                continue
            if len(seen_sites) < 2:
                warnings.warn(
                    f"{len(columns)} feature column(s) (e.g. {columns[0]!r}) are observed in site {seen_sites[0]!r} "
                    "only (the other sites lack them, e.g. a sequence they do not acquire): no site effect to "
                    "estimate, left unharmonised", UserWarning, stacklevel=2)
                self.passthrough_.update(dict.fromkeys(columns, f"observed in site {seen_sites[0]!r} only"))
                continue
            absent = [str(s) for s in self.sites_ if per_site[s] == 0]
            if absent:
                self.absent_sites_.update({c: absent for c in columns})
            index = pd.RangeIndex(int(rows.sum()))
            data = features.loc[rows, columns].set_axis(index)
            batch = group_sites.set_axis(index)
            cov = covariates.loc[rows].set_axis(index) if covariates is not None else None
            model = ComBat(batch=batch, continuous_covariates=cov, method=method)
            with warnings.catch_warnings():
                # One column: empirical Bayes has nothing to pool, ComBat is per-site standardisation (fine).
                warnings.filterwarnings("ignore", message="Only one feature")
                model.fit(data)
            self.groups_.append(_Group(columns, model, data.mean(axis=0), seen_sites))
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803 - scikit-learn's name
        """Remove the fitted site effects from these rows; same columns and index out."""
        check_is_fitted(self, "groups_")
        frame = self._check_frame(X, "transform")
        sites = frame[self.site_column].astype(str).reset_index(drop=True)
        unseen = sorted(str(s) for s in set(sites) - set(self.sites_))
        if unseen:
            raise ValueError(f"site(s) {unseen} were not seen when fitting the harmoniser (fitted sites: "
                             f"{self.sites_}); fit it on training rows that include every site to harmonise")
        missing = [c for c in self.feature_columns_ if c not in frame.columns]
        if missing:
            raise ValueError(f"feature column(s) {missing[:5]} seen when fitting are missing")
        covariates = self._covariate_frame(frame, fitting=False)
        out = frame.copy()
        for group in self.groups_:
            values = frame[group.columns].astype("float64").reset_index(drop=True)
            nan = values.isna()
            rows = ~nan.all(axis=1).to_numpy()
            fitted_site = sites.isin(group.sites).to_numpy()
            if (rows & ~fitted_site).any():
                others = sorted(set(sites[rows & ~fitted_site]))
                warnings.warn(f"{len(group.columns)} feature column(s) (e.g. {group.columns[0]!r}) have values in "
                              f"site(s) {others}, where the harmoniser's training rows had none: left "
                              "unharmonised there", UserWarning, stacklevel=2)
            rows &= fitted_site
            if not rows.any():
                continue
            index = pd.RangeIndex(int(rows.sum()))
            data = values.loc[rows].fillna(group.fill).set_axis(index)
            params: dict[str, Any] = {"batch": sites[rows].set_axis(index)}
            if covariates is not None:
                params["continuous_covariates"] = covariates.loc[rows].set_axis(index)
            group.model.set_params(**params)
            adjusted = group.model.transform(data).to_numpy(dtype="float64", copy=True)
            adjusted[nan.loc[rows].to_numpy()] = np.nan
            block = values.to_numpy(dtype="float64", copy=True)
            block[rows] = adjusted
            for j, column in enumerate(group.columns):
                out[column] = block[:, j]
        for column in self.feature_columns_:
            out[column] = out[column].astype("float64")
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray[Any, Any]:
        check_is_fitted(self, "feature_columns_")
        return np.asarray(self.feature_columns_, dtype=object)
