"""Per-patient image ingestion on tiny synthetic volumes: every validation path."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import IngestParams, Institution
from survival_model.fingerprint import digest_memo_path
from survival_model.imageio import read_json
from survival_model.ingest.discovery import discover_cases
from survival_model.ingest.images import IngestImages, case_id_for, source_digest
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.patient import PatientOutcome
from survival_model.stage import run, short

CASE = "PAT-0042"
PSEUDO = Pseudonymiser(b"k" * 32)


def volume(values: np.ndarray, spacing: tuple[float, float, float] = (2.0, 2.0, 3.0),
           origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def tumour_mask(shape: tuple[int, int, int] = (8, 12, 12), labels: tuple[int, int, int] = (1, 2, 3)) -> np.ndarray:
    netc, snfh, et = labels
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:7, 2:10, 2:10] = snfh
    mask[3:6, 4:8, 4:8] = et
    mask[4, 5:7, 5:7] = netc
    return mask


def write_case(root: Path, *, mask: np.ndarray | None = None, skip: tuple[str, ...] = (),
               overrides: dict[str, sitk.Image] | None = None, suffix: str = ".nii.gz") -> None:
    rng = np.random.default_rng(0)
    folder = root / CASE
    folder.mkdir(parents=True, exist_ok=True)
    images = {s: volume(rng.uniform(10, 100, (8, 12, 12)).astype(np.float32)) for s in ("t1n", "t1c", "t2w", "t2f")}
    images["seg"] = volume(tumour_mask() if mask is None else mask)
    images.update(overrides or {})
    for name, image in images.items():
        if name not in skip:
            sitk.WriteImage(image, str(folder / f"{CASE}-{name}{suffix}"))


def institution(root: Path, **changes: Any) -> Institution:
    suffix = changes.pop("suffix", ".nii.gz")
    data: dict[str, Any] = {
        "images": {"layout": "pattern", "root": str(root),
                   "sequences": {s: f"{{case}}/{{case}}-{s}{suffix}" for s in ("t1n", "t1c", "t2w", "t2f")},
                   "mask": f"{{case}}/{{case}}-seg{suffix}"},
        "labels": "brats_mets",
        "clinical": {"path": "/unused.csv", "id_column": "id",
                     "survival": {"kind": "duration", "time_column": "t", "event_column": "e"}},
    }
    for key, value in changes.items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    return Institution.model_validate(data)


def stage(root: Path, work: Path, inst: Institution | None = None,
          params: IngestParams | None = None) -> IngestImages:
    inst = inst or institution(root)
    (case,) = discover_cases("site_x", inst.images)
    return IngestImages(case_id_for(case, inst, PSEUDO), case, inst, params or IngestParams(), work, PSEUDO.memo_key)


def ingest(root: Path, work: Path, inst: Institution | None = None,
           params: IngestParams | None = None) -> PatientOutcome:
    return run(stage(root, work, inst, params))


def reason(outcome: PatientOutcome) -> str:
    assert not outcome.ok
    (record,) = outcome.quarantine
    assert CASE not in record.message, "the source id leaked into a message"
    return record.reason


def test_a_good_case_is_written_canonically(tmp_path: Path) -> None:
    write_case(tmp_path / "raw")
    outcome = ingest(tmp_path / "raw", tmp_path / "work")
    assert outcome.ok and outcome.patient is not None
    patient = outcome.patient
    assert outcome.case_id == PSEUDO.case_id("site_x", CASE)
    assert set(patient.images) == {"t1n", "t1c", "t2w", "t2f"}
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(patient.mask)))
    assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1, 2, 3}
    assert patient.qc["label_voxels"] == {"netc": 4, "snfh": int((tumour_mask() == 2).sum()), "et": 44}
    assert patient.qc["tumour_components"] == 1
    assert patient.qc["label_volume_mm3"]["et"] == pytest.approx(44 * 12.0)
    assert CASE not in str(patient.folder)
    assert (patient.folder / "manifest.json").is_file()


def test_reuse_does_not_rewrite_and_changed_bytes_make_a_new_folder(tmp_path: Path) -> None:
    write_case(tmp_path / "raw")
    first = ingest(tmp_path / "raw", tmp_path / "work")
    assert first.patient is not None
    stamp = first.patient.mask.stat().st_mtime_ns
    again = ingest(tmp_path / "raw", tmp_path / "work")
    assert again.key == first.key and again.patient is not None
    assert again.patient.mask.stat().st_mtime_ns == stamp
    other = volume(np.full((8, 12, 12), 7.0, dtype=np.float32) + np.arange(12, dtype=np.float32))
    write_case(tmp_path / "raw", overrides={"t2w": other})
    changed = ingest(tmp_path / "raw", tmp_path / "work")
    assert changed.key != first.key and changed.patient is not None
    assert changed.patient.folder != first.patient.folder


def test_the_stage_names_its_folder_and_outputs_by_its_key(tmp_path: Path) -> None:
    write_case(tmp_path / "raw")
    work = tmp_path / "work"
    ingestion = stage(tmp_path / "raw", work)
    case_id = PSEUDO.case_id("site_x", CASE)
    assert (ingestion.case_id, ingestion.label()) == (case_id, f"images-{case_id}")
    assert ingestion.folder() == work / "ingest" / "images" / "site_x" / case_id / short(ingestion.key())
    assert not any(p.exists() for p in ingestion.outputs(ingestion.folder()))
    outcome = run(ingestion)
    assert outcome.key == ingestion.key() and outcome.patient is not None and outcome.patient.key == outcome.key
    assert [p.name for p in ingestion.outputs(ingestion.folder())] == ["manifest.json"]
    assert all(p.is_file() for p in ingestion.outputs(ingestion.folder()))
    manifest = read_json(ingestion.folder() / "manifest.json")
    assert manifest["key"] == ingestion.key()
    assert manifest["qc"]["source_digest"] == outcome.patient.qc["source_digest"] == source_digest(ingestion.case)
    assert digest_memo_path(work).is_dir()  # the raw files' digests are memoised in the work directory
    assert stage(tmp_path / "raw", work).key() == ingestion.key()  # a new stage object: the same key

    write_case(tmp_path / "bad", skip=("seg",))
    bad = stage(tmp_path / "bad", work)
    assert not run(bad).ok
    assert [p.name for p in bad.outputs(bad.folder())] == ["quarantine.json"]
    assert not (bad.folder() / "manifest.json").exists()


def test_glioma_labels_are_remapped(tmp_path: Path) -> None:
    write_case(tmp_path / "raw", mask=tumour_mask(labels=(1, 2, 4)))
    outcome = ingest(tmp_path / "raw", tmp_path / "work", institution(tmp_path / "raw", labels="brats_glioma"))
    assert outcome.patient is not None
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(outcome.patient.mask)))
    assert set(np.unique(seg)) == {0, 1, 2, 3} and int((seg == 3).sum()) == 44


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"skip": ("t2w",)}, "missing_sequence"),
        ({"skip": ("seg",)}, "missing_segmentation"),
        ({"mask": np.zeros((8, 12, 12), dtype=np.uint8)}, "empty_mask"),
        ({"mask": tumour_mask(labels=(1, 2, 7))}, "unknown_label"),
        ({"overrides": {"t1n": volume(np.full((8, 12, 12), 3.0, dtype=np.float32))}}, "empty_image"),
        ({"overrides": {"seg": volume(tumour_mask()[:, :, :10])}}, "mask_grid_mismatch"),
        ({"overrides": {"seg": volume(tumour_mask(), origin=(5.0, 0.0, 0.0))}}, "mask_grid_mismatch"),
        ({"overrides": {"seg": volume(tumour_mask().astype(np.float32) * 0.5)}}, "unknown_label"),
        ({"overrides": {"t1c": volume(np.ones((8, 12, 12), np.float32) * np.arange(12, dtype=np.float32),
                                      spacing=(1.0, 1.0, 1.0))}}, "sequence_grid_mismatch"),
    ],
)
def test_quarantine_reasons(tmp_path: Path, setup: dict[str, Any], expected: str) -> None:
    write_case(tmp_path / "raw", **setup)
    assert reason(ingest(tmp_path / "raw", tmp_path / "work")) == expected


def test_nan_is_caught_in_nrrd_and_in_nifti_where_itk_would_hide_it(tmp_path: Path) -> None:
    bad = np.random.default_rng(1).uniform(1, 9, (8, 12, 12)).astype(np.float32)
    bad[0, 0, :3] = np.nan
    for suffix in (".nrrd", ".nii.gz"):
        root = tmp_path / suffix.strip(".")
        write_case(root, overrides={"t2f": volume(bad)}, suffix=suffix)
        outcome = ingest(root, tmp_path / "work", institution(root, suffix=suffix))
        assert reason(outcome) == "non_finite"
        assert "3 NaN/infinite voxels" in outcome.quarantine[0].message


def test_unreadable_and_unsupported_files(tmp_path: Path) -> None:
    write_case(tmp_path / "raw")
    (tmp_path / "raw" / CASE / f"{CASE}-t1c.nii.gz").write_bytes(b"not an image at all")
    assert reason(ingest(tmp_path / "raw", tmp_path / "work")) == "unreadable_image"

    write_case(tmp_path / "raw2", overrides={"t1c": sitk.GetImageFromArray(np.ones((5, 5), np.float32))})
    assert reason(ingest(tmp_path / "raw2", tmp_path / "work")) == "unsupported_image"


@pytest.mark.parametrize("name", ["t1c", "seg"])
def test_a_truncated_image_or_mask_is_unreadable_not_read_in_part(tmp_path: Path, name: str) -> None:
    """ITK returns what it could decompress from a cut-off .nii.gz: the file is checked against its header."""
    big = {n: volume(np.random.default_rng(2).uniform(10, 100, (24, 48, 48)).astype(np.float32))
           for n in ("t1n", "t1c", "t2w", "t2f")}
    mask = np.zeros((24, 48, 48), np.uint8)
    mask[8:16, 16:32, 16:32] = 3
    write_case(tmp_path / "raw", overrides={**big, "seg": volume(mask)})
    path = tmp_path / "raw" / CASE / f"{CASE}-{name}.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    outcome = ingest(tmp_path / "raw", tmp_path / "work")
    assert reason(outcome) == "unreadable_image"
    assert "truncated" in outcome.quarantine[0].message or "cannot be used" in outcome.quarantine[0].message


def test_an_uncompressed_nifti_named_gz_quarantines_its_case_only(tmp_path: Path) -> None:
    write_case(tmp_path / "raw")
    path = tmp_path / "raw" / CASE / f"{CASE}-t2w.nii.gz"
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(plain))
    path.write_bytes(plain.read_bytes())  # a .nii.gz that is not gzipped
    outcome = ingest(tmp_path / "raw", tmp_path / "work")
    assert reason(outcome) == "unreadable_image"
    assert "not a valid NIfTI file" in outcome.quarantine[0].message


def test_a_float_mask_holding_nan_is_non_finite(tmp_path: Path) -> None:
    mask = tumour_mask().astype(np.float32)
    mask[0, 0, :2] = np.nan
    write_case(tmp_path / "raw", overrides={"seg": volume(mask)})
    outcome = ingest(tmp_path / "raw", tmp_path / "work")
    assert reason(outcome) == "non_finite"
    assert "the mask has 2 NaN/infinite voxels" in outcome.quarantine[0].message


def test_mask_within_tolerance_takes_the_image_geometry(tmp_path: Path) -> None:
    write_case(tmp_path / "raw", overrides={"seg": volume(tumour_mask(), origin=(0.01, 0.0, 0.0))})
    outcome = ingest(tmp_path / "raw", tmp_path / "work")
    assert outcome.patient is not None and outcome.patient.qc["mask_geometry_fixed"] is True
    seg = sitk.ReadImage(str(outcome.patient.mask))
    assert seg.GetOrigin() == (0.0, 0.0, 0.0)


def test_sequences_on_other_grids_are_kept_when_not_co_registered(tmp_path: Path) -> None:
    other = volume(np.random.default_rng(2).uniform(1, 9, (6, 10, 10)).astype(np.float32), spacing=(2.5, 2.5, 4.0))
    write_case(tmp_path / "raw", overrides={"t2w": other})
    inst = institution(tmp_path / "raw", acquisition={"co_registered": False})
    outcome = ingest(tmp_path / "raw", tmp_path / "work", inst)
    assert outcome.patient is not None
    assert outcome.patient.qc["geometry"]["t2w"]["size"] == [10, 10, 6]
    assert outcome.patient.qc["geometry"]["t1c"]["size"] == [12, 12, 8]


def test_metadata_such_as_names_is_not_carried_over(tmp_path: Path) -> None:
    tagged = volume(np.random.default_rng(3).uniform(1, 9, (8, 12, 12)).astype(np.float32))
    tagged.SetMetaData("ITK_FileNotes", "Doe^Jane")  # what ITK writes into the NIfTI `descrip` field
    write_case(tmp_path / "raw", overrides={"t1n": tagged}, suffix=".nrrd")
    outcome = ingest(tmp_path / "raw", tmp_path / "work", institution(tmp_path / "raw", suffix=".nrrd"))
    assert outcome.patient is not None
    written = outcome.patient.images["t1n"]
    data = gzip.decompress(written.read_bytes()) if written.name.endswith(".gz") else written.read_bytes()
    assert written.name.endswith((".nii", ".nii.gz")) and b"Doe^Jane" not in data
    assert b"Doe^Jane" in (tmp_path / "raw" / CASE / f"{CASE}-t1n.nrrd").read_bytes()
