"""Volumetric features and per-region intensity statistics, from the canonical label map (mm³, fast).

Regions (:data:`REGION_LABELS`) are sets of canonical labels (1 NETC, 2 SNFH, 3 ET): ``et`` {3},
``netc`` {1}, ``snfh`` {2}, ``tc`` (tumour core) {1, 3}, ``wt`` (whole tumour) {1, 2, 3}.

Volumes are voxel counts times the voxel volume (the product of the spacing, so anisotropic grids are
handled). Lesions are the connected components of the tumour core (NETC + ET: edema is not a lesion,
and edemas of neighbouring metastases often merge) with ``FeaturesParams.lesion_connectivity``
(26: voxels touching by a face, an edge or a corner belong to one lesion; 6: faces only) and a volume
of at least ``FeaturesParams.min_lesion_mm3`` (smaller components are specks: annotation noise, or
resampling debris; they still count in ``vol_tc_mm3``). The largest lesion's maximum diameter is its
Feret diameter from SimpleITK's ``LabelShapeStatisticsImageFilter``: the largest distance between the
centres of two of its border voxels, in mm (a single voxel has diameter 0).

Every function returns the same keys for every patient (absent regions give 0 volumes and NaN ratios or
statistics), so tables from different patients align.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from survival_model.config import FeaturesParams
from survival_model.errors import PatientDataError
from survival_model.imageio import ImageReadError, read_image
from survival_model.preprocess import ops

log = logging.getLogger(__name__)

#: Region name -> canonical label values it is made of.
REGION_LABELS: dict[str, tuple[int, ...]] = {
    "et": (3,),
    "netc": (1,),
    "snfh": (2,),
    "tc": (1, 3),
    "wt": (1, 2, 3),
}

#: The statistics of :func:`intensity_features`, in column order.
INTENSITY_STATS: tuple[str, ...] = ("mean", "std", "p10", "p50", "p90")

#: The keys of :func:`volumetric_features`, in column order.
VOLUMETRIC_COLUMNS: tuple[str, ...] = (
    "vol_et_mm3",
    "vol_netc_mm3",
    "vol_snfh_mm3",
    "vol_tc_mm3",
    "vol_wt_mm3",
    "vol_edema_tumour_ratio",
    "vol_necrosis_fraction",
    "vol_lesion_count",
    "vol_largest_lesion_mm3",
    "vol_largest_lesion_max_diameter_mm",
    "vol_largest_lesion_fraction",
)

#: Largest difference (mm; direction-cosine entries) between an image's grid and the label map's.
GRID_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4

BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------------------------------
# Reading and checking
# --------------------------------------------------------------------------------------------------


def read_label_map(seg: Path) -> sitk.Image:
    """Read a canonical label map (values 0..3) as UInt8; bad files raise :class:`PatientDataError`."""
    image = _read(Path(seg), "label map")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and (
        not np.isfinite(array).all() or not np.all(np.equal(np.mod(array, 1), 0))
    ):
        raise PatientDataError("unknown_label", f"label map {seg} has non-integer values; features need the "
                                                "canonical label map (0 background, 1 NETC, 2 SNFH, 3 ET)")
    values = np.unique(array)
    unknown = sorted(int(v) for v in values if int(v) not in (0, 1, 2, 3))
    if unknown:
        raise PatientDataError("unknown_label", f"label map {seg} has label value(s) {unknown}; features need "
                                                "the canonical labels 0 background, 1 NETC, 2 SNFH, 3 ET")
    if image.GetPixelID() != sitk.sitkUInt8:
        image = sitk.Cast(image, sitk.sitkUInt8)
    return image


def read_sequence(path: Path, labels: sitk.Image, name: str) -> sitk.Image:
    """Read a preprocessed image (as float32) and check that it lies on the label map's grid."""
    image = _read(Path(path), f"{name} image")
    check_same_grid(image, labels, f"{name} image {path}")
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def _read(path: Path, what: str) -> sitk.Image:
    if not path.exists():
        raise PatientDataError("unreadable_image", f"{what} {path} does not exist; re-run preprocessing")
    try:
        return read_image(path)
    except ImageReadError as exc:
        raise PatientDataError("unreadable_image", f"cannot read {what} {path}: {exc.detail}") from None


def check_same_grid(image: sitk.Image, labels: sitk.Image, what: str) -> None:
    """Raise :class:`PatientDataError` unless ``image`` has the label map's size, spacing, origin, direction."""
    same = (
        image.GetSize() == labels.GetSize()
        and np.allclose(image.GetSpacing(), labels.GetSpacing(), rtol=1e-5, atol=1e-6)
        and np.max(np.abs(np.subtract(image.GetOrigin(), labels.GetOrigin()))) <= GRID_TOLERANCE_MM
        and np.max(np.abs(np.subtract(image.GetDirection(), labels.GetDirection()))) <= DIRECTION_TOLERANCE
    )
    if not same:
        raise PatientDataError(
            "features_failed",
            f"{what} is not on the grid of the label map ({_describe(image)} vs {_describe(labels)}); "
            "features need preprocessed images resampled onto one grid: re-run preprocessing",
        )


def _describe(image: sitk.Image) -> str:
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.4g}" for s in image.GetSpacing())
    origin = ", ".join(f"{o:.3f}" for o in image.GetOrigin())
    return f"{size} voxels at {spacing} mm, origin ({origin})"


def voxel_volume_mm3(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


def region_mask(labels: npt.NDArray[Any], region: str) -> BoolArray:
    """Boolean mask of a region (see :data:`REGION_LABELS`) in a label array."""
    try:
        values = REGION_LABELS[region]
    except KeyError:
        raise ValueError(f"unknown region {region!r}; use one of {sorted(REGION_LABELS)}") from None
    mask: BoolArray = np.isin(labels, values)
    return mask


# --------------------------------------------------------------------------------------------------
# Volumetric features
# --------------------------------------------------------------------------------------------------


def volumetric_features(seg: Path, params: FeaturesParams) -> dict[str, float]:
    """Volumes, ratios and lesion statistics of one canonical label map (keys: :data:`VOLUMETRIC_COLUMNS`).

    * ``vol_{et,netc,snfh,tc,wt}_mm3``: voxel count x voxel volume.
    * ``vol_edema_tumour_ratio``: SNFH / TC; ``vol_necrosis_fraction``: NETC / TC (both NaN when TC is 0).
    * ``vol_lesion_count``: connected components of TC (NETC + ET) with ``params.lesion_connectivity``
      (26 or 6) whose volume is at least ``params.min_lesion_mm3``.
    * ``vol_largest_lesion_mm3`` and ``vol_largest_lesion_max_diameter_mm``: volume and Feret diameter
      (largest distance between border-voxel centres, mm) of the largest such lesion; 0 without lesions.
    * ``vol_largest_lesion_fraction``: share of the counted lesions' volume in the largest one (1 for a
      single lesion, small for many similar ones: the "dominant lesion" of radiosurgery planning);
      NaN without lesions.
    """
    return volumetric_from_image(read_label_map(seg), params)


def volumetric_from_image(labels: sitk.Image, params: FeaturesParams) -> dict[str, float]:
    """:func:`volumetric_features` of a label map already read (UInt8, canonical labels)."""
    array = sitk.GetArrayViewFromImage(labels)
    voxel = voxel_volume_mm3(labels)
    counts = np.bincount(array.ravel(), minlength=4)
    et, netc, snfh = (float(counts[v]) * voxel for v in (3, 1, 2))
    tc = et + netc
    wt = tc + snfh
    lesions = lesion_statistics(labels, params.lesion_connectivity, params.min_lesion_mm3)
    return {
        "vol_et_mm3": et,
        "vol_netc_mm3": netc,
        "vol_snfh_mm3": snfh,
        "vol_tc_mm3": tc,
        "vol_wt_mm3": wt,
        "vol_edema_tumour_ratio": snfh / tc if tc > 0 else math.nan,
        "vol_necrosis_fraction": netc / tc if tc > 0 else math.nan,
        **lesions,
    }


def lesion_statistics(labels: sitk.Image, connectivity: int, min_lesion_mm3: float) -> dict[str, float]:
    """Count the lesions (see the module docstring) and describe the largest one."""
    if connectivity not in (6, 26):
        raise ValueError(f"lesion connectivity must be 6 or 26, got {connectivity!r}")
    none = {"vol_lesion_count": 0.0, "vol_largest_lesion_mm3": 0.0,
            "vol_largest_lesion_max_diameter_mm": 0.0, "vol_largest_lesion_fraction": math.nan}
    array = sitk.GetArrayViewFromImage(labels)
    core = (array == 1) | (array == 3)
    box = ops.bounding_slices(core)
    if box is None:
        return none
    # Work on the tumour core's bounding box: components cannot cross its (all-background) outside,
    # and distances only need the spacing (the direction matrix is a rotation).
    sub = sitk.GetImageFromArray(core[box].astype(np.uint8))
    sub.SetSpacing(labels.GetSpacing())
    components = sitk.ConnectedComponent(sub, connectivity == 26)
    voxel = voxel_volume_mm3(labels)
    sizes = np.bincount(sitk.GetArrayViewFromImage(components).ravel())[1:]  # voxels of components 1..n
    volumes = sizes.astype(np.float64) * voxel
    # A relative tolerance, so that a component of exactly min_lesion_mm3 counts despite rounding.
    kept = np.flatnonzero(volumes >= min_lesion_mm3 * (1.0 - 1e-9))
    if kept.size == 0:
        return none
    largest = int(kept[np.argmax(volumes[kept])])  # ties: the first in raster order
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeFeretDiameterOn()
    shape.Execute(sitk.Cast(components == (largest + 1), sitk.sitkUInt8))
    return {
        "vol_lesion_count": float(kept.size),
        "vol_largest_lesion_mm3": float(volumes[largest]),
        "vol_largest_lesion_max_diameter_mm": float(shape.GetFeretDiameter(1)),
        "vol_largest_lesion_fraction": float(volumes[largest] / volumes[kept].sum()),
    }


# --------------------------------------------------------------------------------------------------
# Intensity statistics
# --------------------------------------------------------------------------------------------------


def intensity_columns(params: FeaturesParams) -> list[str]:
    """The keys of :func:`intensity_features` (they depend on ``params`` only)."""
    return [
        f"int_{region}_{seq}_{stat}"
        for region in params.intensity_regions
        for seq in params.intensity_sequences
        for stat in INTENSITY_STATS
    ]


def intensity_features(images: dict[str, Path], seg: Path, params: FeaturesParams) -> dict[str, float]:
    """``int_<region>_<seq>_{mean,std,p10,p50,p90}`` of the preprocessed images inside each region.

    For ``params.intensity_regions`` x ``params.intensity_sequences``; ``std`` is the population standard
    deviation (ddof 0), percentiles interpolate linearly (numpy's default). A region without voxels gives
    NaN; so does a sequence of ``params.intensity_sequences`` missing from ``images`` (logged), so the
    keys are the same for every patient. Images must lie on the label map's grid.
    """
    labels = read_label_map(seg)
    loaded: dict[str, sitk.Image] = {
        s: read_sequence(images[s], labels, s) for s in params.intensity_sequences if s in images
    }
    return intensity_from_images(loaded, labels, params)


def intensity_from_images(
    images: Mapping[str, sitk.Image], labels: sitk.Image, params: FeaturesParams
) -> dict[str, float]:
    """:func:`intensity_features` of images already read and checked."""
    missing = [s for s in params.intensity_sequences if s not in images]
    if missing:
        log.warning("intensity statistics: sequence(s) %s absent; their columns are NaN", ", ".join(missing))
    label_array = sitk.GetArrayViewFromImage(labels)
    masks = {region: region_mask(label_array, region) for region in params.intensity_regions}
    out: dict[str, float] = {}
    for region in params.intensity_regions:
        for seq in params.intensity_sequences:
            values = (
                sitk.GetArrayViewFromImage(images[seq])[masks[region]].astype(np.float64)
                if seq in images else np.empty(0)
            )
            out.update(_statistics(values, f"int_{region}_{seq}"))
    return out


def _statistics(values: npt.NDArray[np.float64], prefix: str) -> dict[str, float]:
    if values.size == 0:
        return {f"{prefix}_{stat}": math.nan for stat in INTENSITY_STATS}
    p10, p50, p90 = np.percentile(values, [10.0, 50.0, 90.0])
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std()),
        f"{prefix}_p10": float(p10),
        f"{prefix}_p50": float(p50),
        f"{prefix}_p90": float(p90),
    }

