"""Radiomics with pyradiomics, per region and sequence, driven by the parameter file kept in the repository.

pyradiomics reads and validates ``RadiomicsParams.params_file`` itself (image types, feature classes,
bin width, ...); this module adds the regions (:data:`~survival_model.features.volumetric.REGION_LABELS`)
and sequences of ``RadiomicsParams``. Column names, lower case:

* ``rad_<region>_shape_<feature>`` (e.g. ``rad_wt_shape_meshvolume``): shape does not depend on the
  image, so it is computed once per region (``shape2d`` likewise when enabled), on the label map at its
  native resolution when there is one (``shape_labels``: small lesions keep their shape there), else on
  the label map of the images;
* ``rad_<region>_<seq>_<class>_<feature>`` (e.g. ``rad_wt_t1c_firstorder_mean``) on the original image,
  ``rad_<region>_<seq>_<image type>_<class>_<feature>`` on a filtered one (``log_sigma_1_0_mm_3d``,
  ``wavelet_llh``, ...). pyradiomics' ``diagnostics_*`` entries are dropped.

The column set depends only on the params and the parameter file, never on the data: it is the set
pyradiomics produces on a fixed synthetic test volume (computed once per process and settings). A
patient whose region is empty, or too small for pyradiomics (its ``minimumROIDimensions`` /
``minimumROISize`` checks), gets NaN for that region's columns; so does a sequence missing from the
patient's images. Non-finite feature values become NaN.

Speed: pyradiomics scans the whole image and mask in every call before cropping to the region. When only
the original image type is enabled and pyradiomics neither normalises nor resamples (the repository
default), the images are first cropped here to the region's bounding box plus ``padDistance`` voxels,
which gives the same features (a test checks it) several times faster. With filters (LoG, wavelet, ...),
normalisation or resampling the full images are passed, since those depend on voxels outside the region.

pyradiomics' own logger (``radiomics``) is set to WARNING: at INFO it logs every step of every call.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import radiomics
import SimpleITK as sitk
from radiomics import featureextractor

from survival_model.config import RadiomicsParams
from survival_model.errors import ConfigError
from survival_model.features.volumetric import read_label_map, read_sequence, region_mask
from survival_model.fingerprint import sha256_file, stable_hash

log = logging.getLogger(__name__)

#: The folder holding the ``survival_model`` package: relative ``params_file`` paths that do not exist
#: from the current directory are looked up here (the default is ``survival_model/resources/radiomics.yaml``).
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]

_SHAPE_CLASSES = ("shape", "shape2D")


def pyradiomics_version() -> str:
    """The installed pyradiomics version (e.g. ``3.1.4``), recorded with the features."""
    return str(radiomics.__version__).removeprefix("v")


def resolve_params_file(path: Path | None) -> Path:
    """The parameter file as an absolute path: ``None`` is the file shipped with the package; a
    relative path is tried from the current directory, then from the folder holding the package."""
    if path is None:
        return (_PACKAGE_PARENT / "survival_model" / "resources" / "radiomics.yaml").resolve()
    path = Path(path).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, _PACKAGE_PARENT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"radiomics parameter file not found: {path} (looked in {', '.join(str(c) for c in candidates)}); "
        "set features.radiomics.params_file to the pyradiomics YAML, e.g. survival_model/resources/radiomics.yaml"
    )


def radiomics_settings_digest(params: RadiomicsParams) -> str:
    """Digest of what determines the radiomics features: the parameter file's bytes, the regions, the
    sequences and the pyradiomics version (for cache keys)."""
    path = resolve_params_file(params.params_file)
    return stable_hash("radiomics", sha256_file(path), list(params.regions), list(params.sequences),
                       pyradiomics_version())


# --------------------------------------------------------------------------------------------------
# The extraction plan: pyradiomics settings and the data-independent list of feature names
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What pyradiomics does with one parameter file, and the feature keys it produces."""

    settings: dict[str, Any]
    image_types: dict[str, Any]
    features: dict[str, Any]
    shape_keys: tuple[str, ...]
    texture_keys: tuple[str, ...]

    @property
    def can_precrop(self) -> bool:
        """Whether features only depend on voxels near the region (see the module docstring)."""
        return (
            set(self.image_types) == {"Original"}
            and not self.settings.get("normalize", False)
            and self.settings.get("resampledPixelSpacing") is None
        )


def _quiet_pyradiomics() -> None:
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)


def _extractor(plan: _Plan, shape: bool) -> Any:
    """A fresh pyradiomics extractor with the plan's settings: shape classes only, or everything else."""
    extractor = featureextractor.RadiomicsFeatureExtractor()
    extractor.settings = copy.deepcopy(plan.settings)
    extractor.enabledImagetypes = {"Original": {}} if shape else copy.deepcopy(plan.image_types)
    extractor.enabledFeatures = {
        name: copy.deepcopy(features) for name, features in plan.features.items()
        if (name in _SHAPE_CLASSES) == shape
    }
    return extractor


def _test_volume() -> tuple[sitk.Image, sitk.Image]:
    """A fixed 40^3 (1 mm) volume with a textured ball (radius 9 mm), to list the features produced."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :40, :40]
    ball = ((z - 19.5) ** 2 + (y - 19.5) ** 2 + (x - 19.5) ** 2) <= 81.0
    image = sitk.GetImageFromArray((rng.normal(0.0, 1.0, ball.shape) + 2.0 * ball).astype(np.float32))
    mask = sitk.GetImageFromArray(ball.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


@lru_cache(maxsize=16)
def _plan(path: str, digest: str) -> _Plan:
    """Parse the parameter file with pyradiomics and list its feature keys (``digest`` keys the cache)."""
    _quiet_pyradiomics()
    try:
        parsed = featureextractor.RadiomicsFeatureExtractor(path)
    except Exception as exc:  # noqa: BLE001 - pykwalify raises its own SchemaError types
        raise ConfigError(f"radiomics parameter file {path} is not valid for pyradiomics: {exc}") from None
    plan = _Plan(parsed.settings, parsed.enabledImagetypes, parsed.enabledFeatures, (), ())
    image, mask = _test_volume()
    try:
        shape = _extractor(plan, shape=True).execute(image, mask) if _has_shape(plan) else {}
        texture = _extractor(plan, shape=False).execute(image, mask) if _has_texture(plan) else {}
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"radiomics parameter file {path}: pyradiomics fails on a test volume: {exc}") from None
    return _Plan(
        plan.settings, plan.image_types, plan.features,
        shape_keys=tuple(k for k in shape if not k.startswith("diagnostics_")),
        texture_keys=tuple(k for k in texture if not k.startswith("diagnostics_")),
    )


def _has_shape(plan: _Plan) -> bool:
    return any(name in _SHAPE_CLASSES for name in plan.features)


def _has_texture(plan: _Plan) -> bool:
    return any(name not in _SHAPE_CLASSES for name in plan.features)


#: pyradiomics' parameter-file validation (pykwalify) is not thread-safe: concurrent first calls from
#: worker threads failed with "string index out of range". Plans are built under this lock (once per
#: file and process; the lru_cache serves later calls).
_PLAN_LOCK = threading.Lock()


def _plan_for(params: RadiomicsParams) -> _Plan:
    path = resolve_params_file(params.params_file)
    with _PLAN_LOCK:
        return _plan(str(path), sha256_file(path))


def _column(key: str, prefix: str) -> str:
    """``original_firstorder_Mean`` -> ``<prefix>_firstorder_mean``; filtered types keep their name."""
    image_type, feature_class, feature = key.rsplit("_", 2)
    image_part = "" if image_type == "original" else image_type.lower().replace("-", "_") + "_"
    return f"{prefix}_{image_part}{feature_class.lower()}_{feature.lower()}"


def _shape_column(key: str, region: str) -> str:
    _, feature_class, feature = key.rsplit("_", 2)
    return f"rad_{region}_{feature_class.lower()}_{feature.lower()}"


def radiomics_columns(params: RadiomicsParams) -> list[str]:
    """The keys of :func:`radiomics_features`: they depend on ``params`` and the parameter file only."""
    plan = _plan_for(params)
    columns: list[str] = []
    for region in params.regions:
        columns += [_shape_column(k, region) for k in plan.shape_keys]
        for seq in params.sequences:
            columns += [_column(k, f"rad_{region}_{seq}") for k in plan.texture_keys]
    return columns


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def radiomics_features(images: dict[str, Path], seg: Path, params: RadiomicsParams,
                       native_seg: Path | None = None) -> dict[str, float]:
    """pyradiomics features of one patient for ``params.regions`` x ``params.sequences`` (see the module
    docstring for the names and the NaN rules). Images must lie on the label map's grid; shape features
    come from ``native_seg`` when given (the label map at its native resolution)."""
    labels = read_label_map(seg)
    loaded: dict[str, sitk.Image] = {s: read_sequence(images[s], labels, s) for s in params.sequences if s in images}
    shape_labels = read_label_map(native_seg) if native_seg is not None else None
    return radiomics_from_images(loaded, labels, params, shape_labels)


def radiomics_from_images(
    images: Mapping[str, sitk.Image], labels: sitk.Image, params: RadiomicsParams,
    shape_labels: sitk.Image | None = None,
) -> dict[str, float]:
    """:func:`radiomics_features` of images already read and checked (float32, on the label map's grid);
    shape features from ``shape_labels`` (any grid) when given, else from ``labels``."""
    plan = _plan_for(params)
    _quiet_pyradiomics()
    missing = [s for s in params.sequences if s not in images]
    if missing:
        log.warning("radiomics: sequence(s) %s absent; their columns are NaN", ", ".join(missing))
    shape_extractor = _extractor(plan, shape=True) if plan.shape_keys else None
    texture_extractor = _extractor(plan, shape=False) if plan.texture_keys else None
    pad = int(plan.settings.get("padDistance", 5))
    label_array = sitk.GetArrayViewFromImage(labels)
    shape_source = shape_labels if shape_labels is not None else labels
    shape_array = sitk.GetArrayViewFromImage(shape_source)
    out: dict[str, float] = {}
    for region in params.regions:
        mask_array = region_mask(label_array, region)
        region_out: dict[str, float] = {}
        box = _bounding_box(mask_array, pad) if plan.can_precrop else None
        mask = _mask_image(mask_array, labels, box)
        shape_mask_array = region_mask(shape_array, region)
        if shape_extractor is not None and shape_mask_array.any():
            shape_box = _bounding_box(shape_mask_array, pad) if plan.can_precrop else None
            shape_mask = _mask_image(shape_mask_array, shape_source, shape_box)
            shape_image = sitk.Cast(shape_mask, sitk.sitkFloat32)  # shape ignores intensities
            result = _execute(shape_extractor, shape_image, shape_mask, f"{region} shape")
            if result is not None:
                region_out.update({_shape_column(k, region): v for k, v in result.items()})
        for seq in params.sequences:
            if not mask_array.any() or texture_extractor is None or seq not in images:
                continue
            image = _crop(images[seq], box)
            result = _execute(texture_extractor, image, mask, f"{region} {seq}")
            if result is not None:
                region_out.update({_column(k, f"rad_{region}_{seq}"): v for k, v in result.items()})
        out.update(region_out)
    columns = radiomics_columns(params)
    extra = sorted(set(out) - set(columns))
    if extra:  # e.g. a filter output the test volume did not produce: keep the column set fixed
        log.warning("radiomics: dropping %d feature(s) not in the column set: %s", len(extra), extra[:5])
    return {c: _finite(out.get(c, math.nan)) for c in columns}


def _execute(extractor: Any, image: sitk.Image, mask: sitk.Image, what: str) -> dict[str, float] | None:
    """Run pyradiomics; ``None`` when it rejects the region (empty or too small: its ValueError)."""
    try:
        result = extractor.execute(image, mask, label=1)
    except ValueError as exc:
        log.info("radiomics: %s gives NaN: %s", what, str(exc).splitlines()[0][:200])
        return None
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def _bounding_box(mask: np.ndarray[Any, Any], pad: int) -> tuple[list[int], list[int]] | None:
    """(index, size) in SimpleITK (x, y, z) order of the mask's bounding box plus ``pad`` voxels."""
    if not mask.any():
        return None
    lo: list[int] = []
    hi: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lo.append(max(0, int(present[0]) - pad))
        hi.append(min(mask.shape[axis] - 1, int(present[-1]) + pad))
    index = [lo[2], lo[1], lo[0]]
    size = [hi[2] - lo[2] + 1, hi[1] - lo[1] + 1, hi[0] - lo[0] + 1]
    return index, size


def _crop(image: sitk.Image, box: tuple[list[int], list[int]] | None) -> sitk.Image:
    if box is None:
        return image
    index, size = box
    cropped: sitk.Image = sitk.RegionOfInterest(image, size, index)
    return cropped


def _mask_image(
    mask: np.ndarray[Any, Any], reference: sitk.Image, box: tuple[list[int], list[int]] | None
) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return _crop(image, box)
