"""The evaluation report: figures, the HTML page, the summary and the leakage audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import EvaluationParams, SplitParams
from survival_model.evaluation.report import (
    ENSEMBLE_THRESHOLDS,
    UNDEFINED_INTERVAL,
    ReportData,
    comparison_display,
    figures,
    oof_warnings,
    result_warnings,
    selection_findings,
    split_integrity,
    summary_markdown,
    write_report,
)
from survival_model.evaluation.scores import Outcome
from survival_model.evaluation.stage import NetworkRun, load_comparison, run_comparison, table_markdown
from survival_model.training.splits import Fold, Splits, make_splits
from tests.evaluation.cohorts import clinical_cohort

CLINICAL = ["age", "kps", "extracranial", "n_brain_mets", "sex"]


def run(table: pd.DataFrame, splits: Splits, risk: pd.Series, folder: Path, name: str = "net", *,
        fold_summaries: tuple[dict, ...] | None = None, decisions: int | None = None,
        confidence: float = 0.95) -> Path:
    folds = tuple((risk.loc[list(f.train)], risk.loc[list(f.validation)]) for f in splits.folds)
    network = NetworkRun(name, risk.loc[list(splits.development)], risk.loc[list(splits.test)], None, folds)
    evaluation = EvaluationParams(score_resamples=20, bootstrap=200, baselines=["gpa", "cox_clinical"],
                                  confidence=confidence)
    if fold_summaries is None:  # every fold records where it chose its epoch
        fold_summaries = tuple({"fold": f.name, "selection": "stopping patients"} for f in splits.folds)
    compared = run_comparison(table, splits, [network], CLINICAL, evaluation, None, folder)
    importance = pd.DataFrame({"rank": [1, 2], "feature": ["kps", "age"], "kind": ["tabular", "tabular"],
                               "mean": [0.05, 0.0], "sd": [0.01, 0.01]})
    (folder / "explanation").mkdir()
    importance.to_csv(folder / "explanation" / "importance.csv", index=False)
    data = ReportData(compared.oof_risks(), compared.oof_calibration(), None)
    return write_report(folder / "report", table=table, splits=splits, comparison=compared.comparison,
                        per_site=compared.per_site, cv=compared.cv, risks=compared.risks(), oof=compared.oof,
                        data=data, table_md=(folder / "comparison" / "table.md").read_text(encoding="utf-8"),
                        network=name, baselines=evaluation.baselines, evaluation=evaluation, learning_curves=None,
                        explanation=folder / "explanation", known_effects=["kps", "vol_et_mm3"],
                        fold_summaries=fold_summaries, test_set_decisions=decisions)


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.Series, Splits]:
    table, oracle = clinical_cohort(200, 11)
    return table, oracle, make_splits(table.assign(source_digest=table["case_id"]), SplitParams(folds=3))


def test_the_report_is_one_self_contained_page_with_every_section(cohort: tuple, tmp_path: Path) -> None:
    table, oracle, splits = cohort
    noisy = oracle + np.random.default_rng(0).normal(0, 0.4, len(oracle))
    path = run(table, splits, noisy, tmp_path)
    page = path.read_text(encoding="utf-8")
    for section in ("Comparison out of fold", "Confirmation on the locked test set",
                    "Kaplan-Meier by predicted risk group", "Calibration", "Per site", "Permutation importance",
                    "Leakage audit", "What was fitted on which rows"):
        assert section in page
    assert page.count("data:image/png;base64,") >= 7 and "src=\"http" not in page  # nothing to fetch
    assert "groups numbered from 0 = the lowest predicted risk" in page  # the calibration captions
    assert f"for net, {ENSEMBLE_THRESHOLDS}" in page  # the test set's risk groups of the ensemble: the caveat
    assert "log-rank" in page and "no patient in both sets" in page and "no selection on scored patients" in page
    summary = (path.parent / "summary.md").read_text(encoding="utf-8")
    assert "| net |" in summary and "kps 1" in summary and "vol_et_mm3 (not an input)" in summary
    assert "out of fold on the development patients" in summary and "vs GPA" in summary
    for name in ("km_net.png", "km_gpa.png", "km_test_net.png", "calibration_dev_6m.png", "calibration_dev_12m.png",
                 "predicted_vs_observed.png", "per_site.png"):
        assert (path.parent / "figures" / name).stat().st_size > 1000
    audit = pd.read_json(path.parent / "audit.json", typ="series")
    # the development patients' groups: as many as their deaths allow (one per 15, 2 to 5)
    deaths = int(table.set_index("case_id").loc[list(splits.development), "event"].sum())
    assert len(audit["logrank"]["net"]["counts"]) == min(5, max(2, deaths // 15))


def test_an_outcome_derived_risk_is_flagged_as_implausible(cohort: tuple, tmp_path: Path) -> None:
    table, _, splits = cohort
    leaky = pd.Series(-table["time_days"].to_numpy(), index=table["case_id"])  # the answer itself
    path = run(table, splits, leaky, tmp_path, confidence=0.9)
    findings = pd.read_json(path.parent / "audit.json", typ="series")["findings"]
    assert any(f["level"] == "warning" and "net: harrell_c" in f["text"] and "leakage" in f["text"] for f in findings)
    summary = (path.parent / "summary.md").read_text(encoding="utf-8")
    assert "implausible" in summary
    # the configured confidence is the one printed, in the page and in both Markdown tables
    page = path.read_text(encoding="utf-8")
    assert page.count("90% bootstrap intervals") == 2 and "95%" not in page
    assert summary.count("90% bootstrap intervals") == 2 and "95%" not in summary


def test_a_model_that_does_not_beat_the_gpa_and_a_small_test_set_are_noted(cohort: tuple, tmp_path: Path) -> None:
    table, _, splits = cohort
    random = pd.Series(np.random.default_rng(1).standard_normal(len(table)), index=table["case_id"])
    path = run(table, splits, random, tmp_path)
    text = (path.parent / "summary.md").read_text(encoding="utf-8")
    row = pd.read_csv(tmp_path / "comparison" / "comparison.csv", index_col="model").loc["net"]
    value, low, high = row["delta_harrell_c"], row["delta_harrell_c_low"], row["delta_harrell_c_high"]
    assert low <= 0  # a random risk does not beat the GPA: which of the two notes depends on its interval alone
    verdict = "worse than" if high < 0 else "not shown better than"
    assert f"net is {verdict} the GPA: ΔC {value:.3f} [{low:.3f}, {high:.3f}]" in text
    assert "small test set" in text  # 40 test patients < 50
    alive = int((table.set_index("case_id").loc[list(splits.test), "time_days"] > 24 * 365.25 / 12).sum())
    assert alive < 10 and f"AUC at 24 months: only {alive} test patient(s)" in text


def test_split_integrity_finds_a_patient_in_two_sets_and_a_patient_under_two_ids(cohort: tuple) -> None:
    table, _, splits = cohort
    checks, found = split_integrity(splits, table)
    assert not found and len(checks) == 3
    test_id, dev_id = splits.test[0], splits.development[0]
    twin = table.copy()
    measures = [c for c in table.columns if c.startswith("vol_")]
    twin.loc[twin["case_id"] == test_id, measures] = twin.loc[twin["case_id"] == dev_id, measures].to_numpy()
    folds = (Fold("fold-1", splits.folds[0].train, (*splits.folds[0].validation, test_id)), *splits.folds[1:])
    bad = dataclasses.replace(splits, test=(*splits.test, dev_id), folds=folds)
    _, found = split_integrity(bad, twin)
    texts = " ".join(f.text for f in found)
    assert "1 patient(s) in both the development and the test set" in texts
    assert "folds mixing sets: ['fold-1'" in texts and "identical to a development patient" in texts


def test_selection_on_scored_patients_and_the_test_sets_decisions_are_flagged(cohort: tuple, tmp_path: Path) -> None:
    table, oracle, splits = cohort
    legacy = ({"fold": "fold-1"},)  # a fold model that does not say where its epoch was chosen (older code)
    path = run(table, splits, oracle, tmp_path, fold_summaries=legacy, decisions=3)
    findings = " ".join(f["text"] for f in pd.read_json(path.parent / "audit.json", typ="series")["findings"])
    assert "selection-biased" in findings
    assert "has served 3 promotion-gate decision(s)" in findings
    page = path.read_text(encoding="utf-8")
    assert "never used to fit or choose a model in this evaluation, but it has served 3" in page
    leaking = dataclasses.replace(splits, folds=(dataclasses.replace(splits.folds[0], stop=(splits.test[0],)),
                                                 *splits.folds[1:]))
    checks, found = selection_findings(leaking, [{"selection": "stopping patients"}])
    assert not checks and "selection on scored patients" in found[0].text


def test_selection_not_recorded_by_every_fold_is_not_passed_and_a_key_mismatch_is_flagged(cohort: tuple) -> None:
    _, _, splits = cohort
    every = [{"fold": f.name, "selection": "stopping patients"} for f in splits.folds]
    checks, found = selection_findings(splits, every)
    assert any(c.startswith("no selection on scored patients") for c in checks) and not found
    for summaries, recorded in (([], 0), (every[:1], 1)):
        checks, found = selection_findings(splits, summaries)
        assert not any("no selection on scored patients" in c for c in checks)
        assert [(f.level, f.text) for f in found] == [
            ("warning", f"no selection on scored patients not shown: {recorded} of 3 folds recorded how they "
                        "selected (epoch, penalty)")]
    keyed = dataclasses.replace(splits, pseudonym_key_fingerprint="aaaa1111")
    checks, found = selection_findings(keyed, every, key_fingerprint="bbbb2222")
    assert [f.text for f in found] == ["key mismatch: the splits list ids made with the pseudonym key of fingerprint "
                                       "aaaa1111, this run's key is bbbb2222"]
    checks, found = selection_findings(keyed, every, key_fingerprint="aaaa1111")
    assert not found and any("fingerprint aaaa1111" in c for c in checks)


def delta_table(column: str, value: float, low: float, high: float, resamples: float = 200.0) -> pd.DataFrame:
    """A comparison of ``net`` and its reference ``gpa`` (not compared with itself) in one paired difference."""
    nan = float("nan")
    return pd.DataFrame({"harrell_c": [0.6, 0.6], column: [value, nan], f"{column}_low": [low, nan],
                         f"{column}_high": [high, nan], f"{column}_resamples": [resamples, nan]},
                        index=pd.Index(["net", "gpa"], name="model"))


@pytest.mark.parametrize(("value", "low", "high", "verdict"), [
    (-0.02, -0.08, 0.04, "not shown better than"),  # a lower point estimate, an interval including 0
    (-0.10, -0.16, -0.04, "worse than"),  # the whole interval below 0
])
def test_worse_than_the_reference_only_when_the_interval_shows_it(value: float, low: float, high: float,
                                                                   verdict: str) -> None:
    evaluation, test = EvaluationParams(), Outcome.of([800.0] * 60, [True] * 60)
    delta = f"ΔC {value:.3f} [{low:.3f}, {high:.3f}]"
    locked = [f.text for f in result_warnings(delta_table("delta_harrell_c", value, low, high), evaluation, test)]
    assert f"net is {verdict} the GPA: {delta}" in locked and not any("gpa" in t for t in locked)
    for role, label in (("gpa", "the GPA"), ("tabular", "the tabular-only network")):
        oof = [f.text for f in oof_warnings(delta_table(f"vs_{role}_harrell_c", value, low, high), evaluation)]
        assert oof == [f"net is {verdict} {label} out of fold: {delta}"]
    assert not result_warnings(delta_table("delta_harrell_c", 0.1, 0.02, 0.2), evaluation, test)  # shown better


def test_an_undefined_difference_or_interval_is_said_not_skipped() -> None:
    evaluation, test = EvaluationParams(), Outcome.of([800.0] * 60, [True] * 60)
    nan = float("nan")
    locked = [f.text for f in result_warnings(delta_table("delta_harrell_c", -0.5, nan, nan, 118), evaluation, test)]
    assert locked == [f"net: ΔC vs the GPA: -0.500, {UNDEFINED_INTERVAL}"]
    oof = [f.text for f in oof_warnings(delta_table("vs_gpa_harrell_c", 0.1, nan, nan, 50), evaluation)]
    assert oof == [f"net: ΔC vs the GPA out of fold: 0.100, {UNDEFINED_INTERVAL}"]
    oof = [f.text for f in oof_warnings(delta_table("vs_gpa_harrell_c", nan, nan, nan, 0), evaluation)]
    assert oof == ["net: ΔC vs the GPA out of fold: undefined (a score is undefined on these patients)"]
    assert not oof_warnings(delta_table("vs_gpa_harrell_c", nan, nan, nan, nan), evaluation)  # not computed
    # the summary says it too, and every table shows the point with "[undefined]", never a bare number
    comparison = delta_table("delta_harrell_c", -0.5, nan, nan, 118).assign(harrell_c_low=[nan, 0.5],
                                                                             harrell_c_high=[nan, 0.7])
    oof = delta_table("vs_gpa_harrell_c", 0.1, nan, nan, 50).assign(harrell_c_low=[0.5, 0.5],
                                                                    harrell_c_high=[0.7, 0.7])
    summary = summary_markdown("net", comparison, oof, "", [], [], None, [])
    assert f"vs GPA 0.100, {UNDEFINED_INTERVAL}" in summary
    assert f"difference to the GPA -0.500, {UNDEFINED_INTERVAL}" in summary
    display = comparison_display(comparison, {})
    assert display.loc["net", "delta_harrell_c"] == "-0.500 [undefined]"
    assert display.loc["net", "harrell_c"] == "0.600 [undefined]" and display.loc["gpa", "harrell_c"] == "0.600 " \
        "[0.500, 0.700]"
    assert display.loc["gpa", "delta_harrell_c"] == "-" and "delta_harrell_c_resamples" not in display.columns
    assert "| 0.600 [undefined] |" in table_markdown(comparison, {}, 60, 0.95)


def test_a_calibration_plot_is_drawn_only_at_a_horizon_with_a_table(cohort: tuple, tmp_path: Path) -> None:
    table, oracle, splits = cohort
    run(table, splits, oracle, tmp_path)
    compared = load_comparison(tmp_path)
    assert compared is not None
    drawn = figures(table, splits, compared.risks(), compared.per_site, "net",
                    ReportData(compared.oof_risks(), compared.oof_calibration(), None), tmp_path / "again",
                    horizons_months=(6, 60))  # 60 months: beyond every patient's follow-up, no calibration table
    assert ("dev", 6) in drawn["calibration"] and ("dev", 60) not in drawn["calibration"]
    assert (tmp_path / "again" / "calibration_dev_6m.png").is_file()
    assert not (tmp_path / "again" / "calibration_dev_60m.png").exists()


def test_sequences_a_whole_site_lacks_are_noted() -> None:
    from survival_model.evaluation.report import absent_sequences, sequence_findings

    table = pd.DataFrame({"site": ["a", "a", "b", "b"],
                          "int_wt_t1c_mean": [1.0, 2.0, 3.0, 4.0],
                          "int_wt_t2f_mean": [np.nan, np.nan, 3.0, np.nan],  # b: one patient has FLAIR
                          "rad_wt_t2f_firstorder_mean": [np.nan, np.nan, 1.0, np.nan],
                          "int_wt_t2w_mean": [np.nan] * 4, "int_wt_t1n_mean": [np.nan] * 4})
    assert absent_sequences(table) == {"a": ["t1n", "t2w", "t2f"], "b": ["t1n", "t2w"]}
    (note,) = sequence_findings(table)
    assert note.level == "note" and note.text.startswith("sequences absent for a whole site (a: t1n, t2w, t2f; "
                                                         "b: t1n, t2w)")
    assert note.text.endswith("; t1n, t2w absent for every patient: no model can use them")
    assert sequence_findings(table.drop(columns=["int_wt_t2w_mean", "int_wt_t1n_mean"]).assign(
        int_wt_t2f_mean=1.0, rad_wt_t2f_firstorder_mean=1.0)) == []
