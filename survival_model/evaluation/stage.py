"""The comparison of the trained network with clinical baselines and the oracle, on the same splits.

Every model is fitted on the development patients (the network: its folds; the baselines: all
development rows) and scored once on the locked test set with every score of
``survival_model.evaluation.scores`` and its bootstrap interval, plus the paired difference to the GPA.
The survival curves a score needs come from a Breslow baseline on the development patients' risks:
for the network its *out-of-fold* risks (each development patient scored by the fold model that did not
train on it), for a baseline its fitted risks. The cross-validated Harrell's C of each model (fitted on
each fold's training rows, scored on its validation rows) is reported as mean ± SD, and Harrell's C
per site on the test set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from survival_model.config import EvaluationParams
from survival_model.evaluation.baselines import baselines, fit_baseline
from survival_model.evaluation.compare import ModelRisks, comparison_table
from survival_model.evaluation.metrics import harrell_c
from survival_model.evaluation.scores import Outcome
from survival_model.training.splits import Splits


def _rows(table: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    return table.set_index("case_id", drop=False).loc[list(ids)].reset_index(drop=True)


def _outcome(frame: pd.DataFrame) -> Outcome:
    return Outcome.of(frame["time_days"].to_numpy(dtype=float), frame["event"].astype(int).to_numpy() == 1)


def model_risks(table: pd.DataFrame, splits: Splits, network_dev: pd.Series, network_test: pd.Series,
                clinical: list[str], evaluation: EvaluationParams, oracle: pd.Series | None,
                network_name: str = "network") -> tuple[dict[str, ModelRisks], dict[str, dict[str, float]]]:
    """Risks of every model on the development and test patients, and each model's cross-validated C."""
    dev, test = _rows(table, splits.development), _rows(table, splits.test)
    models = {network_name: ModelRisks(network_dev.reindex(dev["case_id"]).to_numpy(dtype=float),
                                       network_test.reindex(test["case_id"]).to_numpy(dtype=float))}
    cv: dict[str, dict[str, float]] = {}
    for name in evaluation.baselines:
        baseline = baselines(clinical)[name]
        fitted = fit_baseline(baseline, dev, evaluation.seed)
        models[name] = ModelRisks(fitted.risk(dev), fitted.risk(test))
        values = []
        for fold in splits.folds:
            train, validation = _rows(table, fold.train), _rows(table, fold.validation)
            risk = fit_baseline(baseline, train, evaluation.seed).risk(validation)
            values.append(harrell_c(risk, validation["time_days"], validation["event"]))
        cv[name] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1))}
    if oracle is not None and dev["case_id"].isin(oracle.index).all() and test["case_id"].isin(oracle.index).all():
        models["oracle"] = ModelRisks(oracle.reindex(dev["case_id"]).to_numpy(dtype=float),
                                      oracle.reindex(test["case_id"]).to_numpy(dtype=float))
    return models, cv


def compare(table: pd.DataFrame, splits: Splits, models: dict[str, ModelRisks],
            evaluation: EvaluationParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table (model x score with intervals and the difference to the GPA) and Harrell's C
    per site on the test set (model x site)."""
    dev, test = _rows(table, splits.development), _rows(table, splits.test)
    reference = "gpa" if "gpa" in models else None
    comparison = comparison_table(models, _outcome(dev), _outcome(test), tau=evaluation.tau_days, reference=reference,
                                  resamples=evaluation.score_resamples, confidence=evaluation.confidence,
                                  seed=evaluation.seed)
    per_site = pd.DataFrame({
        name: {str(site): harrell_c(risks.test[group.index], group["time_days"], group["event"])
               for site, group in test.groupby("site", sort=True)}
        for name, risks in models.items()}).T
    return comparison, per_site
