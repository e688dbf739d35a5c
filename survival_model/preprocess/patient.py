"""Preprocess one patient: canonical ingested images in, one grid of corrected, normalised images out.

Order (each output image is interpolated exactly once)
------------------------------------------------------
1. **Reorient** every image, the label map and a given brain mask to ``params.orientation``
   (``DICOMOrient``: axes permuted and flipped, no interpolation).
2. **Target grid**: the reference's physical extent at ``target_spacing_mm`` in the declared
   orientation. The label map is resampled onto it right away (nearest neighbour or label-aware
   Gaussian: a label never changes value) and the whole-tumour volume checked (``qc_resampling``),
   because that is cheap and fails fast.
3. **Registration** (sites with ``co_registered: false``): each non-reference sequence is registered
   rigidly to the reference (the sequence the label map is drawn on). Only the transform is kept; the
   Mattes MI before/after is recorded and checked (``qc_registration``). Registration comes before the
   brain mask so that the skull strip can use the aligned T2-weighted image; its metric is restricted
   to the reference's head mask instead.
4. **Brain mask** on the reference: the given one, else the non-zero support of a skull-stripped
   reference, else :func:`ops.compute_brain_mask` on an isotropic ``brain_mask_spacing_mm`` grid from
   the T1-weighted reference and the registered T2w. The tumour is always unioned in. Its volume on the
   target grid is checked (``qc_brain_volume``).
5. **N4** (sites with ``bias_corrected: false``): each sequence on its own native grid (so the fit sees
   the acquired voxels, not interpolated ones), inside the brain mask mapped onto that grid through
   the inverse registration transform; the field is fitted on a shrunk copy and divided out at full
   resolution. Low-frequency non-uniformity before/after and the field's p95/p5 are recorded.
6. **Resample** every corrected sequence once onto the target grid, through its registration
   transform (``image_interpolator``); the brain mask label-aware.
7. **Crop** every output to the brain's bounding box plus ``crop_margin_mm``.
8. **Normalise** each sequence inside the brain: clip limits, mean and SD from the normal-appearing brain
   (the brain without the segmented lesions), the normal brain clipped, lesions kept, z-score, zero outside.
9. **Write** ``<seq>.nii.gz`` (float32), ``seg.nii.gz`` (uint8 labels) and ``brain_mask.nii.gz`` (uint8);
   ``.nii`` instead with ``compress_images: false``.

Failures raise :class:`PatientDataError` with reason ``qc_brain_volume``, ``qc_registration``,
``qc_resampling`` or ``preprocess_failed`` (an ITK exception or unreadable input, with the first line
of its message and the stage it happened in).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from survival_model.config import Acquisition, PreprocessParams
from survival_model.errors import PatientDataError
from survival_model.imageio import ImageReadError, read_image, write_image
from survival_model.preprocess import ops

log = logging.getLogger(__name__)

REASONS: dict[str, str] = {
    "qc_brain_volume": "the brain mask volume is outside preprocess.qc.brain_volume_ml",
    "qc_registration": "a sequence could not be registered to the reference (metric above the threshold)",
    "qc_resampling": "resampling changed the whole-tumour volume more than preprocess.qc allows",
    "preprocess_failed": "preprocessing raised an image-processing (ITK) error or could not read an input",
}


@dataclass(frozen=True)
class PatientInput:
    """One patient's canonical (ingested) images and what the site says about them."""

    site: str
    case_id: str
    images: dict[str, Path]
    mask: Path
    brain_mask: Path | None
    reference: str
    acquisition: Acquisition


def output_file(name: str, compress: bool = True) -> str:
    """``<name>.nii.gz``, or ``<name>.nii`` uncompressed (ITK gzips any ``.nii.gz`` whatever its flag)."""
    return f"{name}.nii.gz" if compress else f"{name}.nii"


# --------------------------------------------------------------------------------------------------
# Stage bookkeeping
# --------------------------------------------------------------------------------------------------


@dataclass
class _Stages:
    """Wall time per stage, and the stage running now (named in failure messages)."""

    seconds: dict[str, float] = field(default_factory=dict)
    current: str = "start"

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def _first_line(exc: BaseException) -> str:
    """The informative line of an ITK exception (``ITK ERROR: Filter: what``), without object addresses."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    line = next((x for x in lines if "ERROR" in x), lines[0] if lines else type(exc).__name__)
    return re.sub(r"\(0x[0-9a-fA-F]+\)", "", line)[:300]


def _is_itk_error(exc: RuntimeError) -> bool:
    text = str(exc)
    return "itk" in text.lower() or "SimpleITK" in text


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def preprocess_patient(inp: PatientInput, params: PreprocessParams, out_dir: Path) -> dict[str, Any]:
    """Write ``<seq>.nii.gz`` (float32, normalised), ``seg.nii.gz`` (uint8 canonical labels) and
    ``brain_mask.nii.gz`` (uint8; ``.nii`` with ``params.compress_images`` false) into ``out_dir``
    (an existing empty folder; the caller makes it atomic and content-keyed) and return the QC dict
    (JSON-serialisable, the written file names under ``"files"``). Raises :class:`PatientDataError`
    for QC failures and ITK errors.
    """
    if inp.reference not in inp.images:
        raise ValueError(f"{inp.case_id}: reference {inp.reference!r} is not among the images {sorted(inp.images)}")
    if not Path(out_dir).is_dir():
        raise ValueError(f"{inp.case_id}: output folder {out_dir} does not exist")
    stages = _Stages()
    try:
        return _run(inp, params, Path(out_dir), stages)
    except ImageReadError as exc:
        raise PatientDataError(
            "preprocess_failed",
            f"{inp.case_id}: preprocessing could not read an input image ({exc.detail}); "
            "re-run ingestion for this patient",
        ) from None
    except RuntimeError as exc:
        if not _is_itk_error(exc):
            raise
        raise PatientDataError(
            "preprocess_failed",
            f"{inp.case_id}: preprocessing failed in stage '{stages.current}': {_first_line(exc)}; "
            "check this patient's images (the other patients are not affected)",
        ) from None


def _run(inp: PatientInput, params: PreprocessParams, out_dir: Path, stages: _Stages) -> dict[str, Any]:
    case, ref_name = inp.case_id, inp.reference
    names = [s for s in sorted(inp.images) if s != ref_name]
    names.insert(0, ref_name)
    with stages.stage("read"):
        raw = {s: read_image(inp.images[s]) for s in names}
        raw_seg = read_image(inp.mask)
        raw_brain = read_image(inp.brain_mask) if inp.brain_mask is not None else None
    with stages.stage("reorient"):
        images = {s: ops.reorient(sitk.Cast(img, sitk.sitkFloat32), params.orientation) for s, img in raw.items()}
        seg = ops.reorient(sitk.Cast(raw_seg, sitk.sitkUInt8), params.orientation)
        given_brain = (ops.reorient(sitk.Cast(raw_brain > 0, sitk.sitkUInt8), params.orientation)
                       if raw_brain is not None else None)
        del raw, raw_seg, raw_brain
    reference = images[ref_name]

    with stages.stage("labels"):
        target = ops.target_grid(reference, params.target_spacing_mm, params.orientation)
        seg_target = ops.resample_onto(seg, target, None, params.label_interpolator)
        volumes, tumour_change = _check_labels(case, seg, seg_target, params)

    with stages.stage("head_mask"):
        # Never finer than the reference's own voxel volume (its geometric-mean spacing): upsampling a
        # coarse or thick-slice image only adds voxels to process, not information.
        work_mm = max(params.brain_mask_spacing_mm, float(np.prod(reference.GetSpacing())) ** (1 / 3))
        work = ops.target_grid(reference, (work_mm,) * 3, params.orientation)
        reference_work = ops.resample_onto(reference, work)
        head = ops.head_mask(reference_work) if not inp.acquisition.co_registered else None

    transforms: dict[str, sitk.Transform | None] = dict.fromkeys(names)
    registration: dict[str, dict[str, Any]] = {ref_name: {"status": "reference"}}
    for s in names[1:]:
        if inp.acquisition.co_registered:
            registration[s] = {"status": "skipped", "reason": "site declares the sequences co-registered"}
            continue
        with stages.stage(f"register_{s}"):
            euler, fit = ops.register_rigid(reference, images[s], params.registration, head)
        transforms[s] = euler
        registration[s] = fit.as_qc()
        _check_registration(case, s, ref_name, fit, params)

    with stages.stage("brain_mask"):
        brain_src, source = _brain_mask(inp, images, transforms, given_brain, reference_work, work)
        brain_src = brain_src | sitk.Cast(ops.resample_onto(seg, brain_src, None, "nearest") > 0, sitk.sitkUInt8)
        brain_target = ops.resample_mask(brain_src, target) | sitk.Cast(seg_target > 0, sitk.sitkUInt8)
        brain_ml = ops.binary_volume_ml(brain_target)
        _check_brain(case, brain_ml, source, params)

    bias: dict[str, dict[str, Any]] = {}
    corrected: dict[str, sitk.Image] = {}
    for s in names:
        with stages.stage(f"n4_{s}"):
            transform = transforms[s]
            inverse = transform.GetInverse() if transform is not None else None
            native_mask = ops.resample_mask(brain_src, images[s], inverse)
            before = ops.nonuniformity(images[s], native_mask)
            if inp.acquisition.bias_corrected:
                corrected[s] = images[s]
                bias[s] = {"status": "skipped", "reason": "site declares the images bias-corrected",
                           "nonuniformity": before}
                continue
            n4 = ops.n4_correct(images[s], native_mask, params.n4)
            corrected[s] = n4.corrected
            bias[s] = {
                "status": "corrected",
                "nonuniformity_before": before,
                "nonuniformity_after": ops.nonuniformity(n4.corrected, native_mask),
                "field_p95_p5": ops.field_ratio(n4.log_field, native_mask),
                "shrink_factors": list(n4.shrink_factors),
                "iterations_last_level": n4.iterations_last_level,
                "convergence": n4.convergence,
            }
            images[s] = sitk.Image()  # release the uncorrected volume

    with stages.stage("resample"):
        resampled = {s: ops.resample_onto(corrected.pop(s), target, transforms[s], params.image_interpolator)
                     for s in names}

    with stages.stage("crop_normalise"):
        box = ops.mask_bounding_box(brain_target, params.crop_margin_mm)
        brain_out = ops.crop_to_mask(brain_target, box)
        seg_out = ops.crop_to_mask(seg_target, box)
        outputs: dict[str, sitk.Image] = {}
        normalisation: dict[str, dict[str, float]] = {}
        for s in names:
            outputs[s], norm = ops.normalise(ops.crop_to_mask(resampled.pop(s), box), brain_out,
                                             params.clip_percentiles, seg_out)
            normalisation[s] = {"clip_low": norm.clip_low, "clip_high": norm.clip_high,
                                "mean": norm.mean, "std": norm.std}

    with stages.stage("write"):
        files = {s: output_file(s, params.compress_images) for s in names}
        seg_file = output_file("seg", params.compress_images)
        brain_file = output_file("brain_mask", params.compress_images)
        for s in names:
            write_image(outputs[s], out_dir / files[s], compress=params.compress_images)
        write_image(seg_out, out_dir / seg_file, compress=params.compress_images)
        write_image(brain_out, out_dir / brain_file, compress=params.compress_images)

    log.info("%s: preprocessed %s onto %s voxels at %s mm (brain %.0f ml)", case, ",".join(names),
             "x".join(map(str, brain_out.GetSize())), params.target_spacing_mm, brain_ml)
    return {
        "site": inp.site,
        "case_id": case,
        "reference": ref_name,
        "sequences": names,
        "orientation": params.orientation,
        "acquisition": inp.acquisition.model_dump(),
        "grid": _geometry(brain_out),
        "crop": {"index": list(box[0]), "size": list(box[1]), "margin_mm": params.crop_margin_mm,
                 "uncropped_size": list(target.GetSize())},
        "brain_mask": {"source": source, "volume_ml": brain_ml},
        "brain_volume_ml": brain_ml,
        "registration": registration,
        "bias": bias,
        "region_volumes_mm3": volumes,
        "tumour_volume_change": tumour_change,
        "normalisation": normalisation,
        "timings_s": dict(stages.seconds),
        "files": {"sequences": files, "mask": seg_file, "brain_mask": brain_file},
    }


# --------------------------------------------------------------------------------------------------
# Steps with their QC checks
# --------------------------------------------------------------------------------------------------


def _geometry(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [round(float(v), 6) for v in image.GetSpacing()],
        "origin": [round(float(v), 4) for v in image.GetOrigin()],
        "direction": [round(float(v), 6) for v in image.GetDirection()],
    }


def _check_labels(case: str, seg: sitk.Image, seg_target: sitk.Image,
                  params: PreprocessParams) -> tuple[dict[str, dict[str, float]], float]:
    """Region volumes on the native reference grid and on the target grid, and the relative change of
    the whole tumour; ``qc_resampling`` when that change exceeds the threshold."""
    native = ops.region_volumes_mm3(seg)
    resampled = ops.region_volumes_mm3(seg_target)
    wt_before, wt_after = native["wt"], resampled["wt"]
    change = abs(wt_after - wt_before) / wt_before if wt_before > 0 else 0.0
    limit = params.qc.max_tumour_volume_change
    if wt_before > 0 and change > limit:
        spacing = "x".join(f"{v:g}" for v in params.target_spacing_mm)
        raise PatientDataError(
            "qc_resampling",
            f"{case}: resampling the label map to {spacing} mm changed the whole-tumour volume by "
            f"{change:.0%} ({wt_before:.0f} -> {wt_after:.0f} mm3), more than the allowed {limit:.0%} "
            "(preprocess.qc.max_tumour_volume_change); use a finer preprocess.target_spacing_mm or "
            "label_interpolator: label_gaussian, or check the tumour mask (tiny lesions vanish on coarse grids)",
        )
    return {"native": native, "resampled": resampled}, change


def _check_registration(case: str, sequence: str, reference: str, result: ops.RegistrationResult,
                        params: PreprocessParams) -> None:
    limit = params.qc.max_registration_metric
    if not np.isfinite(result.metric_after) or result.metric_after > limit:
        raise PatientDataError(
            "qc_registration",
            f"{case}: registering {sequence} to {reference} ended with Mattes mutual information "
            f"{result.metric_after:.3f} (before {result.metric_before:.3f}; lower is better), above the "
            f"threshold {limit:g} (preprocess.qc.max_registration_metric); check that {sequence} shows the "
            "same patient and field of view as the reference",
        )


def _check_brain(case: str, volume_ml: float, source: str, params: PreprocessParams) -> None:
    lo, hi = params.qc.brain_volume_ml
    if volume_ml <= 0 or not lo <= volume_ml <= hi:
        raise PatientDataError(
            "qc_brain_volume",
            f"{case}: the brain mask ({source}) is {volume_ml:.0f} ml, outside the allowed {lo:g}-{hi:g} ml "
            "(preprocess.qc.brain_volume_ml); check the field of view, the given brain mask or the site's "
            "acquisition.skull_stripped flag",
        )


def _brain_mask(
    inp: PatientInput,
    images: dict[str, sitk.Image],
    transforms: dict[str, sitk.Transform | None],
    given: sitk.Image | None,
    reference_work: sitk.Image,
    work: sitk.Image,
) -> tuple[sitk.Image, str]:
    """The brain mask on the grid it is made on (reference or working grid) and where it came from."""
    if given is not None:
        return given, "given"
    reference = images[inp.reference]
    if inp.acquisition.skull_stripped:
        return ops.nonzero_mask(reference), "nonzero_support"
    t1_name = inp.reference if inp.reference in ("t1c", "t1n") else next(
        (s for s in ("t1c", "t1n") if s in images), inp.reference)
    t1 = reference_work if t1_name == inp.reference else ops.resample_onto(images[t1_name], work, transforms[t1_name])
    t2 = None
    if "t2w" in images and t1_name != "t2w":
        t2 = reference_work if inp.reference == "t2w" else ops.resample_onto(images["t2w"], work, transforms["t2w"])
    source = f"skull_strip({t1_name}{'+t2w' if t2 is not None else ''})"
    return ops.compute_brain_mask(t1, t2), source
