"""Clinical tables without outcomes (new patients to predict): ingestion, cohort summary, report, metrics."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from survival_model.config import ClinicalSource, IngestParams, Institution
from survival_model.imageio import write_parquet
from survival_model.ingest.clinical import (
    CLINICAL_DTYPES,
    ClinicalResult,
    HarmoniseClinical,
    empty_clinical_table,
    harmonise_table,
    has_outcome,
)
from survival_model.ingest.cohort import AssembleCohort, summarise
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.ingest.report import plot_cohort, site_table, summary_markdown
from survival_model.patient import Patient, PatientOutcome
from survival_model.quarantine import QuarantineRecord, quarantine_frame
from survival_model.stage import run
from survival_model.tracking_summary import ingestion_metrics

SITE = "site_x"
PSEUDONYMISER = Pseudonymiser(b"k" * 32)
DURATION = {"kind": "duration", "time_column": "time", "event_column": "event"}


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def source(path: Path, **fields: Any) -> ClinicalSource:
    return ClinicalSource.model_validate({"path": str(path), "id_column": "id", **fields})


def cid(source_id: str) -> str:
    return PSEUDONYMISER.case_id(SITE, source_id)


# --------------------------------------------------------------------------------------------------
# Clinical harmonisation
# --------------------------------------------------------------------------------------------------


def test_survival_is_optional_and_null_by_default(tmp_path: Path) -> None:
    assert source(tmp_path / "c.csv").survival is None
    assert source(tmp_path / "c.csv", survival=None).survival is None
    assert source(tmp_path / "c.csv", survival=DURATION).survival is not None


def test_a_table_without_outcome_columns_ingests_its_rows_with_missing_outcomes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "new.csv", [
        ["id", "age", "kps", "sex"],
        ["p1", "61", "80", "F"],
        ["p2", "70", "", "M"],
        ["p3", "55", "90", ""],
    ])
    frame, quarantine, report = harmonise_table(SITE, source(path, columns={"age": "age", "kps": "kps", "sex": "sex"}),
                                                IngestParams(), PSEUDONYMISER)
    assert quarantine == []
    assert report["harmonised"] == 3 and report["quarantined"] == 0
    assert sorted(frame["case_id"]) == sorted(cid(p) for p in ("p1", "p2", "p3"))
    assert frame["time_days"].isna().all() and frame["event"].isna().all()
    assert frame["time_days"].dtype == pd.api.types.pandas_dtype("Float64")
    assert frame["event"].dtype == pd.api.types.pandas_dtype("Int64")
    assert not has_outcome(frame).any()
    assert frame.set_index("case_id").loc[cid("p1"), "age"] == 61.0


def test_without_survival_the_other_range_checks_still_apply(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "new.csv", [["id", "kps"], ["ok", "80"], ["bad", "180"]])
    frame, quarantine, _ = harmonise_table(SITE, source(path, columns={"kps": "kps"}), IngestParams(), PSEUDONYMISER)
    assert list(frame["case_id"]) == [cid("ok")]
    assert [(q.case_id, q.reason) for q in quarantine] == [(cid("bad"), "clinical_out_of_range")]


def test_a_declared_survival_with_a_missing_value_is_still_quarantined(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["id", "time", "event"], ["ok", "10", "1"], ["no_time", "", "0"]])
    frame, quarantine, _ = harmonise_table(SITE, source(path, survival=DURATION), IngestParams(), PSEUDONYMISER)
    assert list(frame["case_id"]) == [cid("ok")]
    assert [(q.case_id, q.reason) for q in quarantine] == [(cid("no_time"), "missing_survival")]
    assert has_outcome(frame).all()


def test_harmonise_site_without_survival_persists_the_nullable_dtypes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "new.csv", [["id", "age"], ["p1", "61"], ["p2", "72"]])
    institution = Institution.model_validate({
        "images": {"layout": "brats", "root": str(tmp_path)},
        "clinical": {"path": str(path), "id_column": "id", "columns": {"age": "age"}},
    })
    result = run(HarmoniseClinical(SITE, institution, IngestParams(), PSEUDONYMISER, tmp_path / "work"))
    assert result.error is None
    frame = result.table()
    for column, dtype in {"site": "string", "case_id": "string", **CLINICAL_DTYPES}.items():
        assert frame[column].dtype == pd.api.types.pandas_dtype(dtype), column
    assert len(frame) == 2 and frame["time_days"].isna().all() and frame["event"].isna().all()


# --------------------------------------------------------------------------------------------------
# Cohort summary, report and metrics with a site without outcomes
# --------------------------------------------------------------------------------------------------


def outcome(case_id: str, site: str) -> PatientOutcome:
    folder = Path("/w") / case_id
    patient = Patient(site=site, case_id=case_id, folder=folder, images={"t1c": folder / "t1c.nii.gz"},
                      mask=folder / "seg.nii.gz", brain_mask=None, key=f"key-{case_id}",
                      qc={"tumour_components": 1, "mask_geometry_fixed": False, "source_digest": f"src-{case_id}"})
    return PatientOutcome(site, case_id, f"key-{case_id}", patient)


def clinical(tmp_path: Path, site: str, rows: list[dict[str, Any]]) -> ClinicalResult:
    frame = empty_clinical_table()
    table = pd.DataFrame([{**{c: None for c in frame.columns}, "site": site, **r} for r in rows],
                         columns=frame.columns)
    path = write_parquet(table.astype(frame.dtypes.to_dict()), tmp_path / f"{site}.parquet")
    return ClinicalResult(site, f"ck-{site}", path)


KNOWN = [{"case_id": "a-1", "time_days": 100.0, "event": 1}, {"case_id": "a-2", "time_days": 300.0, "event": 0},
         {"case_id": "a-3", "time_days": 200.0, "event": 1}]
NEW = [{"case_id": "n-1", "age": 60.0}, {"case_id": "n-2", "age": 71.0}]


@pytest.fixture()
def built(tmp_path: Path) -> Any:
    outcomes = [outcome(r["case_id"], "a") for r in KNOWN] + [outcome(r["case_id"], "new") for r in NEW]
    results = [clinical(tmp_path, "a", KNOWN), clinical(tmp_path, "new", NEW)]
    return run(AssembleCohort(tuple(outcomes), tuple(results), IngestParams(), tmp_path / "work"))


def test_cohort_keeps_patients_without_outcome_with_missing_values(built: Any) -> None:
    cohort = built.cohort()
    assert list(cohort["case_id"]) == ["a-1", "a-2", "a-3", "n-1", "n-2"]
    new = cohort[cohort["site"] == "new"]
    assert new["time_days"].isna().all() and new["event"].isna().all()
    assert str(cohort["time_days"].dtype) == "Float64" and str(cohort["event"].dtype) == "Int64"


def test_summary_of_a_site_without_outcomes(built: Any) -> None:
    summary = built.summary
    assert summary["patients"] == 5 and summary["events"] == 2 and summary["without_outcome"] == 2
    assert summary["sites"]["new"] == {
        "patients": 2, "with_outcome": 0, "without_outcome": 2, "events": None, "censored": None,
        "censored_fraction": None, "median_time_days": None, "quarantined": 0,
    }
    assert summary["sites"]["a"] == {
        "patients": 3, "with_outcome": 3, "without_outcome": 0, "events": 2, "censored": 1,
        "censored_fraction": 0.333, "median_time_days": 200.0, "quarantined": 0,
    }


def test_summary_of_a_site_whose_patients_are_all_quarantined_keeps_zero_counts() -> None:
    cohort = empty_clinical_table()
    quarantine = quarantine_frame([QuarantineRecord("q", "q-1", "clinical", "missing_survival", "q-1: missing")])
    site = summarise(cohort, quarantine, ["q"])["sites"]["q"]
    assert (site["patients"], site["events"], site["censored"], site["quarantined"]) == (0, 0, 0, 1)
    assert site["censored_fraction"] is None and site["median_time_days"] is None


def test_report_shows_a_dash_and_says_there_is_no_outcome(built: Any) -> None:
    text = (built.folder / "summary.md").read_text(encoding="utf-8")
    assert "| new | 2 | - | - | - | 2 | 0 |" in text
    assert "| a | 3 | 2 | 33.3 | 200.0 | 0 | 0 |" in text
    assert "2 patient(s) have no survival outcome" in text
    assert summary_markdown(built.summary) == text
    rows = {r["site"]: r for r in site_table(built.summary)}
    assert rows["new"]["events"] is None and rows["new"]["no outcome"] == 2
    assert (built.folder / "cohort_summary.png").stat().st_size > 1000


def test_report_figure_names_the_site_without_outcomes(built: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    figures: list[Any] = []
    original = Figure.savefig

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    path = plot_cohort(built.cohort(), built.quarantine(), tmp_path / "figure.png")
    assert path.is_file()
    km, bars, _ = figures[0].axes
    labels = [text.get_text() for text in km.get_legend().get_texts()]
    assert labels == ["a (n=3, 2 deaths)", "new (n=2): no outcome, to predict"]
    assert "no outcome (to predict)" in [t.get_text() for t in bars.get_legend().get_texts()]


def test_a_figure_of_a_cohort_with_no_outcome_at_all(tmp_path: Path) -> None:
    results = [clinical(tmp_path, "new", NEW)]
    built = run(AssembleCohort(tuple(outcome(r["case_id"], "new") for r in NEW), tuple(results), IngestParams(),
                               tmp_path / "work"))
    assert built.summary["events"] == 0 and built.summary["without_outcome"] == 2
    assert (built.folder / "cohort_summary.png").is_file()


def test_ingestion_metrics_skip_missing_counts(built: Any) -> None:
    metrics = ingestion_metrics(built.summary)
    assert "cohort.new.events" not in metrics
    assert metrics["cohort.new.patients"] == 2.0 and metrics["cohort.new.without_outcome"] == 2.0
    assert metrics["cohort.a.events"] == 2.0 and metrics["cohort.without_outcome"] == 2.0
    assert all(isinstance(v, float) for v in metrics.values())


# --------------------------------------------------------------------------------------------------
# Feature table
# --------------------------------------------------------------------------------------------------


def test_the_feature_table_keeps_missing_outcomes_in_nullable_columns(built: Any) -> None:
    from survival_model.features.table import feature_table

    cohort = built.cohort()
    clinical_rows = cohort.drop(columns=[c for c in cohort.columns if c.startswith(("path_", "qc_"))]
                                + ["images_key", "source_digest"])
    rows = [{"site": s, "case_id": c, "vol_wt_mm3": 1000.0 + i}
            for i, (s, c) in enumerate(zip(clinical_rows["site"], clinical_rows["case_id"], strict=True))]
    table = feature_table(rows, clinical_rows)
    assert list(table.columns).index("time_days") < list(table.columns).index("vol_wt_mm3")
    new = table[table["site"] == "new"]
    assert len(new) == 2 and new["time_days"].isna().all() and new["event"].isna().all()
    assert str(table["time_days"].dtype) == "Float64" and str(table["event"].dtype) == "Int64"
