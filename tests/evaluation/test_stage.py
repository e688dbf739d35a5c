"""The comparison of a network with the baselines and the oracle on the same splits."""

from __future__ import annotations

import numpy as np

from survival_model.config import EvaluationParams, SplitParams
from survival_model.evaluation.metrics import harrell_c
from survival_model.evaluation.stage import compare, model_risks
from survival_model.training.splits import make_splits
from tests.evaluation.cohorts import clinical_cohort


def test_every_model_is_scored_on_the_same_test_patients_beside_the_oracle() -> None:
    table, oracle = clinical_cohort(240, 5, sites="abc")
    splits = make_splits(table, SplitParams(folds=3))
    rng = np.random.default_rng(0)
    noisy = oracle + rng.normal(0, 0.5, len(oracle))  # a "network" that sees the truth through noise
    evaluation = EvaluationParams(score_resamples=20, baselines=["gpa", "cox_clinical", "rsf"])
    models, cv = model_risks(table, splits, noisy, noisy, ["age", "kps", "extracranial", "n_brain_mets", "sex"],
                             evaluation, oracle)
    assert list(models) == ["network", "gpa", "cox_clinical", "rsf", "oracle"]
    assert set(cv) == {"gpa", "cox_clinical", "rsf"} and all(0 < v["mean"] < 1 for v in cv.values())
    comparison, per_site = compare(table, splits, models, evaluation)
    assert list(comparison.index) == list(models)
    c = comparison["harrell_c"]
    test = table.set_index("case_id").loc[list(splits.test)]
    assert c["oracle"] == harrell_c(oracle.loc[list(splits.test)], test["time_days"], test["event"])
    assert c["oracle"] > 0.6 and c["network"] > 0.6
    assert comparison.loc["network", "delta_harrell_c"] > 0 and np.isnan(comparison.loc["gpa", "delta_harrell_c"])
    assert set(per_site.columns) == {"site_a", "site_b", "site_c"} and list(per_site.index) == list(models)
