"""Patient-level splits: a locked test set first, then cross-validation folds on the rest.

The test set is drawn once, stratified by event, survival-time band and site, and never seen by
training, early stopping or model selection; the folds divide the remaining (development) patients the
same way, or one fold per site (``leave_one_site_out``). Splits are made from pseudonymous case ids
only, are deterministic for ``SplitParams.seed``, and are persisted as JSON so every later stage (and a
reviewer) reads exactly the same sets.

Stratification uses scikit-learn (``train_test_split``, ``StratifiedKFold``). A stratum too small to be
divided (fewer than 2 patients for the test split, fewer than ``folds`` for K-fold) is merged into its
parent stratum, dropping the least important factor first (time band, then site, then event): small
sites keep their patients in every set instead of the split failing. What was merged is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from survival_model.config import SplitParams
from survival_model.errors import SurvivalModelError
from survival_model.fingerprint import stable_hash
from survival_model.imageio import write_json

#: Stratification factors, most important first; merging drops them from the end.
FACTORS = ("event", "site", "band")
REQUIRED_COLUMNS = ("case_id", "site", "time_days", "event")


class SplitError(SurvivalModelError):
    """The patients cannot be split as configured (too few, one site for leave-one-site-out, ...)."""


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: patients to fit on and patients to validate (early stopping) on."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """The locked test set and the folds of the development set, by case id."""

    test: tuple[str, ...]
    development: tuple[str, ...]
    folds: tuple[Fold, ...]
    params: SplitParams
    strata: dict[str, Any]
    fingerprint: str

    def check(self) -> None:
        """Raise :class:`SplitError` unless no patient is in two of train, validation and test."""
        test = set(self.test)
        if len(test) != len(self.test) or test & set(self.development):
            raise SplitError("a patient is both in the test set and in the development set")
        for fold in self.folds:
            train, validation = set(fold.train), set(fold.validation)
            if train & validation or (train | validation) & test:
                raise SplitError(f"{fold.name}: a patient is in two of train, validation and test")
            if train | validation != set(self.development):
                raise SplitError(f"{fold.name}: train + validation is not the development set")

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "params": self.params.model_dump(mode="json"),
            "strata": self.strata,
            "test": list(self.test),
            "development": list(self.development),
            "folds": [{"name": f.name, "train": list(f.train), "validation": list(f.validation)} for f in self.folds],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Splits:
        splits = cls(
            test=tuple(data["test"]),
            development=tuple(data["development"]),
            folds=tuple(Fold(f["name"], tuple(f["train"]), tuple(f["validation"])) for f in data["folds"]),
            params=SplitParams.model_validate(data["params"]),
            strata=dict(data["strata"]),
            fingerprint=str(data["fingerprint"]),
        )
        splits.check()
        return splits

    def save(self, path: Path) -> Path:
        return write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: Path) -> Splits:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SplitError(f"cannot read the splits file {path}: {exc}") from None
        return cls.from_json(data)

    def summary(self, patients: pd.DataFrame) -> pd.DataFrame:
        """Patients, events and event rate per set and site (``patients``: the frame the splits were made from)."""
        frame = patients.set_index("case_id")
        sets: list[tuple[str, Sequence[str]]] = [("test", self.test), ("development", self.development)]
        sets += [(f"{f.name}/validation", f.validation) for f in self.folds]
        rows = []
        for name, ids in sets:
            part = frame.loc[list(ids)]
            for site, group in [("all", part), *part.groupby("site", sort=True)]:
                rows.append({"set": name, "site": site, "patients": len(group), "events": int(group["event"].sum()),
                             "event_rate": float(group["event"].mean()) if len(group) else float("nan")})
        return pd.DataFrame(rows)


def time_bands(time_days: pd.Series, bands: int) -> pd.Series:
    """Survival-time band (0 .. bands-1) from quantiles of the observed times of all patients."""
    if bands <= 1:
        return pd.Series(0, index=time_days.index)
    edges = np.quantile(time_days.to_numpy(dtype=float), np.linspace(0, 1, bands + 1)[1:-1])
    return pd.Series(np.searchsorted(edges, time_days.to_numpy(dtype=float), side="right"), index=time_days.index)


def strata_labels(factors: pd.DataFrame, min_count: int,
                  max_classes: int | None = None) -> tuple[pd.Series, dict[str, int]]:
    """One stratum label per row from ``factors`` (columns most important first).

    A stratum with fewer than ``min_count`` rows joins the largest sibling stratum (same factors but
    the last), or its parent stratum (the last factor dropped) when it has no large enough sibling,
    repeatedly; with ``max_classes``, the minimum size is raised until there are at most that many
    strata. Returns the labels and how many rows ended in strata of each depth (factors kept).
    """
    columns = list(factors.columns)
    parts = factors.astype(str).apply(lambda c: c.name + "=" + c).to_numpy()

    def prefix(i: int, depth: int) -> str:
        return "|".join(parts[i, :depth]) or "all"

    def depth_of(label: str) -> int:
        return 0 if label == "all" else label.count("|") + 1

    needed = min_count
    while True:
        labels = pd.Series([prefix(i, len(columns)) for i in range(len(parts))], index=factors.index)
        for depth in range(len(columns), 0, -1):  # deepest first: a merge only creates shallower strata
            counts = labels.map(labels.value_counts())
            at_depth = labels.map(depth_of) == depth
            rare = at_depth & (counts < needed)
            parents = pd.Series([prefix(i, depth - 1) for i in range(len(parts))], index=factors.index)
            for parent in sorted(set(parents[rare])):
                big = labels[at_depth & ~rare & (parents == parent)]
                target = str(big.value_counts().index[0]) if len(big) else parent
                labels[rare & (parents == parent)] = target
        counts = labels.map(labels.value_counts())
        if (counts < needed).any() and labels.nunique() > 1:  # the root stratum is still too small
            labels[counts < needed] = str(labels.value_counts().index[0])
        if max_classes is None or labels.nunique() <= max_classes or needed >= len(labels):
            break
        needed += 1
    depths = pd.Series([depth_of(str(v)) for v in labels]).value_counts().sort_index()
    return labels, {str(d): int(n) for d, n in depths.items()}


def check_outcomes(patients: pd.DataFrame) -> None:
    """Raise :class:`SplitError` when a patient has no survival outcome (``time_days`` or ``event`` missing).

    Such patients come from a site whose clinical table declares no survival (``clinical.survival``
    null): they can be predicted, not trained on. The message counts them per site.
    """
    missing = patients["time_days"].isna() | patients["event"].isna()
    if not missing.any():
        return
    by_site = patients.loc[missing, "site"].astype(str).value_counts().sort_index()
    sites = ", ".join(f"{site}: {n}" for site, n in by_site.items())
    raise SplitError(
        f"{int(missing.sum())} patient(s) have no survival outcome (site(s) {sites}): they can be predicted, "
        "not trained on. Training needs time_days and event for every patient: declare clinical.survival "
        "for those sites (a site without it has no outcomes), or leave them out of the training data."
    )


def make_splits(patients: pd.DataFrame, params: SplitParams) -> Splits:
    """Locked test set, then folds, from a frame with ``case_id, site, time_days, event`` per patient."""
    missing = [c for c in REQUIRED_COLUMNS if c not in patients.columns]
    if missing:
        raise SplitError(f"the patients table lacks column(s) {', '.join(missing)}")
    frame = patients.loc[:, list(REQUIRED_COLUMNS)].copy()
    if frame["case_id"].duplicated().any():
        raise SplitError("case ids must be unique: one row per patient")
    check_outcomes(frame)
    frame = frame.sort_values("case_id").reset_index(drop=True)  # order of the input never matters
    n = len(frame)
    n_test = round(params.test_fraction * n)
    if n_test < 2 or n - n_test < 2 * params.folds:
        raise SplitError(f"{n} patients are too few for a {params.test_fraction:.0%} test set and "
                         f"{params.folds} folds (need at least {2 * params.folds} development patients)")
    frame["band"] = time_bands(frame["time_days"], params.time_bands)
    frame["event"] = frame["event"].astype(int)
    factors = frame.loc[:, list(FACTORS)]

    test_labels, test_depths = strata_labels(factors, 2, max_classes=min(n_test, n - n_test))
    dev_idx, test_idx = train_test_split(frame.index.to_numpy(), test_size=n_test, stratify=test_labels,
                                         random_state=params.seed)
    development = frame.loc[np.sort(dev_idx)]
    test_ids = tuple(sorted(frame.loc[test_idx, "case_id"]))
    dev_ids = tuple(development["case_id"])

    strata: dict[str, Any] = {"factors": list(FACTORS), "test_depths": test_depths}
    if params.scheme == "leave_one_site_out":
        folds = _site_folds(development)
    else:
        fold_labels, fold_depths = strata_labels(factors.loc[development.index], params.folds)
        strata["fold_depths"] = fold_depths
        splitter = StratifiedKFold(n_splits=params.folds, shuffle=True, random_state=params.seed)
        folds = tuple(
            Fold(f"fold-{k + 1}", tuple(sorted(development["case_id"].iloc[train])),
                 tuple(sorted(development["case_id"].iloc[validation])))
            for k, (train, validation) in enumerate(splitter.split(development, fold_labels))
        )
    fingerprint = stable_hash("splits", sorted(frame["case_id"]), frame["time_days"].tolist(),
                              frame["event"].tolist(), frame["site"].tolist(), params.model_dump(mode="json"))
    splits = Splits(test_ids, dev_ids, folds, params, strata, fingerprint)
    splits.check()
    return splits


def _site_folds(development: pd.DataFrame) -> tuple[Fold, ...]:
    sites = sorted(development["site"].unique())
    if len(sites) < 2:
        raise SplitError("leave_one_site_out needs patients from at least two sites")
    return tuple(
        Fold(f"site-{site}", tuple(sorted(development.loc[development["site"] != site, "case_id"])),
             tuple(sorted(development.loc[development["site"] == site, "case_id"])))
        for site in sites
    )
