"""The feature stage's key: it names the label map the volumetric and shape features measure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from survival_model.config import FeaturesParams
from survival_model.features.stage import Features
from survival_model.patient import Patient


def test_the_key_changes_with_the_label_map_the_volumes_are_measured_on(tmp_path: Path) -> None:
    folder = tmp_path / "preprocess" / "site_a" / "A001" / "0123456789abcdef"
    resampled = Patient("site_a", "A001", folder, {"t1c": folder / "t1c.nii"}, folder / "seg.nii", None, "key-1")
    native = dataclasses.replace(resampled, native_mask=folder / "seg_native.nii")
    with_native, without = Features(native, FeaturesParams(), tmp_path), Features(resampled, FeaturesParams(), tmp_path)
    assert (with_native.label_source(), without.label_source()) == ("native", "resampled")
    assert with_native.key() != without.key()
    assert with_native.key() == Features(dataclasses.replace(native), FeaturesParams(), tmp_path).key()
