"""The tabular vector: a scikit-learn pipeline fitted on a fold's training rows only.

Input: rows of the feature table (``site, case_id, <clinical fields>, time_days, event, vol_*, int_*,
rad_*``). Steps, each fitted on the training rows and then applied unchanged to validation and test rows:

1. ``harmonise`` (optional): ComBat per site on the imaging features
   (:class:`survival_model.features.harmonise.SiteHarmoniser`; never the outcome as a covariate);
2. ``columns``: the configured clinical fields and feature families; booleans become 0/1 (missing
   stays missing), text becomes categories; outcome and identifier columns are never passed on; the
   configured clinical scores are added (``score_gpa``: the GPA from age, KPS, extracranial disease and
   the number of metastases, nothing fitted) and skewed columns (``log_columns``, e.g. volumes) become
   ``log1p`` of their value;
3. ``radiomics``: the ``radiomics_k`` ``rad_*`` columns with the strongest univariate concordance with
   survival on the training rows (Harrell's C from scikit-survival, ``|C - 0.5|``), the others dropped;
4. ``encode``: numbers imputed with the training median (plus a missing-value indicator column where
   training rows had missing values; a column with no training value is kept as a constant, so every
   fold has the same width) and standardised; categories imputed as ``missing`` and one-hot
   encoded (a category unseen in training is all zeros).

Sequences a site does not acquire: their ``int_*`` / ``rad_*`` columns are NaN for the site's patients, so they
are imputed with the median of the training patients who have the sequence, and their missing-value
indicator is then the indicator of the sites without it (a site effect, not biology: ComBat (``harmonise``)
estimates site effects only among the sites that have the column). A column no training patient has
(a sequence no training site acquires) stays missing for every row the pipeline transforms later, even a
patient that has it (``FeatureColumns`` sets it to NaN): the model never learned a weight for it, so it is
a constant 0 for every patient.

``fit`` takes the survival outcome as ``y`` (scikit-survival's structured array, ``Surv.from_arrays``)
because the radiomics ranking needs it; no other step sees it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from survival_model.config import TabularParams
from survival_model.features.harmonise import SiteHarmoniser, outcome_like
from survival_model.features.scores import SCORE_INPUTS, SCORE_REQUIRED, SCORES


class FeatureColumns(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Keep the configured clinical fields and feature families, with model-ready dtypes; add the configured
    clinical scores (``score_<name>``, computed per row from the clinical fields: nothing fitted) and take
    ``log1p`` of the columns matching ``log_columns`` (shell patterns; skewed volumes)."""

    def __init__(self, clinical: Sequence[str] = (), prefixes: Sequence[str] = ("vol_",), scores: Sequence[str] = (),
                 log_columns: Sequence[str] = ()) -> None:
        self.clinical = clinical
        self.prefixes = prefixes
        self.scores = scores
        self.log_columns = log_columns

    def fit(self, X: pd.DataFrame, y: Any = None) -> FeatureColumns:  # noqa: N803 - scikit-learn's name
        missing = [c for c in self.clinical if c not in X.columns]
        if missing:
            raise ValueError(f"clinical field(s) {missing} are not in the feature table")
        unknown = [s for s in self.scores if s not in SCORE_INPUTS]
        if unknown:
            raise ValueError(f"unknown clinical score(s) {unknown}; known: {sorted(SCORE_INPUTS)}")
        outputs = [*self.clinical, *(c for c in X.columns if str(c).startswith(tuple(self.prefixes)))]
        leaking = [c for c in outputs if outcome_like(str(c))]
        if leaking:
            raise ValueError(f"column(s) {leaking} look like survival outcomes and cannot be model inputs")
        absent = sorted({c for s in self.scores for c in SCORE_REQUIRED[s] if c not in X.columns})
        score_inputs = [c for s in self.scores for c in SCORE_INPUTS[s] if c in X.columns]
        if absent:
            raise ValueError(f"the clinical score(s) {list(self.scores)} need column(s) {absent}, absent from the "
                             "feature table")
        # columns without a single training value (a sequence no training patient has: NaN in every row) are
        # missing for every row they meet later too: a value there would enter at a weight never trained
        self.empty_ = [c for c in outputs if c in X.columns and X[c].isna().all()]
        self.columns_ = list(dict.fromkeys([*outputs, *score_inputs]))  # every feature-table column read
        self.logged_ = [c for c in outputs if any(fnmatch.fnmatchcase(str(c), p) for p in self.log_columns)]
        self.outputs_ = [*outputs, *(f"score_{s}" for s in self.scores)]
        self._outputs = outputs
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803 - scikit-learn's name
        check_is_fitted(self, "columns_")
        out: dict[str, Any] = {}
        for column in self._outputs:
            values = X[column]
            if pd.api.types.is_bool_dtype(values) or str(values.dtype) == "boolean":
                out[column] = values.astype("Float64").astype(float)
            elif pd.api.types.is_numeric_dtype(values):
                out[column] = values.astype(float)
            else:
                out[column] = values.astype(object).where(values.notna(), np.nan)
        for column in self.logged_:
            out[column] = np.log1p(np.clip(np.asarray(out[column], dtype=float), 0.0, None))
        for column in getattr(self, "empty_", ()):  # (a pipeline packaged before empty_ existed has none)
            values = pd.Series(out[column], index=X.index)
            out[column] = values.where(pd.Series(False, index=X.index))  # every value missing, its dtype kept
        for name in self.scores:
            out[f"score_{name}"] = SCORES[name](X)[0]
        return pd.DataFrame(out, index=X.index)

    def get_feature_names_out(self, input_features: Any = None) -> npt.NDArray[np.object_]:
        return np.asarray(self.outputs_, dtype=object)


class ConcordanceSelector(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Keep the ``k`` columns with ``prefix`` whose univariate Harrell's C on the training rows is
    furthest from 0.5 (either direction); other columns pass through."""

    def __init__(self, k: int = 0, prefix: str = "rad_") -> None:
        self.k = k
        self.prefix = prefix

    def fit(self, X: pd.DataFrame, y: Any = None) -> ConcordanceSelector:  # noqa: N803 - scikit-learn's name
        candidates = [c for c in X.columns if str(c).startswith(self.prefix)]
        self.scores_: dict[str, float] = {}
        if self.k > 0 and candidates:
            if y is None:
                raise ValueError("ranking features by concordance needs the survival outcome as y")
            event, time = np.asarray(y["event"], dtype=bool), np.asarray(y["time"], dtype=float)
            for column in candidates:
                values = X[column].to_numpy(dtype=float)
                seen = np.isfinite(values)
                if seen.sum() < 3 or not event[seen].any() or np.nanstd(values) == 0:
                    continue
                c_index = concordance_index_censored(event[seen], time[seen], values[seen])[0]
                self.scores_[column] = abs(float(c_index) - 0.5)
        ranked = sorted(self.scores_, key=lambda c: (-self.scores_[c], c))
        self.selected_ = ranked[: self.k]
        self.dropped_ = [c for c in candidates if c not in self.selected_]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803 - scikit-learn's name
        check_is_fitted(self, "selected_")
        return X.drop(columns=[c for c in self.dropped_ if c in X.columns])


def build_tabular_pipeline(params: TabularParams) -> Pipeline:
    """The unfitted pipeline (see the module docstring)."""
    prefixes = ["vol_"] * params.volumetric + ["int_"] * params.intensity + ["rad_"] * (params.radiomics_k > 0)
    numbers = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                            StandardScaler())
    categories = make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                               OneHotEncoder(handle_unknown="ignore", sparse_output=False))
    encode = ColumnTransformer(
        [("numbers", numbers, make_column_selector(dtype_include="number")),
         ("categories", categories, make_column_selector(dtype_include=object))],
        verbose_feature_names_out=True,
    )
    steps: list[tuple[str, Any]] = [
        ("harmonise", SiteHarmoniser() if params.harmonise else "passthrough"),
        ("columns", FeatureColumns(clinical=list(params.clinical), prefixes=prefixes, scores=list(params.scores),
                                   log_columns=list(params.log_columns))),
        ("radiomics", ConcordanceSelector(k=params.radiomics_k)),
        ("encode", encode),
    ]
    return Pipeline(steps)


def feature_names(pipeline: Pipeline) -> list[str]:
    """Names of the fitted pipeline's output columns (``numbers__age``, ``categories__sex_male``, ...)."""
    return [str(n) for n in pipeline.named_steps["encode"].get_feature_names_out()]


def survival_target(frame: pd.DataFrame) -> npt.NDArray[np.void]:
    """scikit-survival's structured outcome (``event``, ``time``) from ``event`` and ``time_days``."""
    target: npt.NDArray[np.void] = Surv.from_arrays(event=frame["event"].astype(int).to_numpy() == 1,
                                                    time=frame["time_days"].astype(float).to_numpy())
    return target


def fit_transform_fold(params: TabularParams, train: pd.DataFrame,
                       others: Sequence[pd.DataFrame] = ()) -> tuple[Pipeline, list[npt.NDArray[np.float32]]]:
    """Fit on ``train`` only; return the fitted pipeline and float32 matrices for train and ``others``."""
    pipeline = build_tabular_pipeline(params)
    pipeline.fit(train, survival_target(train))
    width = len(feature_names(pipeline))
    matrices = [np.asarray(pipeline.transform(frame), dtype=np.float32) if len(frame)
                else np.zeros((0, width), dtype=np.float32) for frame in (train, *others)]  # no rows: no transform
    return pipeline, matrices
