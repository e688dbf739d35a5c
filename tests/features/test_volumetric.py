"""Volumetric features and intensity statistics on hand-made label maps and images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import FeaturesParams
from survival_model.errors import PatientDataError
from survival_model.features.volumetric import (
    INTENSITY_STATS,
    VOLUMETRIC_COLUMNS,
    intensity_columns,
    intensity_features,
    volumetric_features,
)


def write(array: np.ndarray, path: Path, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
          origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """Write a numpy (z, y, x) array as NIfTI with the given (x, y, z) spacing."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def labels_with_counts() -> np.ndarray:
    """A label map with known voxel counts: ET 60, NETC 8, SNFH 100 (one lesion)."""
    seg = np.zeros((12, 14, 16), dtype=np.uint8)
    seg[1:5, 1:6, 1:6] = 2        # 4*5*5 = 100 edema ...
    seg[6:9, 6:11, 6:10] = 3      # 3*5*4 = 60 ET
    seg[7:8, 7:9, 7:11] = 1       # 1*2*4 = 8 NETC, inside the ET box (overwrites 6 ET voxels, 2 new)
    return seg


def test_volumes_are_voxel_counts_times_anisotropic_voxel_volume(tmp_path: Path) -> None:
    seg = labels_with_counts()
    counts = np.bincount(seg.ravel(), minlength=4)
    spacing = (0.8, 1.2, 2.5)
    voxel = 0.8 * 1.2 * 2.5
    out = volumetric_features(write(seg, tmp_path / "seg.nii.gz", spacing), FeaturesParams(min_lesion_mm3=0))
    assert list(out) == list(VOLUMETRIC_COLUMNS)
    assert out["vol_et_mm3"] == pytest.approx(counts[3] * voxel)
    assert out["vol_netc_mm3"] == pytest.approx(counts[1] * voxel)
    assert out["vol_snfh_mm3"] == pytest.approx(counts[2] * voxel)
    assert out["vol_tc_mm3"] == pytest.approx((counts[1] + counts[3]) * voxel)
    assert out["vol_wt_mm3"] == pytest.approx((counts[1] + counts[2] + counts[3]) * voxel)
    assert out["vol_edema_tumour_ratio"] == pytest.approx(counts[2] / (counts[1] + counts[3]))
    assert out["vol_necrosis_fraction"] == pytest.approx(counts[1] / (counts[1] + counts[3]))
    assert out["vol_lesion_count"] == 1.0
    assert out["vol_largest_lesion_mm3"] == pytest.approx((counts[1] + counts[3]) * voxel)
    assert out["vol_largest_lesion_fraction"] == 1.0


def test_no_tumour_core_gives_nan_ratios_and_no_lesion(tmp_path: Path) -> None:
    seg = np.zeros((6, 6, 6), dtype=np.uint8)
    seg[1:4, 1:4, 1:4] = 2
    out = volumetric_features(write(seg, tmp_path / "seg.nii.gz"), FeaturesParams())
    assert out["vol_snfh_mm3"] == 27.0
    assert out["vol_tc_mm3"] == 0.0
    assert math.isnan(out["vol_edema_tumour_ratio"])
    assert math.isnan(out["vol_necrosis_fraction"])
    assert out["vol_lesion_count"] == 0.0
    assert out["vol_largest_lesion_mm3"] == 0.0
    assert out["vol_largest_lesion_max_diameter_mm"] == 0.0
    assert math.isnan(out["vol_largest_lesion_fraction"])


def corner_and_edge_touching_blobs() -> np.ndarray:
    """Three 2x2x2 ET cubes: A and B touch at one corner, B and C along one edge (no shared face)."""
    seg = np.zeros((10, 10, 10), dtype=np.uint8)
    seg[1:3, 1:3, 1:3] = 3   # A
    seg[3:5, 3:5, 3:5] = 3   # B: corner (2,2,2)-(3,3,3) with A
    seg[5:7, 5:7, 3:5] = 3   # C: shares the edge z=4->5, y=4->5 with B, x in 3..4
    return seg


@pytest.mark.parametrize(("connectivity", "expected"), [(26, 1), (6, 3)])
def test_lesion_count_depends_on_connectivity(tmp_path: Path, connectivity: int, expected: int) -> None:
    path = write(corner_and_edge_touching_blobs(), tmp_path / "seg.nii.gz")
    out = volumetric_features(path, FeaturesParams(lesion_connectivity=connectivity, min_lesion_mm3=0))  # type: ignore[arg-type]
    assert out["vol_lesion_count"] == expected
    assert out["vol_largest_lesion_mm3"] == (24.0 if expected == 1 else 8.0)


def test_minimum_size_drops_specks_but_they_stay_in_the_volume(tmp_path: Path) -> None:
    seg = np.zeros((20, 20, 20), dtype=np.uint8)
    seg[2:6, 2:6, 2:6] = 3        # 64 voxels x 0.5^3 = 8 mm3
    seg[10:12, 10:12, 10:12] = 1  # 8 voxels = 1 mm3
    seg[15, 15, 15] = 3           # 1 voxel = 0.125 mm3
    path = write(seg, tmp_path / "seg.nii.gz", (0.5, 0.5, 0.5))
    assert volumetric_features(path, FeaturesParams(min_lesion_mm3=0))["vol_lesion_count"] == 3
    out = volumetric_features(path, FeaturesParams(min_lesion_mm3=1.0))  # exactly 1 mm3 still counts
    assert out["vol_lesion_count"] == 2
    assert out["vol_largest_lesion_fraction"] == pytest.approx(8.0 / 9.0)
    out = volumetric_features(path, FeaturesParams(min_lesion_mm3=1.01))
    assert out["vol_lesion_count"] == 1
    assert out["vol_tc_mm3"] == pytest.approx((64 + 8 + 1) * 0.125)
    assert volumetric_features(path, FeaturesParams(min_lesion_mm3=100))["vol_lesion_count"] == 0


def test_largest_lesion_feret_diameter_of_a_box(tmp_path: Path) -> None:
    seg = np.zeros((12, 12, 12), dtype=np.uint8)
    seg[2:6, 3:6, 1:6] = 3   # z 4, y 3, x 5 voxels
    seg[9, 9, 9] = 3         # a smaller lesion
    spacing = (1.0, 2.0, 0.5)  # x, y, z
    out = volumetric_features(write(seg, tmp_path / "seg.nii.gz", spacing), FeaturesParams(min_lesion_mm3=0))
    expected = math.sqrt((4 * 1.0) ** 2 + (2 * 2.0) ** 2 + (3 * 0.5) ** 2)  # between corner voxel centres
    assert out["vol_largest_lesion_max_diameter_mm"] == pytest.approx(expected, rel=1e-6)
    assert out["vol_largest_lesion_mm3"] == pytest.approx(60 * 1.0)
    assert out["vol_lesion_count"] == 2


def test_largest_lesion_feret_diameter_of_a_ball(tmp_path: Path) -> None:
    z, y, x = np.mgrid[:21, :21, :21]
    radius = 6
    seg = (((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2) <= radius**2).astype(np.uint8) * 3
    out = volumetric_features(write(seg, tmp_path / "seg.nii.gz", (1.5, 1.5, 1.5)), FeaturesParams())
    assert out["vol_largest_lesion_max_diameter_mm"] == pytest.approx(2 * radius * 1.5, rel=1e-6)
    assert out["vol_largest_lesion_mm3"] == pytest.approx(seg.astype(bool).sum() * 1.5**3)


def make_images(tmp_path: Path, seg: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    images = {}
    for i, seq in enumerate(("t1c", "t2f")):
        array = (rng.normal(0.0, 1.0, seg.shape) + i).astype(np.float32)
        images[seq] = write(array, tmp_path / f"{seq}.nii.gz", spacing)
    return images


def test_intensity_statistics_match_numpy_and_empty_regions_are_nan(tmp_path: Path) -> None:
    seg = labels_with_counts()
    seg[seg == 1] = 3  # no NETC
    spacing = (0.8, 1.2, 2.5)
    seg_path = write(seg, tmp_path / "seg.nii.gz", spacing)
    images = make_images(tmp_path, seg, spacing)
    params = FeaturesParams(intensity_regions=["et", "netc", "wt"], intensity_sequences=["t1c", "t2f", "t2w"])
    out = intensity_features(images, seg_path, params)
    assert list(out) == intensity_columns(params)
    assert len(out) == 3 * 3 * len(INTENSITY_STATS)
    t2f = sitk.GetArrayFromImage(sitk.ReadImage(str(images["t2f"]))).astype(np.float64)
    for region, mask in (("et", seg == 3), ("wt", seg > 0)):
        values = t2f[mask]
        assert out[f"int_{region}_t2f_mean"] == pytest.approx(values.mean())
        assert out[f"int_{region}_t2f_std"] == pytest.approx(values.std())
        for q in (10, 50, 90):
            assert out[f"int_{region}_t2f_p{q}"] == pytest.approx(np.percentile(values, q))
    assert out["int_et_t2f_mean"] != pytest.approx(out["int_et_t1c_mean"])  # each sequence its own image
    assert all(math.isnan(out[f"int_netc_t1c_{s}"]) for s in INTENSITY_STATS)   # empty region
    assert all(math.isnan(out[f"int_wt_t2w_{s}"]) for s in INTENSITY_STATS)     # absent sequence
    assert all(math.isfinite(v) for k, v in out.items() if "_netc_" not in k and "_t2w_" not in k)


def test_image_off_the_label_grid_is_a_patient_error(tmp_path: Path) -> None:
    seg = labels_with_counts()
    seg_path = write(seg, tmp_path / "seg.nii.gz")
    image = write(np.zeros(seg.shape, np.float32), tmp_path / "t1c.nii.gz", origin=(0.0, 0.0, 2.0))
    with pytest.raises(PatientDataError, match="not on the grid of the label map") as info:
        intensity_features({"t1c": image}, seg_path, FeaturesParams(intensity_sequences=["t1c"]))
    assert info.value.reason == "features_failed"


def test_non_canonical_labels_are_refused(tmp_path: Path) -> None:
    seg = labels_with_counts()
    seg[0, 0, 0] = 4
    with pytest.raises(PatientDataError, match=r"label value\(s\) \[4\]"):
        volumetric_features(write(seg, tmp_path / "seg.nii.gz"), FeaturesParams())
    with pytest.raises(PatientDataError, match=r"absent\.nii\.gz does not exist"):
        volumetric_features(tmp_path / "absent.nii.gz", FeaturesParams())
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(PatientDataError, match="cannot read label map"):
        volumetric_features(tmp_path / "broken.nii.gz", FeaturesParams())
