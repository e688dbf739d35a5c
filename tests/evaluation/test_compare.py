"""The comparison table of the locked test set: every score with its interval and the paired difference to the GPA,
all from one set of draws, with the one finite-draws rule of the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from survival_model.evaluation.compare import ModelRisks, comparison_table, model_curves
from survival_model.evaluation.paired import METRICS, MIN_FINITE, paired_scores
from survival_model.evaluation.scores import Outcome, evaluation_times, within_follow_up
from survival_model.metrics import counts_of, resample_indices
from tests.evaluation.cohorts import risk_cohort


def test_a_better_model_has_a_positive_paired_difference_to_a_weaker_one() -> None:
    x_train, train = risk_cohort(200, 1)
    x_test, test = risk_cohort(120, 2)
    weak = x_test + np.random.default_rng(0).normal(0, 2.0, 120)
    models = {"gpa": ModelRisks(x_train, weak), "model": ModelRisks(x_train, x_test),
              "same": ModelRisks(x_train, weak)}
    table = comparison_table(models, train, test, tau=730, resamples=200, seed=1)
    assert table.loc["model", "delta_harrell_c"] > 0 and table.loc["model", "delta_harrell_c_low"] > 0
    assert table.loc["model", "delta_integrated_brier_high"] < 0  # better calibrated too, on the same draws
    same = table.loc["same", ["delta_harrell_c", "delta_harrell_c_low", "delta_harrell_c_high"]].to_numpy(float)
    assert (same == 0).all() and table.loc["same", "delta_harrell_c_resamples"] == 200


def test_the_table_has_every_model_and_metric_with_intervals_and_the_difference_to_gpa() -> None:
    x_train, train = risk_cohort(200, 1)
    x_test, test = risk_cohort(80, 2)
    rng = np.random.default_rng(0)
    models = {"gpa": ModelRisks(np.round(x_train), np.round(x_test + rng.normal(0, 1, 80))),
              "model": ModelRisks(x_train, x_test)}
    table = comparison_table(models, train, test, tau=730, resamples=30, seed=2)
    assert list(table.index) == ["gpa", "model"]
    for metric in ("harrell_c", "uno_c", "integrated_brier", "auc_12m", "mae_days_uncensored",
                   *(f"delta_{m}" for m in METRICS)):
        assert {metric, f"{metric}_low", f"{metric}_high"} <= set(table.columns)
    assert np.isnan(table.loc["gpa", "delta_harrell_c"]) and table.loc["model", "delta_harrell_c"] > 0
    assert np.isnan(table.loc["gpa", "delta_harrell_c_resamples"])  # the reference's own row: not computed


def test_the_c_indices_brier_and_differences_are_the_paired_bootstraps_on_the_same_draws() -> None:
    # one bootstrap implementation: the table's numbers are paired.py's on the draws of resample_indices(seed)
    x_train, train = risk_cohort(200, 3)
    x_test, test = risk_cohort(70, 4)
    models = {"gpa": ModelRisks(x_train, x_test + np.random.default_rng(5).normal(0, 1, 70)),
              "model": ModelRisks(x_train, x_test)}
    table = comparison_table(models, train, test, tau=730, resamples=60, confidence=0.9, seed=7)
    curves = model_curves(models, train, test)
    counts = counts_of(resample_indices(70, 60, 7), 70)
    grid = evaluation_times(train, within_follow_up(train, test))
    scores = paired_scores(train, test, {n: m.test for n, m in models.items()}, tau=730, grid=grid, counts=counts,
                           survival={n: c.survival_grid for n, c in curves.items()})
    for metric in METRICS:
        own = scores.estimate("model", metric, 0.9)
        assert table.loc["model", [metric, f"{metric}_low", f"{metric}_high"]].tolist() == \
            [own.value, own.low, own.high]
        diff = scores.difference("model", "gpa", metric, 0.9)
        assert table.loc["model", [f"delta_{metric}", f"delta_{metric}_low", f"delta_{metric}_high"]].tolist() == \
            [diff.value, diff.low, diff.high]


def test_too_few_defined_resamples_give_no_interval_for_any_score() -> None:
    # 10 test patients, 1 death: most draws miss the death or every comparable pair. The old loop reported
    # intervals from any 10 finite draws (e.g. ΔC 0.714 [0.375, 1.0] from 131 of 200); now no score's interval
    # exists without MIN_FINITE of the draws defined, the AUC's (scored per draw) included.
    _, train = risk_cohort(200, 1)
    test = Outcome.of([50, 100, 150, 200, 250, 300, 350, 400, 450, 500], [False, False, True] + [False] * 7)
    rng = np.random.default_rng(0)
    models = {"gpa": ModelRisks(rng.normal(size=200), rng.normal(size=10)),
              "model": ModelRisks(rng.normal(size=200), rng.normal(size=10))}
    table = comparison_table(models, train, test, tau=730, resamples=200, seed=0)
    row = table.loc["model"]
    assert np.isfinite(row["delta_harrell_c"]) and np.isfinite(row["harrell_c"]) and np.isfinite(row["auc_6m"])
    assert 10 <= row["delta_harrell_c_resamples"] < MIN_FINITE * 200
    for column in ("delta_harrell_c", "delta_uno_c", "harrell_c", "uno_c", "auc_6m"):
        assert np.isnan(row[f"{column}_low"]) and np.isnan(row[f"{column}_high"]), column


def test_no_resample_gives_values_without_intervals() -> None:
    x_train, train = risk_cohort(150, 1)
    x_test, test = risk_cohort(50, 2)
    table = comparison_table({"gpa": ModelRisks(x_train, -x_test), "model": ModelRisks(x_train, x_test)}, train, test,
                             tau=730, resamples=0)
    assert table.loc["model", "harrell_c"] > 0.6 and np.isnan(table.loc["model", "harrell_c_low"])
    assert np.isnan(table.loc["model", "auc_12m_high"]) and table.loc["model", "delta_harrell_c_resamples"] == 0


def test_bootstrap_intervals_narrow_with_the_square_root_of_the_test_set() -> None:
    x_train, train = risk_cohort(300, 1)
    x_test, test = risk_cohort(240, 2)
    whole = comparison_table({"m": ModelRisks(x_train, x_test)}, train, test, tau=730, resamples=100, seed=1)
    quarter = comparison_table({"m": ModelRisks(x_train, x_test[:60])}, train, test.take(np.arange(60)), tau=730,
                               resamples=100, seed=1)
    for name in ("harrell_c", "uno_c", "integrated_brier", "auc_12m"):
        ratio = ((quarter.loc["m", f"{name}_high"] - quarter.loc["m", f"{name}_low"])
                 / (whole.loc["m", f"{name}_high"] - whole.loc["m", f"{name}_low"]))
        assert 1.4 < ratio < 2.9, (name, ratio)  # a quarter of the patients: about twice as wide


def test_risks_that_do_not_match_the_patients_are_refused() -> None:
    x_train, train = risk_cohort(50, 1)
    x_test, test = risk_cohort(20, 2)
    with pytest.raises(ValueError, match="do not match"):
        comparison_table({"m": ModelRisks(x_train, x_test[:10])}, train, test, tau=730, resamples=5)
