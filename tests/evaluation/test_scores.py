"""Censoring-aware scores: Uno's C, integrated Brier, time-dependent AUC, calibration, the paper's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from survival_model.evaluation.plots import risk_groups
from survival_model.evaluation.scores import (
    DAYS_PER_MONTH,
    Outcome,
    breslow_survival,
    calibration,
    median_days,
    regression_on_deaths,
    score,
)
from tests.evaluation.cohorts import risk_cohort


def test_a_true_risk_beats_no_information_which_beats_a_reversed_risk() -> None:
    x_train, train = risk_cohort(300, 1)
    x_test, test = risk_cohort(150, 2)
    good, null, bad = (score(x_train, train, r, test, tau=730) for r in (x_test, np.zeros(150), -x_test))
    assert good["harrell_c"] > 0.6 and good["uno_c"] > 0.6 and bad["uno_c"] < 0.4
    assert null["harrell_c"] == 0.5 and null["auc_12m"] == 0.5
    assert good["integrated_brier"] < null["integrated_brier"] < bad["integrated_brier"]
    assert good["auc_6m"] > 0.6 and good["auc_24m"] > 0.6
    assert 0 < good["patients_uncensored"] <= test.event.sum()
    assert good["mae_days_uncensored"] < bad["mae_days_uncensored"]


def test_breslow_curves_fall_with_time_and_risk_and_give_a_median() -> None:
    x_train, train = risk_cohort(300, 1)
    times = np.array([30.0, 180.0, 365.0, 2000.0])  # the last beyond follow-up: held at the last value
    curves = breslow_survival(x_train, train, np.array([-1.0, 0.0, 1.0]), times)
    assert curves.shape == (3, 4)
    assert (np.diff(curves, axis=1) <= 0).all() and (np.diff(curves, axis=0) <= 0).all()
    dense = np.unique(train.time)
    medians = median_days(breslow_survival(x_train, train, np.array([-1.0, 1.0]), dense), dense)
    assert medians[0] > medians[1]


def test_calibration_of_a_well_calibrated_model_is_close_to_kaplan_meier() -> None:
    x_train, train = risk_cohort(600, 1)
    x_test, test = risk_cohort(300, 2)
    t = 12 * DAYS_PER_MONTH
    predicted = breslow_survival(x_train, train, x_test, np.array([t]))[:, 0]
    table = calibration(test, predicted, t, groups=3)
    assert list(table["group"]) == [0, 1, 2] and table["patients"].sum() == 300
    assert (table["predicted"] - table["observed"]).abs().max() < 0.12
    assert table["predicted"].is_monotonic_decreasing  # group 0: the highest predicted survival


def test_calibration_groups_are_numbered_as_the_kaplan_meier_risk_groups() -> None:
    # group g of the calibration table holds the patients of Kaplan-Meier risk group g: 0 = the lowest risk
    x_train, train = risk_cohort(300, 1)
    x_test, test = risk_cohort(300, 2)
    t = 12 * DAYS_PER_MONTH
    predicted = breslow_survival(x_train, train, x_test, np.array([t]))[:, 0]
    table = calibration(test, predicted, t, groups=3)
    _, groups = risk_groups(x_test, x_test, groups=3)
    assert list(table["patients"]) == [int((groups == g).sum()) for g in range(3)]
    assert list(table["deaths"]) == [int(test.event[groups == g].sum()) for g in range(3)]
    assert table["deaths"].iloc[0] < table["deaths"].iloc[2]  # the lowest-risk group has the fewest deaths


def test_the_papers_metrics_use_uncensored_patients_only() -> None:
    test = Outcome.of([100.0, 200.0, 300.0, 50.0], [True, True, True, False])
    metrics = regression_on_deaths(np.array([100.0, 200.0, 300.0, 9999.0]), test)
    assert metrics["mae_days_uncensored"] == 0.0 and metrics["r2_uncensored"] == 1.0
    assert metrics["patients_uncensored"] == 3.0
    with pytest.raises(ValueError, match="one length"):
        Outcome.of([1.0, 2.0], [True])


def test_a_test_patient_followed_beyond_the_training_patients_does_not_void_uno_c_or_the_auc() -> None:
    from survival_model.evaluation.scores import uno_c, within_follow_up

    x_train, train = risk_cohort(200, 3)
    x_test, test = risk_cohort(100, 4)
    last = float(train.time.max())
    longer = Outcome(test.time.copy(), test.event.copy())
    longer.time[int(np.argmax(x_test))] = last + 500  # one test patient outlives every training patient's follow-up
    longer.event[int(np.argmax(x_test))] = True
    cut = within_follow_up(train, longer)
    assert cut.time.max() == last and not cut.event[int(np.argmax(x_test))]
    assert within_follow_up(train, test) is test or test.time.max() > last
    value = uno_c(train, longer, x_test, tau=730)
    assert np.isfinite(value) and value == uno_c(train, cut, x_test, tau=730)
    assert np.isfinite(score(x_train, train, x_test, longer, tau=730)["auc_12m"])
