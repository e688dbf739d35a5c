"""The comparison table and the paired difference to the GPA."""

from __future__ import annotations

import numpy as np

from survival_model.evaluation.compare import ModelRisks, comparison_table, paired_difference
from tests.evaluation.cohorts import risk_cohort


def test_a_better_model_has_a_positive_paired_difference_to_a_weaker_one() -> None:
    _, train = risk_cohort(200, 1)
    x_test, test = risk_cohort(120, 2)
    rng = np.random.default_rng(0)
    weak = x_test + rng.normal(0, 2.0, 120)
    diff = paired_difference(x_test, weak, train, test, tau=730, resamples=200, seed=1)
    assert diff["harrell_c"]["value"] > 0 and diff["harrell_c"]["low"] > 0
    same = paired_difference(x_test, x_test, train, test, tau=730, resamples=50)
    assert same["harrell_c"] == {"value": 0.0, "low": 0.0, "high": 0.0, "resamples": 50}


def test_the_table_has_every_model_and_metric_with_intervals_and_the_difference_to_gpa() -> None:
    x_train, train = risk_cohort(200, 1)
    x_test, test = risk_cohort(80, 2)
    rng = np.random.default_rng(0)
    models = {"gpa": ModelRisks(np.round(x_train), np.round(x_test + rng.normal(0, 1, 80))),
              "model": ModelRisks(x_train, x_test)}
    table = comparison_table(models, train, test, tau=730, resamples=30, seed=2)
    assert list(table.index) == ["gpa", "model"]
    for metric in ("harrell_c", "uno_c", "integrated_brier", "auc_12m", "mae_days_uncensored"):
        assert {metric, f"{metric}_low", f"{metric}_high"} <= set(table.columns)
    assert np.isnan(table.loc["gpa", "delta_harrell_c"]) and table.loc["model", "delta_harrell_c"] > 0
