"""The out-of-fold comparison: one scale for the pooled folds, cross-fitted calibration, paired differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import EvaluationParams, SplitParams
from survival_model.evaluation.oof import (
    OutOfFold,
    centre_on,
    compare_out_of_fold,
    cross_fitted_survival,
    groups_for,
    horizons_inside,
)
from survival_model.evaluation.report import ReportData, figures
from survival_model.evaluation.scores import DAYS_PER_MONTH, Outcome, breslow_hazard, survival_from
from survival_model.evaluation.scores import TestCurves as Curves
from survival_model.evaluation.stage import NetworkRun, run_comparison
from survival_model.metrics import harrell_c
from survival_model.training.splits import Splits, make_splits
from tests.evaluation.cohorts import clinical_cohort, risk_cohort

FOLDS = 5


def pooled(n: int, seed: int) -> tuple[OutOfFold, np.ndarray]:
    """Out-of-fold risks of a noisy model, each fold's risks centred on that fold's (simulated) training patients."""
    truth, outcome = risk_cohort(n, seed)
    rng = np.random.default_rng(seed + 100)
    fold = np.arange(n) % FOLDS
    noisy = truth + rng.normal(0, 0.7, n)
    risk = np.empty(n)
    for k in range(FOLDS):
        inside = fold == k
        risk[inside] = centre_on(noisy[~inside], noisy[inside])
    gpa_like = np.round(truth * 2) / 2 + rng.normal(0, 1.0, n)
    oof = OutOfFold(tuple(f"p{i}" for i in range(n)), outcome, fold.astype(np.int64),
                    {"oracle": truth, "model": risk, "tabular": noisy + rng.normal(0, 0.8, n), "gpa": gpa_like})
    return oof, truth


def network(splits: Splits, oracle: pd.Series, offsets: dict[int, float]) -> NetworkRun:
    """A cox "network" whose folds were centred on their training patients, then fold ``k``'s training and
    validation risks shifted by ``offsets[k]`` (a fold the training left uncentred)."""
    risk = oracle + np.random.default_rng(0).normal(0, 0.5, len(oracle))
    folds = []
    for k, fold in enumerate(splits.folds):
        train, validation = risk.loc[list(fold.train)], risk.loc[list(fold.validation)]
        shift = offsets.get(k, 0.0) - float(train.mean())
        folds.append((train + shift, validation + shift))
    dev = pd.concat([v for _, v in folds]).loc[list(splits.development)]  # what the training's out_of_fold() gives
    return NetworkRun("net", dev, risk.loc[list(splits.test)], None, tuple(folds))


def test_a_constant_added_to_one_network_fold_changes_no_risk_calibration_brier_or_group(tmp_path: Path) -> None:
    table, oracle = clinical_cohort(200, 11)
    splits = make_splits(table.assign(source_digest=table["case_id"]), SplitParams(folds=3))
    evaluation = EvaluationParams(score_resamples=20, bootstrap=100, baselines=["gpa"])
    results = []
    for name, offsets in (("centred", {}), ("shifted", {1: 4.0})):
        net = network(splits, oracle, offsets)
        compared = run_comparison(table, splits, [net], ["age", "kps"], evaluation, None, tmp_path / name)
        drawn = figures(table, splits, compared.risks(), compared.per_site, "net",
                        ReportData(compared.oof_risks(), compared.oof_calibration(), None), tmp_path / name / "figs")
        results.append((net, compared, drawn))
    (centred_net, a, drawn_a), (shifted_net, b, drawn_b) = results
    assert not np.allclose(centred_net.dev, shifted_net.dev)  # the input differs in one fold ...
    oof_a, oof_b = (r.oof_risks().query("model == 'net'").set_index("case_id")["risk"] for r in (a, b))
    np.testing.assert_allclose(oof_a.to_numpy(), oof_b.to_numpy())  # ... the pooled risks do not
    np.testing.assert_allclose(oof_a.loc[list(splits.development)].to_numpy(), centred_net.dev.to_numpy())  # idempotent
    pd.testing.assert_frame_equal(a.oof_calibration(), b.oof_calibration())
    columns = ["harrell_c", "uno_c", "integrated_brier", "integrated_brier_low", "integrated_brier_high"]
    np.testing.assert_allclose(a.oof.loc["net", columns].to_numpy(float), b.oof.loc["net", columns].to_numpy(float))
    locked = ["integrated_brier", "calibration_12m_max_gap", "mae_days_uncensored"]  # curves from the pooled risks
    np.testing.assert_allclose(a.comparison.loc["net", locked].to_numpy(float),
                               b.comparison.loc["net", locked].to_numpy(float))
    for part in ("logrank", "logrank_test"):
        assert drawn_a[part]["net"]["counts"] == drawn_b[part]["net"]["counts"]
        np.testing.assert_allclose(drawn_a[part]["net"]["thresholds"], drawn_b[part]["net"]["thresholds"])
    assert drawn_a["calibration"] == drawn_b["calibration"]


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


def test_the_long_table_carries_the_outcome_so_each_folds_score_can_be_recomputed() -> None:
    oof, _ = pooled(100, 4)
    frame = oof.frame().query("model == 'model'")
    for k in range(FOLDS):
        part = frame[frame["fold"] == k]
        inside = oof.fold == k
        assert harrell_c(part["risk"].to_numpy(), part["time_days"].to_numpy(), part["event"].to_numpy()) == \
            pytest.approx(harrell_c(oof.risks["model"][inside], oof.outcome.time[inside], oof.outcome.event[inside]))
    assert frame["event"].dtype == bool and len(frame) == 100


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
