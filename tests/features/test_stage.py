"""The feature stage's key (it names the label map the volumetric and shape features measure) and QC row
(which sequences, which brain mask, the resampling allowance)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from survival_model.config import FeaturesParams
from survival_model.features.stage import Features, qc_record
from survival_model.patient import Patient, PatientOutcome


def test_the_key_changes_with_the_label_map_the_volumes_are_measured_on(tmp_path: Path) -> None:
    folder = tmp_path / "preprocess" / "site_a" / "A001" / "0123456789abcdef"
    resampled = Patient("site_a", "A001", folder, {"t1c": folder / "t1c.nii"}, folder / "seg.nii", None, "key-1")
    native = dataclasses.replace(resampled, native_mask=folder / "seg_native.nii")
    with_native, without = Features(native, FeaturesParams(), tmp_path), Features(resampled, FeaturesParams(), tmp_path)
    assert (with_native.label_source(), without.label_source()) == ("native", "resampled")
    assert with_native.key() != without.key()
    assert with_native.key() == Features(dataclasses.replace(native), FeaturesParams(), tmp_path).key()


def test_the_qc_row_shows_the_resampling_allowance_and_lost_lesions_when_recorded(tmp_path: Path) -> None:
    qc = {"sequences": ["t1c", "t2f"], "brain_mask": {"source": "deepbet(t1c)", "tumour_inside": 0.98},
          "brain_volume_ml": 1400.0, "region_volumes_mm3": {"native": {"wt": 196.0}, "resampled": {"wt": 281.25}},
          "tumour_volume_change": 0.435, "bias": {}, "registration": {},
          "resampling": {"allowance_mm3": 120.0, "lesions_vanished": [{"volume_mm3": 27.0, "restored": True}]}}
    patient = Patient("site_a", "A001", tmp_path, {}, tmp_path / "seg.nii", None, "key-1", qc)
    row = qc_record(PatientOutcome("site_a", "A001", "key-1", patient))
    assert row["tumour_volume_change"] == 0.435
    assert (row["tumour_volume_allowance_mm3"], row["lesions_vanished"]) == (120.0, 1)
    assert (row["sequences"], row["brain_mask"], row["tumour_in_brain"]) == ("t1c+t2f", "deepbet(t1c)", 0.98)
    older = dataclasses.replace(patient, qc={**{k: v for k, v in qc.items() if k != "resampling"},
                                             "brain_mask": {"source": "given"}})
    row = qc_record(PatientOutcome("site_a", "A001", "key-1", older))
    assert row["wt_volume_after_mm3"] == 281.25 and row["tumour_volume_allowance_mm3"] is None
    assert row["lesions_vanished"] is None and row["tumour_in_brain"] is None
