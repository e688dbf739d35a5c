"""The evaluation report: figures, the HTML page, the summary and the leakage audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import EvaluationParams, SplitParams
from survival_model.evaluation.report import ReportData, selection_findings, split_integrity, write_report
from survival_model.evaluation.stage import NetworkRun, run_comparison
from survival_model.training.splits import Fold, Splits, make_splits
from tests.evaluation.cohorts import clinical_cohort

CLINICAL = ["age", "kps", "extracranial", "n_brain_mets", "sex"]


def run(table: pd.DataFrame, splits: Splits, risk: pd.Series, folder: Path, name: str = "net", *,
        fold_summaries: tuple[dict, ...] = ({"fold": "fold-1", "selection": "stopping patients"},),
        decisions: int | None = None) -> Path:
    folds = tuple((risk.loc[list(f.train)], risk.loc[list(f.validation)]) for f in splits.folds)
    network = NetworkRun(name, risk.loc[list(splits.development)], risk.loc[list(splits.test)], None, folds)
    evaluation = EvaluationParams(score_resamples=20, bootstrap=200, baselines=["gpa", "cox_clinical"])
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
    path = run(table, splits, leaky, tmp_path)
    findings = pd.read_json(path.parent / "audit.json", typ="series")["findings"]
    assert any(f["level"] == "warning" and "net: harrell_c" in f["text"] and "leakage" in f["text"] for f in findings)
    assert "implausible" in (path.parent / "summary.md").read_text(encoding="utf-8")


def test_a_model_that_does_not_beat_the_gpa_and_a_small_test_set_are_noted(cohort: tuple, tmp_path: Path) -> None:
    table, _, splits = cohort
    random = pd.Series(np.random.default_rng(1).standard_normal(len(table)), index=table["case_id"])
    path = run(table, splits, random, tmp_path)
    text = (path.parent / "summary.md").read_text(encoding="utf-8")
    assert "net is worse than the GPA" in text or "net is not shown better than the GPA" in text
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
