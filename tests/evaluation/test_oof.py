"""The out-of-fold comparison: one scale for the pooled folds, cross-fitted calibration, paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from survival_model.evaluation.metrics import harrell_c
from survival_model.evaluation.oof import (
    OutOfFold,
    centre_on,
    compare_out_of_fold,
    cross_fitted_survival,
    groups_for,
    horizons_inside,
)
from survival_model.evaluation.scores import DAYS_PER_MONTH, Outcome, breslow_hazard, survival_from
from survival_model.evaluation.scores import TestCurves as Curves
from tests.evaluation.cohorts import risk_cohort

FOLDS = 5


def pooled(n: int, seed: int, offsets: tuple[float, ...] = (0.0,) * FOLDS) -> tuple[OutOfFold, np.ndarray]:
    """Out-of-fold risks of a noisy model, each fold's risks shifted by its own constant before centring on
    that fold's (simulated) training patients."""
    truth, outcome = risk_cohort(n, seed)
    rng = np.random.default_rng(seed + 100)
    fold = np.arange(n) % FOLDS
    noisy = truth + rng.normal(0, 0.7, n)
    risk = np.empty(n)
    for k in range(FOLDS):
        inside = fold == k
        train_risk = noisy[~inside] + offsets[k]  # the fold model's risks on its training patients
        risk[inside] = centre_on(train_risk, noisy[inside] + offsets[k])
    gpa_like = np.round(truth * 2) / 2 + rng.normal(0, 1.0, n)
    oof = OutOfFold(tuple(f"p{i}" for i in range(n)), outcome, fold.astype(np.int64),
                    {"oracle": truth, "model": risk, "tabular": noisy + rng.normal(0, 0.8, n), "gpa": gpa_like})
    return oof, truth


def test_a_constant_added_to_one_fold_changes_no_risk_calibration_brier_or_group() -> None:
    base, _ = pooled(300, 1)
    shifted, _ = pooled(300, 1, offsets=(0.0, 5.0, 0.0, -3.0, 0.0))
    assert np.allclose(base.risks["model"], shifted.risks["model"])
    refs = {"oracle": "oracle", "tabular": "tabular", "gpa": "gpa"}
    a = compare_out_of_fold(base, refs, tau=730, resamples=50, seed=1)
    b = compare_out_of_fold(shifted, refs, tau=730, resamples=50, seed=1)
    assert np.allclose(a.table.loc["model"].to_numpy(dtype=float), b.table.loc["model"].to_numpy(dtype=float),
                       equal_nan=True)
    pd.testing.assert_frame_equal(a.calibration["model"], b.calibration["model"], rtol=1e-9)


def test_without_centring_per_fold_offsets_break_the_pooled_scores() -> None:
    # the defect the centring removes: per-fold constants, pooled as they are, lower the C-index of the pool
    oof, _ = pooled(300, 2)
    raw = oof.risks["model"] + np.array([0.0, 2.0, -2.0, 1.0, -1.0])[oof.fold]
    pooled_c = harrell_c(raw, oof.outcome.time, oof.outcome.event)
    centred_c = harrell_c(oof.risks["model"], oof.outcome.time, oof.outcome.event)
    assert centred_c > pooled_c + 0.05


def test_cross_fitted_curves_do_not_use_the_patients_own_fold() -> None:
    oof, _ = pooled(200, 3)
    times = np.array([90.0, 365.0])
    curves = cross_fitted_survival(oof.risks["model"], oof.outcome, oof.fold, times)
    changed = Outcome(oof.outcome.time.copy(), oof.outcome.event.copy())
    inside = oof.fold == 0
    changed.time[inside] = changed.time[inside] * 3  # fold 0's outcomes change ...
    again = cross_fitted_survival(oof.risks["model"], changed, oof.fold, times)
    assert np.allclose(curves[inside], again[inside])  # ... and its own curves do not
    assert not np.allclose(curves[~inside], again[~inside])  # the others' baselines used them
    assert (np.diff(curves, axis=1) <= 0).all() and ((curves >= 0) & (curves <= 1)).all()


def test_the_comparison_orders_models_and_gives_paired_intervals() -> None:
    oof, _ = pooled(400, 4)
    result = compare_out_of_fold(oof, {"oracle": "oracle", "tabular": "tabular", "gpa": "gpa"}, tau=730,
                                 resamples=400, seed=2)
    table = result.table
    assert table.loc["oracle", "harrell_c"] > table.loc["model", "harrell_c"] > table.loc["tabular", "harrell_c"]
    assert table.loc["oracle", "headroom"] == pytest.approx(1.0)
    assert 0 < table.loc["model", "headroom"] < 1
    # the model is worse than the oracle with a paired interval below zero, better than the noisier one above it
    assert table.loc["model", "vs_oracle_harrell_c_high"] < 0 < table.loc["model", "vs_tabular_harrell_c_low"]
    width = table.loc["model", "vs_oracle_harrell_c_high"] - table.loc["model", "vs_oracle_harrell_c_low"]
    single = table.loc["model", "harrell_c_high"] - table.loc["model", "harrell_c_low"]
    assert 0 < width < single  # pairing removes the patients' shared variance
    assert "vs_oracle_harrell_c" not in table.columns or np.isnan(table.loc["oracle"].get("vs_oracle_harrell_c",
                                                                                             np.nan))
    assert result.patients == 400 and set(result.references) == {"oracle", "tabular", "gpa"}


def test_calibration_groups_follow_the_deaths_and_horizons_stay_inside_follow_up() -> None:
    assert groups_for(10) == 2 and groups_for(45) == 3 and groups_for(1000) == 5
    outcome = Outcome.of([30.0, 60.0, 100.0, 400.0] * 5, [True] * 20)
    assert horizons_inside(outcome, [1, 6, 24]) == [1]  # 15 followed beyond 1 month, 5 beyond 6: too few


def test_an_ensembles_curve_is_the_mixture_of_its_members() -> None:
    x_train, train = risk_cohort(300, 5)
    times = np.array([100.0, 300.0])
    hazard = breslow_hazard(x_train, train, times)
    members = np.array([[-1.0, 1.0], [0.0, 0.0]])
    mixture = survival_from(hazard, members)
    single = survival_from(hazard, np.array([-1.0, 0.0]))
    expected = (np.exp(-hazard * np.exp(-1.0)) + np.exp(-hazard * np.exp(1.0))) / 2
    assert np.allclose(mixture[0], expected) and np.allclose(mixture[1], single[1])


def test_a_test_patient_followed_beyond_the_development_patients_leaves_the_brier_score_defined() -> None:
    x_train, train = risk_cohort(200, 6)
    x_test, test = risk_cohort(60, 7)
    longer = Outcome(np.append(test.time, train.time.max() * 3), np.append(test.event, False))
    curves = Curves.of(x_train, train, np.append(x_test, 0.0), longer)
    scores = curves.score(np.arange(len(longer.time)), tau=730)
    assert np.isfinite(scores["integrated_brier"]) and np.isfinite(scores["uno_c"])
    assert curves.grid.max() <= train.time.max() and DAYS_PER_MONTH > 0
