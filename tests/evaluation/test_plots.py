"""The report's figures: each writes a PNG; risk groups from training risks only; the log-rank test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from survival_model.evaluation.plots import (
    calibration_plot,
    gradcam_panel,
    importance_bar,
    km_by_risk_group,
    per_site_bars,
    predicted_vs_observed,
    risk_groups,
)
from survival_model.evaluation.scores import Outcome, calibration
from tests.evaluation.cohorts import risk_cohort

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG


def test_risk_groups_use_the_training_quantiles_only() -> None:
    train = np.arange(1.0, 10.0)  # tertiles at 11/3 and 19/3
    test = np.array([0.0, 3.0, 4.0, 6.0, 7.0, 100.0, np.nan])  # its own tertiles would differ
    thresholds, index = risk_groups(train, test)
    np.testing.assert_allclose(thresholds, np.quantile(train, [1 / 3, 2 / 3]))
    assert index.tolist() == [0, 0, 1, 1, 2, 2, -1]
    shifted, _ = risk_groups(train, test + 50)
    np.testing.assert_allclose(shifted, thresholds)  # the test risks never move the thresholds
    assert risk_groups(train, test + 50)[1][:6].tolist() == [2] * 6
    empty_thresholds, empty_index = risk_groups(np.array([]), np.array([1.0, 2.0]))
    assert np.isnan(empty_thresholds).all() and empty_index.tolist() == [-1, -1]


def test_km_log_rank_is_small_for_separated_groups_and_not_for_identical_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_risk = rng.standard_normal(90)
    risk = np.repeat([-2.0, 0.0, 2.0], 40)
    scale = np.repeat([2000.0, 400.0, 60.0], 40)
    time = rng.exponential(scale) + 1
    event = rng.random(120) < 0.8
    separated = km_by_risk_group(train_risk, risk, time, event, tmp_path / "km.png", "separated")
    assert is_png(tmp_path / "km.png")
    assert separated["counts"] == [40, 40, 40] and len(separated["thresholds"]) == 2
    assert separated["p_value"] < 1e-6 and separated["chi2"] > 20

    same_time = rng.exponential(400.0, 120) + 1
    identical = km_by_risk_group(train_risk, risk, same_time, event, tmp_path / "km_same.png", "identical")
    assert identical["p_value"] > 0.01 and is_png(tmp_path / "km_same.png")


def test_km_with_one_group_or_no_patients_does_not_crash(tmp_path: Path) -> None:
    one = km_by_risk_group(np.arange(9.0), np.full(5, 100.0), np.arange(1.0, 6.0), np.ones(5, bool),
                           tmp_path / "one.png", "one group")
    assert one["counts"] == [0, 0, 5] and np.isnan(one["p_value"]) and is_png(tmp_path / "one.png")
    empty = km_by_risk_group(np.array([]), np.array([]), np.array([]), np.array([], bool),
                             tmp_path / "empty.png", "empty")
    assert empty["counts"] == [0, 0, 0] and np.isnan(empty["chi2"]) and is_png(tmp_path / "empty.png")


def test_calibration_plot_from_the_scores_table(tmp_path: Path) -> None:
    _, test = risk_cohort(60, 3)
    table = calibration(test, np.random.default_rng(1).uniform(0.2, 0.9, 60), 365.25)
    assert is_png(calibration_plot(table, tmp_path / "cal.png", 12))
    with_ci = table.assign(observed_low=table["observed"] - 0.1, observed_high=table["observed"] + 0.1)
    assert is_png(calibration_plot(with_ci, tmp_path / "cal_ci.png", 12))
    empty = calibration(Outcome.of([], []), np.array([]), 365.25)
    assert is_png(calibration_plot(empty, tmp_path / "cal_empty.png", 12))
    assert is_png(calibration_plot(pd.DataFrame(), tmp_path / "cal_none.png", 12))


def test_predicted_vs_observed_drops_censored_and_missing_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    time = rng.uniform(30, 900, 40)
    predicted = time * rng.uniform(0.7, 1.3, 40)
    predicted[:5] = np.nan
    assert is_png(predicted_vs_observed(predicted, time, rng.random(40) < 0.7, tmp_path / "pvo.png"))
    assert is_png(predicted_vs_observed(predicted, time, np.zeros(40, bool), tmp_path / "pvo_censored.png"))
    assert is_png(predicted_vs_observed(np.array([]), np.array([]), np.array([], bool), tmp_path / "pvo_empty.png"))


def test_importance_bar_and_per_site_bars(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    table = pd.DataFrame({"feature": [f"f{i}" for i in range(30)], "kind": ["tabular", "image"] * 15,
                          "mean": rng.normal(0.01, 0.02, 30), "sd": rng.uniform(0, 0.01, 30)})
    table.loc[3, "sd"] = np.nan
    assert is_png(importance_bar(table, tmp_path / "imp.png", top=10))
    assert is_png(importance_bar(table.iloc[:0], tmp_path / "imp_empty.png"))
    per_site = pd.DataFrame({"site_a": [0.71, 0.64], "site_b": [0.58, np.nan], "site_c": [0.49, 0.55]},
                            index=["fusion", "cox"])
    assert is_png(per_site_bars(per_site, tmp_path / "sites.png"))
    assert is_png(per_site_bars(pd.DataFrame(), tmp_path / "sites_empty.png"))
    assert is_png(per_site_bars(per_site * np.nan, tmp_path / "sites_nan.png"))


def test_gradcam_panel_limits_rows_and_handles_empty_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:32, :32]
    core = (yy - 16) ** 2 + (xx - 14) ** 2 < 20
    edema = ((yy - 16) ** 2 + (xx - 14) ** 2 < 60) & ~core
    panels = [{"case_id": f"case-{i}", "t1c": rng.random((32, 32)), "flair": rng.random((32, 32)),
               "cam": rng.random((32, 32)), "regions": {"tumour core": core, "edema": edema if i else edema & False},
               "share": 0.6, "area_share": 0.1} for i in range(10)]
    assert is_png(gradcam_panel(panels, tmp_path / "cam.png"))
    assert is_png(gradcam_panel([], tmp_path / "cam_empty.png"))
