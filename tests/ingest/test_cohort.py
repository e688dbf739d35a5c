"""Cohort assembly rules, on hand-made image outcomes and clinical results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from survival_model.config import IngestParams
from survival_model.imageio import write_parquet
from survival_model.ingest.clinical import ClinicalResult, empty_clinical_table
from survival_model.ingest.cohort import AssembleCohort, assemble, data_fingerprint
from survival_model.patient import Patient, PatientOutcome
from survival_model.quarantine import QuarantineRecord
from survival_model.stage import run, short


def outcome(case_id: str, site: str = "a", components: int = 1, key: str | None = None) -> PatientOutcome:
    folder = Path("/w") / case_id
    patient = Patient(site=site, case_id=case_id, folder=folder, images={"t1c": folder / "t1c.nii.gz"},
                      mask=folder / "seg.nii.gz", brain_mask=None, key=key or f"key-{case_id}",
                      qc={"tumour_components": components, "mask_geometry_fixed": False,
                          "source_digest": f"src-{case_id}"})
    return PatientOutcome(site, case_id, key or f"key-{case_id}", patient)


def clinical(tmp_path: Path, site: str, rows: list[dict],
             quarantine: tuple[QuarantineRecord, ...] = ()) -> ClinicalResult:
    frame = empty_clinical_table()
    table = pd.DataFrame([{**{c: None for c in frame.columns}, "site": site, **r} for r in rows], columns=frame.columns)
    path = write_parquet(table.astype(frame.dtypes.to_dict()), tmp_path / f"{site}.parquet")
    return ClinicalResult(site, f"ck-{site}", path, quarantine)


def row(case_id: str, n: int | None = None) -> dict:
    return {"case_id": case_id, "time_days": 100.0, "event": 1, "n_brain_mets": n, "age": 60.0}


def reasons(records: list[QuarantineRecord]) -> dict[str, str]:
    return {r.case_id: r.reason for r in records}


def test_join_and_the_missing_sides(tmp_path: Path) -> None:
    outcomes = [outcome("a-1"), outcome("a-2"), outcome("a-3")]
    bad = QuarantineRecord("a", "a-5", "clinical", "missing_survival", "a-5: survival missing")
    result = clinical(tmp_path, "a", [row("a-1"), row("a-2"), row("a-4")], (bad,))
    cohort, records = assemble(outcomes, [result], IngestParams())
    assert list(cohort["case_id"]) == ["a-1", "a-2"]
    assert reasons(records) == {"a-3": "missing_clinical", "a-4": "missing_images", "a-5": "missing_survival"}
    assert cohort["path_t1c"].tolist() == ["/w/a-1/t1c.nii.gz", "/w/a-2/t1c.nii.gz"]
    assert cohort["path_t2w"].isna().all()


def test_quarantined_images_and_duplicates(tmp_path: Path) -> None:
    empty = QuarantineRecord("a", "a-2", "images", "empty_mask", "a-2: empty")
    failed = PatientOutcome("a", "a-2", "k2", None, (empty,))
    outcomes = [outcome("a-1"), failed, outcome("a-3", key="x"), outcome("a-3", key="y")]
    result = clinical(tmp_path, "a", [row("a-1"), row("a-2"), row("a-3")])
    cohort, records = assemble(outcomes, [result], IngestParams())
    assert list(cohort["case_id"]) == ["a-1"]
    assert reasons(records) == {"a-2": "empty_mask", "a-3": "duplicate_id"}


def test_site_level_errors_quarantine_the_whole_site(tmp_path: Path) -> None:
    broken = ClinicalResult("b", "ck", None, (), {}, "clinical table /x.csv not found")
    outcomes = [outcome("a-1"), outcome("b-1", site="b"), outcome("b-2", site="b")]
    cohort, records = assemble(outcomes, [clinical(tmp_path, "a", [row("a-1")]), broken], IngestParams())
    assert list(cohort["case_id"]) == ["a-1"]
    assert reasons(records) == {"b-1": "clinical_table_error", "b-2": "clinical_table_error"}

    cohort, records = assemble([outcome("a-1")], [clinical(tmp_path, "a", [row("a-1")]),
                                                  clinical(tmp_path, "c", [row("c-1")])], IngestParams(),
                               site_errors={"c": "image folder /c does not exist"})
    assert list(cohort["case_id"]) == ["a-1"]
    assert reasons(records) == {"c-1": "image_source_error"}


@pytest.mark.parametrize(("check", "expected_ids"), [(False, ["a-1", "a-2"]), (True, ["a-1"])])
def test_lesion_count_check(tmp_path: Path, check: bool, expected_ids: list[str]) -> None:
    outcomes = [outcome("a-1", components=2), outcome("a-2", components=3)]
    result = clinical(tmp_path, "a", [row("a-1", n=2), row("a-2", n=5)])
    cohort, records = assemble(outcomes, [result], IngestParams(check_lesion_count=check))
    assert list(cohort["case_id"]) == expected_ids
    assert (reasons(records) == {"a-2": "lesion_count_mismatch"}) is check


def test_fingerprint_ignores_paths_but_not_data(tmp_path: Path) -> None:
    result = clinical(tmp_path, "a", [row("a-1")])
    cohort, _ = assemble([outcome("a-1")], [result], IngestParams())
    moved = cohort.assign(path_t1c="/elsewhere/t1c.nii.gz")
    assert data_fingerprint(moved) == data_fingerprint(cohort)
    assert data_fingerprint(cohort.assign(time_days=101.0)) != data_fingerprint(cohort)


def test_the_cohort_stage_writes_reports_and_is_content_keyed(tmp_path: Path) -> None:
    result = clinical(tmp_path, "a", [row("a-1"), row("a-4")])
    stage = AssembleCohort((outcome("a-1"),), (result,), IngestParams(), tmp_path / "work",
                           pseudonym_key_fingerprint="f" * 16)
    built = run(stage)
    assert built.folder == stage.folder() == tmp_path / "work" / "ingest" / "cohort" / short(stage.key())
    assert built.cohort().shape[0] == 1
    assert [p.name for p in built.report_files() if p.is_file()] == [
        "summary.json", "summary.md", "quarantine.csv", "cohort_summary.png"]
    assert built.summary["quarantine_by_reason"] == {"missing_images": 1}
    assert built.summary["pseudonym_key_fingerprint"] == "f" * 16
    assert "missing_images" in (built.folder / "summary.md").read_text()
    assert all(p.is_file() for p in stage.outputs(stage.folder()))
    again = run(AssembleCohort((outcome("a-1"),), (result,), IngestParams(), tmp_path / "work"))
    assert again.folder == built.folder  # the key's fingerprint is recorded, not keyed (the ids carry the key)
    changed = AssembleCohort((outcome("a-1", key="other"),), (result,), IngestParams(), tmp_path / "work")
    assert changed.key() != stage.key()
    erred = AssembleCohort((outcome("a-1"),), (result,), IngestParams(), tmp_path / "work", {"b": "no folder"})
    assert erred.key() != stage.key()


def test_the_cohorts_image_paths_follow_a_moved_work_directory(tmp_path: Path) -> None:
    """Paths under the work directory are stored relative to it (a copied or moved one keeps working); a path
    outside it (e.g. a site's own brain mask) stays absolute."""
    import shutil

    work = tmp_path / "work"
    inside = outcome("a-1")
    patient = inside.patient
    assert patient is not None
    ingested = work / "ingest" / "images" / "a" / "a-1"
    moved_in = PatientOutcome("a", "a-1", inside.key, Patient(
        "a", "a-1", ingested, {"t1c": ingested / "t1c.nii"}, ingested / "seg.nii", Path("/site/brain.nii.gz"),
        patient.key, patient.qc))
    result = run(AssembleCohort((moved_in,), (clinical(tmp_path, "a", [row("a-1")]),), IngestParams(), work))
    stored = pd.read_parquet(result.cohort_path)
    assert stored.loc[0, "path_t1c"] == "ingest/images/a/a-1/t1c.nii"
    assert stored.loc[0, "path_brain_mask"] == "/site/brain.nii.gz"
    shutil.copytree(work, tmp_path / "copy")
    copied = run(AssembleCohort((moved_in,), (clinical(tmp_path, "a", [row("a-1")]),), IngestParams(),
                                tmp_path / "copy"))
    frame = copied.cohort()
    assert frame.loc[0, "path_t1c"] == str(tmp_path / "copy" / "ingest/images/a/a-1/t1c.nii")
    assert frame.loc[0, "path_mask"] == str(tmp_path / "copy" / "ingest/images/a/a-1/seg.nii")
    assert frame.loc[0, "path_brain_mask"] == "/site/brain.nii.gz"


def test_each_patients_sequences_are_recorded_and_counted_per_site(tmp_path: Path) -> None:
    from survival_model.ingest.cohort import summarise
    from survival_model.ingest.report import summary_markdown

    two = outcome("b-1", site="b")
    two.patient.images["t2w"] = Path("/w/b-1/t2w.nii.gz")  # type: ignore[union-attr]
    outcomes = [outcome("a-1"), outcome("a-2"), two]
    results = [clinical(tmp_path, "a", [row("a-1"), row("a-2")]), clinical(tmp_path, "b", [row("b-1")])]
    cohort, _ = assemble(outcomes, results, IngestParams())
    assert cohort["qc_sequences"].tolist() == ["t1c", "t1c", "t1c+t2w"]
    summary = {**summarise(cohort, pd.DataFrame(columns=["site", "case_id", "reason"]), ["a", "b"]),
               "fingerprint": "f"}
    assert summary["sequences"] == {"a": {"t1n": 0, "t1c": 2, "t2w": 0, "t2f": 0},
                                    "b": {"t1n": 0, "t1c": 1, "t2w": 1, "t2f": 0}}
    text = summary_markdown(summary)
    assert "| site | t1n | t1c | t2w | t2f |" in text and "| a | 0/2 | 2/2 | 0/2 | 0/2 |" in text
    everyone = {**summary, "sequences": {"a": {"t1c": 2}, "b": {"t1c": 1}}}
    assert "Sequences per site" not in summary_markdown(everyone)  # shown only where some patient lacks one
