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
  features, its penalty chosen by 3-fold cross-validated C-index on the training rows only (folds
  stratified on the event, so each has deaths to score), the tabular pipeline (imputation, scaling)
  refitted inside every inner fold;
- ``rsf``: a random survival forest on clinical + volumetric + the 20 radiomics features most
  concordant with survival on the training rows.

The fitted ones share the networks' tabular pipeline (``survival_model.models.tabular``: imputation,
scaling, one-hot, optional ComBat), fitted on the training rows only, inside one scikit-learn pipeline,
on exactly the columns their names list: no clinical score (``TabularParams.scores``, the GPA by default
for the networks) is added to them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis

from survival_model.config import TabularParams
from survival_model.errors import ConfigError
from survival_model.evaluation.oof import centre_on
from survival_model.features import scores as clinical_scores
from survival_model.features.scores import ds_gpa as ds_gpa  # re-exported: the baselines by name
from survival_model.features.scores import gpa as gpa
from survival_model.fingerprint import content_order
from survival_model.models.tabular import build_tabular_pipeline, survival_target

log = logging.getLogger(__name__)
Indices = npt.NDArray[np.intp]

#: Inner cross-validation folds of a baseline's ``grid`` (inside its training rows).
INNER_FOLDS = 3

#: The baselines scored by hand (nothing fitted), by name.
SCORES: dict[str, Callable[[pd.DataFrame], tuple[npt.NDArray[np.float64], int]]] = dict(clinical_scores.SCORES)


@dataclass(frozen=True)
class Baseline:
    """A named baseline: its tabular inputs and estimator (None: a score by hand in ``SCORES``, nothing fitted)."""

    name: str
    description: str
    tabular: TabularParams | None
    estimator: Callable[[int], object] | None
    #: Settings chosen by 3-fold cross-validation inside the training rows (folds stratified on the event:
    #: :func:`inner_folds`; the tabular pipeline refitted in every inner fold), by the estimator's own score
    #: (Harrell's C). The first value of each list is the setting used, without a search, where the training
    #: rows hold fewer than 2 deaths (list the most regularised first).
    grid: dict[str, list[Any]] | None = None


def _coxnet(seed: int) -> object:
    return CoxnetSurvivalAnalysis(l1_ratio=0.5, fit_baseline_model=False)


def baselines(clinical: list[str]) -> dict[str, Baseline]:
    """The baselines for these clinical fields (see the module docstring). The fitted ones read the columns
    their names list and no clinical score (``scores=[]``: ``TabularParams``' default adds the GPA)."""
    return {
        "gpa": Baseline("gpa", "GPA (Sperduto 2008), risk = -GPA", None, None),
        "ds_gpa": Baseline("ds_gpa", "diagnosis-specific GPA (Sperduto 2012), risk = -DS-GPA", None, None),
        "cox_clinical": Baseline("cox_clinical", "Cox PH, clinical fields",
                                 TabularParams(clinical=clinical, volumetric=False, scores=[]),
                                 lambda seed: CoxPHSurvivalAnalysis(alpha=0.1)),
        "coxnet_clinical_volumetric": Baseline("coxnet_clinical_volumetric",
                                               "elastic-net Cox, clinical + volumetric",
                                               TabularParams(clinical=clinical, volumetric=True, scores=[]), _coxnet,
                                               {"alphas": [[a] for a in (0.3, 0.1, 0.03, 0.01)]}),
        "rsf": Baseline("rsf", "random survival forest, clinical + volumetric + 20 radiomics",
                        TabularParams(clinical=clinical, volumetric=True, radiomics_k=20, scores=[]),
                        lambda seed: RandomSurvivalForest(n_estimators=200, min_samples_leaf=5, max_features="sqrt",
                                                          n_jobs=2, random_state=seed)),
    }


@dataclass
class FittedBaseline:
    """A baseline ready to score rows: ``risk(frame)`` (higher = earlier death)."""

    baseline: Baseline
    pipeline: Pipeline | GridSearchCV | None

    def risk(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        if self.baseline.name in SCORES:
            return -SCORES[self.baseline.name](frame)[0]
        if self.pipeline is None:
            raise ConfigError(f"baseline {self.baseline.name!r} is neither a score by hand nor fitted")
        if self.baseline.name == "rsf":
            # the trees' hazards summed in one fixed order: with several jobs the threads add them in whatever
            # order they finish, and the risk's last bits then differ from run to run
            pipeline = self.pipeline.best_estimator_ if isinstance(self.pipeline, GridSearchCV) else self.pipeline
            pipeline[-1].set_params(n_jobs=1)
        risk = np.asarray(self.pipeline.predict(frame), dtype=float)
        if self.baseline.name == "rsf":  # the forest's risk is a sum of cumulative hazards, not a log-hazard:
            return np.asarray(np.log(np.maximum(risk, 1e-12)), dtype=float)  # same ranking; suits Breslow's PH
        return risk


def inner_folds(events: npt.ArrayLike, seed: int, folds: int = INNER_FOLDS) -> list[tuple[Indices, Indices]]:
    """The inner cross-validation folds of rows (in their content order, see :func:`fit_baseline`) with
    these event indicators: stratified on the event, so every fold has ``deaths // folds`` deaths or one
    more and a C-index to score; as many folds as deaths where there are fewer (a fold without a death has
    nothing to score). Fewer than 2 deaths is refused (no cross-validation possible)."""
    events = np.asarray(events).astype(int)
    deaths = int(events.sum())
    if deaths < 2:
        raise ConfigError(f"choosing a baseline's settings by cross-validation needs at least 2 deaths in the "
                          f"training rows (one per inner fold to score), got {deaths}")
    folds = min(folds, deaths)
    with warnings.catch_warnings():  # few *censored* patients: harmless, every fold still has deaths
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(events)), events))


def _check_search(baseline: Baseline, search: GridSearchCV) -> bool:
    """A candidate whose fit or score failed in an inner fold scores NaN there (ranked below every candidate
    scored in all folds, not credited C = 0.5): logged with the count. False when no candidate scored in every
    fold (nothing to choose from: the caller falls back to the grid's first setting)."""
    results = search.cv_results_
    splits = np.column_stack([results[f"split{k}_test_score"] for k in range(search.n_splits_)])
    failed = ~np.isfinite(splits)
    if failed.any(axis=1).all():
        log.warning("baseline %r: no setting of its grid could be fitted and scored in every inner fold (%d of %d "
                    "fits failed)", baseline.name, int(failed.sum()), failed.size)
        return False
    if failed.any():
        bad = [str(results["params"][i]) for i in np.flatnonzero(failed.any(axis=1))]
        log.warning("baseline %r: %d of %d inner-fold fits could not be fitted or scored (settings %s), left out "
                    "of the choice; chosen: %s", baseline.name, int(failed.sum()), failed.size, ", ".join(bad),
                    search.best_params_)
    return True


def _grid_default(baseline: Baseline, pipeline: Pipeline, why: str) -> Pipeline:
    """``pipeline`` set to the first value of each of ``baseline``'s grid lists (used without a search), logged."""
    default = {f"model__{k}": v[0] for k, v in (baseline.grid or {}).items()}
    log.warning("baseline %r: %s: fitted with its grid's first setting %s", baseline.name, why, default)
    return pipeline.set_params(**default)


def fit_baseline(baseline: Baseline, train: pd.DataFrame, seed: int = 0) -> FittedBaseline:
    """Fit ``baseline`` on the training rows only (the GPA and DS-GPA have nothing to fit)."""
    if baseline.tabular is None or baseline.estimator is None:
        return FittedBaseline(baseline, None)
    # rows in an order their data decide (not the keyed ids): the inner folds and a forest's bootstraps too
    train = train.iloc[content_order(train.to_dict("records"))].reset_index(drop=True)
    pipeline = Pipeline([("tabular", build_tabular_pipeline(baseline.tabular)),
                         ("model", baseline.estimator(seed))])
    model: Pipeline | GridSearchCV = pipeline
    if baseline.grid and int(train["event"].sum()) < 2:
        _grid_default(baseline, pipeline, f"{int(train['event'].sum())} death(s) in its training rows, too few "
                                          "to choose its settings by cross-validation")
    elif baseline.grid:  # the whole pipeline (scaling, encoding) refitted inside every inner fold
        model = GridSearchCV(pipeline, {f"model__{k}": v for k, v in baseline.grid.items()},
                             cv=inner_folds(train["event"], seed), error_score=np.nan)
    y = survival_target(train)
    # the radiomics ranking inside the tabular pipeline needs the outcome too (routed as its y)
    model.fit(train, y)
    if isinstance(model, GridSearchCV) and not _check_search(baseline, model):
        model = _grid_default(baseline, pipeline, "nothing to choose from").fit(train, y)
    return FittedBaseline(baseline, model)


def pooling_scale(baseline: Baseline, risk_train: npt.ArrayLike, risk: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """A fold model's ``risk`` on the scale shared by every fold, for pooling out-of-fold risks: a fitted
    model's risk (a Cox-type log-hazard, defined up to a constant) centred on its training rows
    (:func:`~survival_model.evaluation.oof.centre_on`); a score by hand (absolute scale) as it is."""
    if baseline.estimator is None or baseline.tabular is None:
        return np.asarray(risk, dtype=float)
    return centre_on(np.asarray(risk_train, dtype=float), np.asarray(risk, dtype=float))


def cross_validated_risk(baseline: Baseline, frame: pd.DataFrame, folds: int = 5, repeats: int = 1,
                         seed: int = 0) -> npt.NDArray[np.float64]:
    """Out-of-fold risk of ``baseline`` for every row of ``frame`` (in its order; each row scored by a model
    fitted without it, centred on that model's training rows: :func:`pooling_scale`), averaged over
    ``repeats`` shuffled K-fold partitions, stratified on the event: for cohorts too small for a locked test
    set. The rows are split in their content order (:func:`~survival_model.fingerprint.content_order`), so
    the partition depends on the data and the seed, not on the row order or the keyed case ids.

    (The evaluation stage pools its baselines over the pipeline's own named folds, in
    ``survival_model.evaluation.stage.model_risks``, by the same rule.)"""
    order = np.asarray(content_order(frame.to_dict("records")), dtype=np.intp)
    ordered = frame.iloc[order].reset_index(drop=True)
    total = np.zeros(len(ordered))
    events = ordered["event"].astype(int).to_numpy()
    both = events.min() != events.max()  # stratified by event where there are deaths and censored patients
    for r in range(repeats):
        splitter = (StratifiedKFold if both else KFold)(folds, shuffle=True, random_state=seed + r)
        for train_idx, test_idx in splitter.split(ordered, events):
            train, test = ordered.iloc[train_idx], ordered.iloc[test_idx]
            fitted = fit_baseline(baseline, train, seed + r)
            total[test_idx] += pooling_scale(baseline, fitted.risk(train), fitted.risk(test))
    out = np.empty(len(ordered))
    out[order] = total / repeats  # back in the input's row order
    return out
