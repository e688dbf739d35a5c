"""Clinical baselines on the same splits as the networks: GPA, Cox, penalised Cox, random survival forest.

- ``gpa``: the Graded Prognostic Assessment (Sperduto et al. 2008): age (< 50: 1, 50-60: 0.5, > 60: 0),
  KPS (90-100: 1, 70-80: 0.5, < 70: 0), extracranial metastases (none: 1, present: 0), number of brain
  metastases (1: 1, 2-3: 0.5, > 3: 0); 0-4, higher = better, so the risk is ``-GPA``. Nothing is fitted.
  A missing component counts 0.5 (the middle) and the number of patients affected is reported.
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


def gpa(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], int]:
    """The Sperduto 2008 GPA per row (0-4) and how many rows had a missing component (counted 0.5)."""
    missing = [c for c in GPA_FIELDS if c not in frame.columns]
    if missing:
        raise ConfigError(f"the GPA needs column(s) {missing}")
    def number(column: str) -> pd.Series:  # nullable (Int64, Float64) columns become float with NaN
        values = pd.to_numeric(frame[column], errors="coerce")
        return pd.Series(values.to_numpy(dtype=float, na_value=np.nan), index=frame.index)

    age, kps, mets = number("age"), number("kps"), number("n_brain_mets")
    ecm = frame["extracranial"].astype("boolean")
    parts = pd.DataFrame({
        "age": np.select([age < 50, age <= 60], [1.0, 0.5], 0.0),
        "kps": np.select([kps >= 90, kps >= 70], [1.0, 0.5], 0.0),
        "ecm": np.where(ecm.fillna(False).to_numpy(dtype=bool), 0.0, 1.0),
        "mets": np.select([mets == 1, mets <= 3], [1.0, 0.5], 0.0),
    }, index=frame.index)
    unknown = pd.DataFrame({"age": age.isna(), "kps": kps.isna(), "ecm": ecm.isna(), "mets": mets.isna()})
    parts = parts.mask(unknown.to_numpy(), 0.5)
    return parts.sum(axis=1).to_numpy(dtype=float), int(unknown.any(axis=1).sum())


@dataclass(frozen=True)
class Baseline:
    """A named baseline: its tabular inputs and estimator (None: the GPA, nothing fitted)."""

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
        if self.pipeline is None:
            return -gpa(frame)[0]
        risk = np.asarray(self.pipeline.predict(frame), dtype=float)
        if self.baseline.name == "rsf":  # the forest's risk is a sum of cumulative hazards, not a log-hazard:
            return np.asarray(np.log(np.maximum(risk, 1e-12)), dtype=float)  # same ranking; suits Breslow's PH
        return risk


def fit_baseline(baseline: Baseline, train: pd.DataFrame, seed: int = 0) -> FittedBaseline:
    """Fit ``baseline`` on the training rows only (the GPA has nothing to fit)."""
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
