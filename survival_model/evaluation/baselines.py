"""Clinical baselines on the same splits as the networks: GPA, DS-GPA, Cox, penalised Cox, random survival forest.

- ``gpa``: the Graded Prognostic Assessment (Sperduto et al. 2008): age (< 50: 1, 50-60: 0.5, > 60: 0),
  KPS (90-100: 1, 70-80: 0.5, < 70: 0), extracranial metastases (none: 1, present: 0), number of brain
  metastases (1: 1, 2-3: 0.5, > 3: 0); 0-4, higher = better, so the risk is ``-GPA``. Nothing is fitted.
  A missing component counts 0.5 (the middle) and the number of patients affected is reported.
- ``ds_gpa``: the diagnosis-specific GPA (Sperduto et al. 2012), a 0-4 scale per ``primary``: lung as the
  GPA; melanoma and renal by KPS and number of brain metastases; breast by KPS, subtype (HR/HER2) and
  age; gastrointestinal by KPS alone; other or unknown primaries fall back to the GPA. Risk ``-DS-GPA``,
  nothing fitted; a missing component counts the middle of its range (see ``ds_gpa``).
- ``cox_clinical``: Cox proportional hazards on the clinical fields (``CoxPHSurvivalAnalysis`` with a
  small ridge penalty for stability with one-hot categories);
- ``coxnet_clinical_volumetric``: elastic-net Cox (``CoxnetSurvivalAnalysis``) on clinical + volumetric
  features, its penalty chosen by 3-fold cross-validated C-index on the training rows only;
- ``rsf``: a random survival forest on clinical + volumetric + the 20 radiomics features most
  concordant with survival on the training rows.

The fitted ones share the networks' tabular pipeline (``survival_model.models.tabular``: imputation,
scaling, one-hot, optional ComBat), fitted on the training rows only, inside one scikit-learn pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis

from survival_model.config import TabularParams
from survival_model.errors import ConfigError
from survival_model.models.tabular import build_tabular_pipeline, survival_target

GPA_FIELDS = ("age", "kps", "extracranial", "n_brain_mets")
DIAGNOSES = ("lung", "breast", "melanoma", "gi", "renal")  # the DS-GPA's own scales; others use the GPA

Item = tuple[npt.ArrayLike, "pd.Series[bool]", float]  # points, unknown, the item's maximum (its minimum is 0)


def _number(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as float with NaN (nullable Int64/Float64 included); all NaN where the column is absent."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    values = pd.to_numeric(frame[column], errors="coerce")
    return pd.Series(values.to_numpy(dtype=float, na_value=np.nan), index=frame.index)


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as nullable boolean; all missing where the column is absent."""
    if column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="boolean")
    return frame[column].astype("boolean")


def _total(items: list[Item]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The sum of the items' points, an unknown item counting the middle of its range, and which rows had one."""
    score, unknown = np.zeros(len(items[0][1])), np.zeros(len(items[0][1]), dtype=bool)
    for points, missing, top in items:
        flags = missing.to_numpy(dtype=bool)
        score += np.where(flags, top / 2, np.asarray(points, dtype=float))
        unknown |= flags
    return score, unknown


def _gpa_items(frame: pd.DataFrame) -> list[Item]:
    age, kps, mets = _number(frame, "age"), _number(frame, "kps"), _number(frame, "n_brain_mets")
    ecm = _flag(frame, "extracranial")
    return [(np.select([age < 50, age <= 60], [1.0, 0.5], 0.0), age.isna(), 1.0),
            (np.select([kps >= 90, kps >= 70], [1.0, 0.5], 0.0), kps.isna(), 1.0),
            (np.where(ecm.fillna(False).to_numpy(dtype=bool), 0.0, 1.0), ecm.isna(), 1.0),
            (np.select([mets == 1, mets <= 3], [1.0, 0.5], 0.0), mets.isna(), 1.0)]


def gpa(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], int]:
    """The Sperduto 2008 GPA per row (0-4) and how many rows had a missing component (counted 0.5)."""
    missing = [c for c in GPA_FIELDS if c not in frame.columns]
    if missing:
        raise ConfigError(f"the GPA needs column(s) {missing}")
    score, unknown = _total(_gpa_items(frame))
    return score, int(unknown.sum())


def ds_gpa(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], int]:
    """The diagnosis-specific GPA per row (0-4, higher = better) and how many rows had a missing component.

    Sperduto PW, Kased N, Roberge D, et al. Summary report on the graded prognostic assessment: an accurate
    and facile diagnosis-specific tool to estimate survival for patients with brain metastases.
    J Clin Oncol 2012;30(4):419-425, Table 2 (the DS-GPA worksheet), by ``primary``:

    - lung: the 2008 GPA (age > 60: 0, 50-60: 0.5, < 50: 1; KPS < 70: 0, 70-80: 0.5, 90-100: 1;
      extracranial metastases present: 0, absent: 1; brain metastases > 3: 0, 2-3: 0.5, 1: 1);
    - melanoma, renal: KPS < 70: 0, 70-80: 1, 90-100: 2; brain metastases > 3: 0, 2-3: 1, 1: 2;
    - breast: KPS <= 50: 0, 60: 0.5, 70-80: 1, 90-100: 1.5 (bands <= 50, < 70, < 90, >= 90); subtype
      basal / triple negative (HR- HER2-): 0, luminal A (HR+ HER2-): 1, HER2 (HR- HER2+): 1.5,
      luminal B (HR+ HER2+): 2, from ``hr_positive`` and ``her2_positive``; age >= 60: 0, < 60: 0.5;
    - gi: KPS < 70: 0, 70: 1, 80: 2, 90: 3, 100: 4 (bands of 10);
    - other or missing primary: the 2008 GPA.

    A missing component (a missing value, or a column absent from ``frame``) counts the middle of that
    item's range, e.g. 0.5 of a 0-1 item, 1 of the 0-2 subtype item; the count is of the rows where a
    component their diagnosis uses was missing. Raises ``ConfigError`` without a ``primary`` column.
    """
    if "primary" not in frame.columns:
        raise ConfigError("the DS-GPA needs column 'primary'")
    age, kps, mets = _number(frame, "age"), _number(frame, "kps"), _number(frame, "n_brain_mets")
    hr, her2 = _flag(frame, "hr_positive"), _flag(frame, "her2_positive")
    hr_pos, her2_pos = hr.fillna(False).to_numpy(dtype=bool), her2.fillna(False).to_numpy(dtype=bool)
    melanoma_renal: list[Item] = [(np.select([kps >= 90, kps >= 70], [2.0, 1.0], 0.0), kps.isna(), 2.0),
                                  (np.select([mets == 1, mets <= 3], [2.0, 1.0], 0.0), mets.isna(), 2.0)]
    scales: dict[str, list[Item]] = {
        "lung": _gpa_items(frame),
        "breast": [(np.select([kps >= 90, kps >= 70, kps > 50], [1.5, 1.0, 0.5], 0.0), kps.isna(), 1.5),
                   (np.select([hr_pos & her2_pos, her2_pos, hr_pos], [2.0, 1.5, 1.0], 0.0), hr.isna() | her2.isna(),
                    2.0),
                   (np.where(age < 60, 0.5, 0.0), age.isna(), 0.5)],
        "melanoma": melanoma_renal,
        "gi": [(np.select([kps >= 100, kps >= 90, kps >= 80, kps >= 70], [4.0, 3.0, 2.0, 1.0], 0.0), kps.isna(),
                4.0)],
        "renal": melanoma_renal,
    }
    primary = frame["primary"].astype("string").str.strip().str.lower()
    score, unknown = _total(_gpa_items(frame))  # other or missing primary
    for diagnosis in DIAGNOSES:
        rows = primary.eq(diagnosis).fillna(False).to_numpy(dtype=bool)
        points, missing = _total(scales[diagnosis])
        score, unknown = np.where(rows, points, score), np.where(rows, missing, unknown)
    return score, int(unknown.sum())


#: The baselines scored by hand (nothing fitted), by name.
SCORES: dict[str, Callable[[pd.DataFrame], tuple[npt.NDArray[np.float64], int]]] = {"gpa": gpa, "ds_gpa": ds_gpa}


@dataclass(frozen=True)
class Baseline:
    """A named baseline: its tabular inputs and estimator (None: a score by hand in ``SCORES``, nothing fitted)."""

    name: str
    description: str
    tabular: TabularParams | None
    estimator: Callable[[int], object] | None


def _coxnet(seed: int) -> object:
    search = GridSearchCV(CoxnetSurvivalAnalysis(l1_ratio=0.5, fit_baseline_model=False),
                          {"alphas": [[a] for a in (0.3, 0.1, 0.03, 0.01)]},
                          cv=KFold(3, shuffle=True, random_state=seed), error_score=0.5)
    return search


def baselines(clinical: list[str]) -> dict[str, Baseline]:
    """The baselines for these clinical fields (see the module docstring)."""
    return {
        "gpa": Baseline("gpa", "GPA (Sperduto 2008), risk = -GPA", None, None),
        "ds_gpa": Baseline("ds_gpa", "diagnosis-specific GPA (Sperduto 2012), risk = -DS-GPA", None, None),
        "cox_clinical": Baseline("cox_clinical", "Cox PH, clinical fields",
                                 TabularParams(clinical=clinical, volumetric=False),
                                 lambda seed: CoxPHSurvivalAnalysis(alpha=0.1)),
        "coxnet_clinical_volumetric": Baseline("coxnet_clinical_volumetric",
                                               "elastic-net Cox, clinical + volumetric",
                                               TabularParams(clinical=clinical, volumetric=True), _coxnet),
        "rsf": Baseline("rsf", "random survival forest, clinical + volumetric + 20 radiomics",
                        TabularParams(clinical=clinical, volumetric=True, radiomics_k=20),
                        lambda seed: RandomSurvivalForest(n_estimators=200, min_samples_leaf=5, max_features="sqrt",
                                                          n_jobs=2, random_state=seed)),
    }


@dataclass
class FittedBaseline:
    """A baseline ready to score rows: ``risk(frame)`` (higher = earlier death)."""

    baseline: Baseline
    pipeline: Pipeline | None

    def risk(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        if self.baseline.name in SCORES:
            return -SCORES[self.baseline.name](frame)[0]
        if self.pipeline is None:
            raise ConfigError(f"baseline {self.baseline.name!r} is neither a score by hand nor fitted")
        risk = np.asarray(self.pipeline.predict(frame), dtype=float)
        if self.baseline.name == "rsf":  # the forest's risk is a sum of cumulative hazards, not a log-hazard:
            return np.asarray(np.log(np.maximum(risk, 1e-12)), dtype=float)  # same ranking; suits Breslow's PH
        return risk


def fit_baseline(baseline: Baseline, train: pd.DataFrame, seed: int = 0) -> FittedBaseline:
    """Fit ``baseline`` on the training rows only (the GPA and DS-GPA have nothing to fit)."""
    if baseline.tabular is None or baseline.estimator is None:
        return FittedBaseline(baseline, None)
    pipeline = Pipeline([("tabular", build_tabular_pipeline(baseline.tabular)),
                         ("model", baseline.estimator(seed))])
    y = survival_target(train)
    # the radiomics ranking inside the tabular pipeline needs the outcome too (routed as its y)
    pipeline.fit(train, y)
    return FittedBaseline(baseline, pipeline)


def cross_validated_risk(baseline: Baseline, frame: pd.DataFrame, folds: int = 5, repeats: int = 1,
                         seed: int = 0) -> npt.NDArray[np.float64]:
    """Out-of-fold risk of ``baseline`` for every row (each row scored by a model fitted without it),
    averaged over ``repeats`` shuffled K-fold partitions: for cohorts too small for a locked test set."""
    from sklearn.model_selection import StratifiedKFold

    total = np.zeros(len(frame))
    events = frame["event"].astype(int).to_numpy()
    both = events.min() != events.max()  # stratified by event where there are deaths and censored patients
    for r in range(repeats):
        splitter = (StratifiedKFold if both else KFold)(folds, shuffle=True, random_state=seed + r)
        for train_idx, test_idx in splitter.split(frame, events):
            fitted = fit_baseline(baseline, frame.iloc[train_idx], seed + r)
            total[test_idx] += fitted.risk(frame.iloc[test_idx])
    return total / repeats
