"""Preprocess one patient: canonical ingested images in, one grid of corrected, normalised images out.

Order (each output image is interpolated exactly once)
------------------------------------------------------
1. **Reorient** every image, the label map and a given brain mask to ``params.orientation``
   (``DICOMOrient``: axes permuted and flipped, no interpolation).
2. **Target grid**: the reference's physical extent at ``target_spacing_mm`` in the declared
   orientation. The label map is resampled onto it right away (nearest neighbour or label-aware
   Gaussian: a label never changes value; :func:`resample_labels`) and checked (``qc_resampling``),
   because that is cheap and fails fast. A lesion (tumour-core component) smaller than the target voxels
   can vanish there: it is restored as the one target voxel holding its centroid, so the network and the
   intensity features still see it. The label map is also kept at its native resolution (the reference's
   own grid, reoriented, no interpolation): volumetric and shape features are measured there, so small
   metastases keep their volume, count and shape. The check therefore only guards the resampled map fed
   to the images' consumers against gross failures: the whole tumour vanishing (a label map that does
   not lie on its images), or a change beyond :func:`resampling_allowance`, the largest of the relative
   limit x the native volume (large tumours), a few target voxels and a share of the partial-volume band
   (native surface area x target spacing: small and irregular lesions; sizes from
   ``benchmarks/small_lesions.py``). QC ``resampling`` records what was compared.
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
9. **Write** ``<seq>.nii.gz`` (float32), ``seg.nii.gz`` (uint8 labels on the target grid),
   ``seg_native.nii.gz`` (uint8 labels on the reference's own grid, QC ``files["mask_native"]``) and
   ``brain_mask.nii.gz`` (uint8); ``.nii`` instead with ``compress_images: false``.

Each part is one step or a step per sequence (:func:`_steps`): a small function of the working state
(:class:`_State`: the images as the previous step left them, the label map and brain mask on each grid,
the transforms, the QC so far) that returns the next state, with the images it made and its QC entries.
:func:`_run` runs them in order, each in a named stage that times it (``timings_s``) and that a
``preprocess_failed`` message names: ``read`` and ``reorient`` (1), ``labels`` (2), ``head_mask`` and
``register_<seq>`` (3), ``brain_mask`` (4), ``n4_<seq>`` (5), ``resample`` (6), ``crop_normalise`` (7, 8)
and ``write`` (9).

Failures raise :class:`PatientDataError` with reason ``qc_brain_volume``, ``qc_registration``,
``qc_resampling`` or ``preprocess_failed`` (an ITK exception or unreadable input, with the first line
of its message and the stage it happened in).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from survival_model.config import Acquisition, PreprocessParams
from survival_model.errors import PatientDataError
from survival_model.imageio import ImageReadError, read_image, write_image
from survival_model.patient import Patient
from survival_model.preprocess import extractor, ops

log = logging.getLogger(__name__)

REASONS: dict[str, str] = {
    "qc_brain_volume": "the brain mask volume is outside preprocess.qc.brain_volume_ml",
    "qc_brain_mask_tumour": "the brain mask holds less of the tumour than preprocess.qc.min_tumour_in_brain",
    "qc_registration": "a sequence could not be registered to the reference (metric above the threshold)",
    "qc_resampling": "resampling the label map lost the whole tumour or changed its volume beyond preprocess.qc's "
                     "allowance",
    "preprocess_failed": "preprocessing raised an image-processing (ITK) error or could not read an input",
}


@dataclass(frozen=True)
class SiteImaging:
    """What a patient's site declares about its images: the sequence the label map is drawn on, and how the
    images were acquired (registered, bias-corrected, skull-stripped)."""

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


def preprocess_patient(patient: Patient, site: SiteImaging, params: PreprocessParams, out_dir: Path) -> dict[str, Any]:
    """Write ``<seq>.nii.gz`` (float32, normalised), ``seg.nii.gz`` (uint8 canonical labels),
    ``seg_native.nii.gz`` (the same at the reference's native resolution) and
    ``brain_mask.nii.gz`` (uint8; ``.nii`` with ``params.compress_images`` false) into ``out_dir``
    (an existing empty folder; the caller makes it atomic and content-keyed) and return the QC dict
    (JSON-serialisable, the written file names under ``"files"``). Raises :class:`PatientDataError`
    for QC failures and ITK errors.
    """
    if site.reference not in patient.images:
        raise ValueError(f"{patient.case_id}: reference {site.reference!r} is not among the images "
                         f"{sorted(patient.images)}")
    if not Path(out_dir).is_dir():
        raise ValueError(f"{patient.case_id}: output folder {out_dir} does not exist")
    stages = _Stages()
    try:
        return _run(patient, site, params, Path(out_dir), stages)
    except ImageReadError as exc:
        raise PatientDataError(
            "preprocess_failed",
            f"{patient.case_id}: preprocessing could not read an input image ({exc.detail}); "
            "re-run ingestion for this patient",
        ) from None
    except RuntimeError as exc:
        if not _is_itk_error(exc):
            raise
        raise PatientDataError(
            "preprocess_failed",
            f"{patient.case_id}: preprocessing failed in stage '{stages.current}': {_first_line(exc)}; "
            "check this patient's images (the other patients are not affected)",
        ) from None


def _run(patient: Patient, site: SiteImaging, params: PreprocessParams, out_dir: Path,
         stages: _Stages) -> dict[str, Any]:
    """Run the steps in order, each inside its stage, and return the QC record."""
    state = _start(patient, site, params, out_dir)
    for name, step in _steps(state.names, site):
        with stages.stage(name):
            state = step(state)
    log.info("%s: preprocessed %s onto %s voxels at %s mm (brain %.0f ml)", patient.case_id, ",".join(state.names),
             "x".join(map(str, state.brain_target.GetSize())), params.target_spacing_mm, state.qc["brain_volume_ml"])
    qc = {**state.qc, "timings_s": dict(stages.seconds)}
    return {key: qc[key] for key in _QC_KEYS}


def _steps(names: tuple[str, ...], site: SiteImaging) -> list[tuple[str, Step]]:
    """The steps in order, each with the stage it runs in (its key in ``timings_s``, and the stage a
    ``preprocess_failed`` message names). Per-sequence steps run once per sequence, reference first;
    ``resample`` and ``crop_normalise`` go one sequence at a time so that each input image is released as
    soon as its successor exists."""
    register = [] if site.acquisition.co_registered else [(f"register_{s}", partial(_register, s)) for s in names[1:]]
    return [
        ("read", _read),
        ("reorient", _reorient),
        ("labels", _labels),
        ("head_mask", _head_mask),
        *register,
        ("brain_mask", _brain_mask),
        *[(f"n4_{s}", partial(_n4, s)) for s in names],
        *[("resample", partial(_resample, s)) for s in names],
        ("crop_normalise", _crop),
        *[("crop_normalise", partial(_normalise, s)) for s in names],
        ("write", _write),
    ]


# --------------------------------------------------------------------------------------------------
# The working state
# --------------------------------------------------------------------------------------------------

Box = tuple[tuple[int, int, int], tuple[int, int, int]]

#: The QC record's keys, in the order :func:`preprocess_patient` returns them.
_QC_KEYS = ("site", "case_id", "reference", "sequences", "orientation", "acquisition", "grid", "crop",
            "brain_mask", "brain_volume_ml", "registration", "bias", "region_volumes_mm3",
            "tumour_volume_change", "resampling", "normalisation", "timings_s", "files")

#: QC records by sequence: a step's entry for its sequence joins the others' (:meth:`_State.with_qc`).
_PER_SEQUENCE = ("registration", "bias", "normalisation")


@dataclass(frozen=True)
class _State:
    """What the steps have made so far. A step returns a copy with the fields it made replaced and its QC
    entries added (``dataclasses.replace``); an empty ``sitk.Image()`` is an image not made yet."""

    patient: Patient
    site: SiteImaging
    params: PreprocessParams
    out_dir: Path
    #: The sequences, reference first.
    names: tuple[str, ...]
    #: Each sequence as the last step left it: read; reoriented (float32); bias-corrected on its own grid;
    #: resampled onto the target grid; cropped and normalised.
    images: Mapping[str, sitk.Image] = field(default_factory=dict)
    #: The label map on the reference's grid (read; reoriented, uint8): written as ``seg_native``, where
    #: volumetric and shape features are measured.
    seg: sitk.Image = field(default_factory=sitk.Image)
    #: The brain mask that came with the patient (read; reoriented, 0/1 uint8), if any.
    given_brain: sitk.Image | None = None
    #: The target grid (uncropped), and the label map on it (cropped by :func:`_crop`).
    target: sitk.Image = field(default_factory=sitk.Image)
    seg_target: sitk.Image = field(default_factory=sitk.Image)
    #: The isotropic grid the brain mask is made on and the reference on it; the head mask restricting
    #: the registration metric (None where the site declares the sequences co-registered).
    work: sitk.Image = field(default_factory=sitk.Image)
    reference_work: sitk.Image = field(default_factory=sitk.Image)
    head: sitk.Image | None = None
    #: Registration transform per sequence (None: the reference, or a co-registered site).
    transforms: Mapping[str, sitk.Transform | None] = field(default_factory=dict)
    #: The brain mask on the grid it was made on, and on the target grid (cropped by :func:`_crop`).
    brain: sitk.Image = field(default_factory=sitk.Image)
    brain_target: sitk.Image = field(default_factory=sitk.Image)
    #: The crop on the target grid: (index, size).
    box: Box = ((0, 0, 0), (0, 0, 0))
    #: The QC record so far.
    qc: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> sitk.Image:
        """The reference image as the last step left it (reoriented, until the N4 step)."""
        return self.images[self.site.reference]

    def with_qc(self, **entries: Any) -> dict[str, Any]:
        """The QC so far with ``entries`` added; an entry of a per-sequence record (``registration``,
        ``bias``, ``normalisation``: ``{sequence: record}``) joins the sequences already there."""
        qc = dict(self.qc)
        for key, value in entries.items():
            qc[key] = {**qc.get(key, {}), **value} if key in _PER_SEQUENCE else value
        return qc


#: A step: the working state in, the state with what the step made (and its QC entries) out.
Step = Callable[[_State], _State]


def _start(patient: Patient, site: SiteImaging, params: PreprocessParams, out_dir: Path) -> _State:
    """The state before the first step: the sequences in order, no transforms, the QC of the inputs."""
    names = (site.reference, *(s for s in sorted(patient.images) if s != site.reference))
    registration: dict[str, dict[str, Any]] = {site.reference: {"status": "reference"}}
    if site.acquisition.co_registered:
        registration |= {s: {"status": "skipped", "reason": "site declares the sequences co-registered"}
                         for s in names[1:]}
    qc = {"site": patient.site, "case_id": patient.case_id, "reference": site.reference, "sequences": list(names),
          "orientation": params.orientation, "acquisition": site.acquisition.model_dump(),
          "registration": registration}
    return _State(patient, site, params, out_dir, names, transforms=dict.fromkeys(names), qc=qc)


# --------------------------------------------------------------------------------------------------
# The steps, in the order they run
# --------------------------------------------------------------------------------------------------


def _read(state: _State) -> _State:
    """The images, the label map and any given brain mask as ingestion wrote them."""
    patient = state.patient
    return replace(
        state,
        images={s: read_image(patient.images[s]) for s in state.names},
        seg=read_image(patient.mask),
        given_brain=read_image(patient.brain_mask) if patient.brain_mask is not None else None,
    )


def _reorient(state: _State) -> _State:
    """Every image float32, the label map uint8, the given brain mask 0/1 uint8, all in ``params.orientation``."""
    orientation, given = state.params.orientation, state.given_brain
    return replace(
        state,
        images={s: ops.reorient(sitk.Cast(image, sitk.sitkFloat32), orientation) for s, image in state.images.items()},
        seg=ops.reorient(sitk.Cast(state.seg, sitk.sitkUInt8), orientation),
        given_brain=ops.reorient(sitk.Cast(given > 0, sitk.sitkUInt8), orientation) if given is not None else None,
    )


def _labels(state: _State) -> _State:
    """The target grid and the label map on it, the native label map kept for writing; QC
    ``region_volumes_mm3``, ``tumour_volume_change`` and ``resampling`` (``qc_resampling``)."""
    params = state.params
    target = ops.target_grid(state.reference, params.target_spacing_mm, params.orientation)
    seg_target, lesions = resample_labels(state.seg, target, params.label_interpolator)
    record = _check_labels(state.patient.case_id, state.seg, seg_target, lesions, params)
    return replace(state, target=target, seg_target=seg_target,
                   qc=state.with_qc(region_volumes_mm3=record.volumes, tumour_volume_change=record.change,
                                    resampling=record.as_qc()))


def _head_mask(state: _State) -> _State:
    """The brain mask's working grid, the reference on it, and (for registration) its head mask."""
    reference, params = state.reference, state.params
    work = ops.working_grid(reference, params.brain_mask_spacing_mm, params.orientation)
    reference_work = ops.resample_onto(reference, work)
    head = ops.head_mask(reference_work) if not state.site.acquisition.co_registered else None
    return replace(state, work=work, reference_work=reference_work, head=head)


def _register(sequence: str, state: _State) -> _State:
    """The transform of ``sequence`` to the reference; QC ``registration`` for it (``qc_registration``)."""
    euler, fit = ops.register_rigid(state.reference, state.images[sequence], state.params.registration, state.head)
    _check_registration(state.patient.case_id, sequence, state.site.reference, fit, state.params)
    return replace(state, transforms={**state.transforms, sequence: euler},
                   qc=state.with_qc(registration={sequence: fit.as_qc()}))


def _brain_mask(state: _State) -> _State:
    """The brain mask (tumour included) on its own grid and on the target grid; QC ``brain_mask`` and
    ``brain_volume_ml`` (``qc_brain_volume``), and the share of the tumour the mask held before the tumour
    was unioned in (``qc_brain_mask_tumour``)."""
    made, source = _made_brain_mask(state)
    made_target = ops.resample_mask(made, state.target)
    brain = made | sitk.Cast(ops.resample_onto(state.seg, made, None, "nearest") > 0, sitk.sitkUInt8)
    brain_target = made_target | sitk.Cast(state.seg_target > 0, sitk.sitkUInt8)
    volume_ml = ops.binary_volume_ml(brain_target)
    _check_brain(state.patient.case_id, volume_ml, source, state.params)
    tumour_inside = _tumour_inside(made_target, state.seg_target)
    _check_tumour_inside(state.patient.case_id, tumour_inside, source, state.params)
    record = {"source": source, "volume_ml": volume_ml, "tumour_inside": tumour_inside}
    return replace(state, brain=brain, brain_target=brain_target,
                   qc=state.with_qc(brain_mask=record, brain_volume_ml=volume_ml))


def _n4(sequence: str, state: _State) -> _State:
    """``sequence`` bias-corrected on its own grid (unless the site declares it corrected); QC ``bias`` for it."""
    image, transform = state.images[sequence], state.transforms[sequence]
    inverse = transform.GetInverse() if transform is not None else None
    native_mask = ops.resample_mask(state.brain, image, inverse)
    before = ops.nonuniformity(image, native_mask)
    if state.site.acquisition.bias_corrected:
        skipped = {"status": "skipped", "reason": "site declares the images bias-corrected", "nonuniformity": before}
        return replace(state, qc=state.with_qc(bias={sequence: skipped}))
    n4 = ops.n4_correct(image, native_mask, state.params.n4)
    record = {
        "status": "corrected",
        "nonuniformity_before": before,
        "nonuniformity_after": ops.nonuniformity(n4.corrected, native_mask),
        "field_p95_p5": ops.field_ratio(n4.log_field, native_mask),
        "shrink_factors": list(n4.shrink_factors),
        "iterations_last_level": n4.iterations_last_level,
        "convergence": n4.convergence,
    }
    return replace(state, images={**state.images, sequence: n4.corrected}, qc=state.with_qc(bias={sequence: record}))


def _resample(sequence: str, state: _State) -> _State:
    """``sequence`` on the target grid, through its registration transform (its only interpolation)."""
    image = ops.resample_onto(state.images[sequence], state.target, state.transforms[sequence],
                              state.params.image_interpolator)
    return replace(state, images={**state.images, sequence: image})


def _crop(state: _State) -> _State:
    """The crop box (the brain's bounding box plus the margin), the label map and brain mask cropped to it;
    QC ``grid`` and ``crop``. The sequences are cropped one by one by :func:`_normalise`."""
    box = ops.mask_bounding_box(state.brain_target, state.params.crop_margin_mm)
    brain = ops.crop_to_mask(state.brain_target, box)
    crop = {"index": list(box[0]), "size": list(box[1]), "margin_mm": state.params.crop_margin_mm,
            "uncropped_size": list(state.target.GetSize())}
    return replace(state, box=box, brain_target=brain, seg_target=ops.crop_to_mask(state.seg_target, box),
                   qc=state.with_qc(grid=_geometry(brain), crop=crop))


def _normalise(sequence: str, state: _State) -> _State:
    """``sequence`` cropped and normalised inside the brain; QC ``normalisation`` for it."""
    image, norm = ops.normalise(ops.crop_to_mask(state.images[sequence], state.box), state.brain_target,
                                state.params.clip_percentiles, state.seg_target)
    record = {"clip_low": norm.clip_low, "clip_high": norm.clip_high, "mean": norm.mean, "std": norm.std}
    return replace(state, images={**state.images, sequence: image}, qc=state.with_qc(normalisation={sequence: record}))


def _write(state: _State) -> _State:
    """The output files; QC ``files``."""
    compress, out_dir = state.params.compress_images, state.out_dir
    files = {s: output_file(s, compress) for s in state.names}
    seg_file = output_file("seg", compress)
    native_file = output_file("seg_native", compress)
    brain_file = output_file("brain_mask", compress)
    for s in state.names:
        write_image(state.images[s], out_dir / files[s], compress=compress)
    write_image(state.seg_target, out_dir / seg_file, compress=compress)
    write_image(state.seg, out_dir / native_file, compress=compress)
    write_image(state.brain_target, out_dir / brain_file, compress=compress)
    return replace(state, qc=state.with_qc(files={"sequences": files, "mask": seg_file, "mask_native": native_file,
                                                  "brain_mask": brain_file}))


# --------------------------------------------------------------------------------------------------
# QC checks and helpers of the steps
# --------------------------------------------------------------------------------------------------


def _geometry(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [round(float(v), 6) for v in image.GetSpacing()],
        "origin": [round(float(v), 4) for v in image.GetOrigin()],
        "direction": [round(float(v), 6) for v in image.GetDirection()],
    }


@dataclass(frozen=True)
class _LabelCheck:
    """What :func:`_check_labels` compared: region volumes on both grids, the whole tumour's change and
    the allowance it was held to, and the lesions (tumour-core components) that vanished on the target grid."""

    volumes: dict[str, dict[str, float]]
    change: float
    surface_mm2: float
    allowance_mm3: float
    lesions: Lesions

    def as_qc(self) -> dict[str, Any]:
        native, resampled = self.volumes["native"]["wt"], self.volumes["resampled"]["wt"]
        return {"wt_native_mm3": native, "wt_resampled_mm3": resampled,
                "wt_change_mm3": round(resampled - native, 4), "allowance_mm3": round(self.allowance_mm3, 4),
                "surface_mm2": round(self.surface_mm2, 4), "lesions_native": self.lesions.count,
                "lesions_vanished": self.lesions.vanished}


def surface_area_mm2(labels: sitk.Image) -> float:
    """Surface area (mm2) of the whole tumour (every non-zero label) of a label map: ITK's estimate from
    the label's boundary (``LabelShapeStatisticsImageFilter`` perimeter, Crofton-style), 0 without tumour."""
    array = sitk.GetArrayViewFromImage(labels) > 0
    box = ops.bounding_slices(array)
    if box is None:
        return 0.0
    sub = sitk.GetImageFromArray(np.pad(array[box], 1).astype(np.uint8))
    sub.SetSpacing(labels.GetSpacing())
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOn()
    shape.Execute(sub)
    return float(shape.GetPerimeter(1))


def resampling_allowance(native_mm3: float, surface_mm2: float, params: PreprocessParams) -> float:
    """The largest whole-tumour volume change (mm3) resampling may cause: the largest of the relative limit
    times the native volume, ``tumour_volume_band_voxels`` target voxels, and ``tumour_surface_band`` times
    the native surface area times the largest target spacing (see :class:`PreprocessQC`)."""
    qc, spacing = params.qc, params.target_spacing_mm
    return max(qc.max_tumour_volume_change * native_mm3,
               qc.tumour_volume_band_voxels * float(np.prod(spacing)),
               qc.tumour_surface_band * surface_mm2 * max(spacing))


@dataclass(frozen=True)
class Lesions:
    """The lesions of a native label map (tumour-core components, 26-connected) and those of them that
    had no tumour-core voxel on the target grid (each with its native volume, centroid and whether it
    was restored as one voxel)."""

    count: int
    vanished: list[dict[str, Any]]


def resample_labels(seg: sitk.Image, grid: sitk.Image, interpolator: ops.Interpolator) -> tuple[sitk.Image, Lesions]:
    """The label map on ``grid`` (``nearest`` or ``label_gaussian``), with every lesion kept.

    A lesion smaller than the target voxels can fall between their centres (nearest neighbour) or be
    smoothed away (label-aware Gaussian): no target voxel containing one of its voxels is NETC or ET. Such
    a lesion is restored as the one target voxel holding its centroid, with its most common label, so that
    the network and the intensity features still see every lesion; its volumes come from the native map.
    A lesion whose centroid is off the grid (a label map outside its image) stays lost.
    """
    seg_target = ops.resample_onto(seg, grid, None, interpolator)
    box = ops.bounding_slices(np.isin(sitk.GetArrayViewFromImage(seg), (1, 3)))
    if box is None:
        return seg_target, Lesions(0, [])
    z, y, x = box
    native = seg[x, y, z]  # the tumour core's bounding box (its physical place kept): components cannot leave it
    components = sitk.ConnectedComponent(sitk.Cast((native == 1) | (native == 3), sitk.sitkUInt8), True)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(components)
    labels = list(shape.GetLabels())
    core_target = sitk.Cast((seg_target == 1) | (seg_target == 3), sitk.sitkUInt8)
    back = sitk.GetArrayFromImage(ops.resample_onto(core_target, native, None, "nearest")) > 0
    ids = sitk.GetArrayViewFromImage(components)
    kept = set(np.unique(ids[back]).tolist())
    values = sitk.GetArrayViewFromImage(native)
    vanished = []
    for label in labels:
        if label in kept:
            continue
        centroid = shape.GetCentroid(label)
        index = seg_target.TransformPhysicalPointToIndex(centroid)
        inside = all(0 <= i < n for i, n in zip(index, seg_target.GetSize(), strict=True))
        if inside:
            counts = np.bincount(values[ids == label], minlength=4)
            seg_target[index] = int(np.argmax(counts))  # NETC or ET: the only labels of a tumour-core component
        vanished.append({"volume_mm3": round(shape.GetPhysicalSize(label), 4),
                         "centroid_mm": [round(v, 2) for v in centroid], "restored": inside})
    return seg_target, Lesions(len(labels), vanished)


def _check_labels(case: str, seg: sitk.Image, seg_target: sitk.Image, lesions: Lesions,
                  params: PreprocessParams) -> _LabelCheck:
    """Region volumes on the native reference grid and on the target grid, the whole tumour's relative
    change, and the allowance for it (:func:`resampling_allowance`); ``qc_resampling`` when the whole
    tumour vanished on the target grid or changed by more than the allowance. Lesions that vanished are
    recorded (features measure them on the native label map)."""
    native = ops.region_volumes_mm3(seg)
    resampled = ops.region_volumes_mm3(seg_target)
    wt_before, wt_after = native["wt"], resampled["wt"]
    change = abs(wt_after - wt_before) / wt_before if wt_before > 0 else 0.0
    surface = surface_area_mm2(seg) if wt_before > 0 else 0.0
    allowance = resampling_allowance(wt_before, surface, params)
    record = _LabelCheck({"native": native, "resampled": resampled}, change, surface, allowance, lesions)
    spacing = "x".join(f"{v:g}" for v in params.target_spacing_mm)
    geometry = "check that the label map was drawn on its reference image (same origin, spacing and direction)"
    if wt_before > 0 and wt_after == 0:
        raise PatientDataError(
            "qc_resampling",
            f"{case}: the whole tumour ({wt_before:.0f} mm3, {lesions.count} lesion(s)) vanished when the label map "
            f"was resampled to {spacing} mm (it lies outside the reference image's extent): the network and "
            f"intensity features would see no tumour; {geometry}",
        )
    if wt_before > 0 and abs(wt_after - wt_before) > allowance:
        raise PatientDataError(
            "qc_resampling",
            f"{case}: resampling the label map to {spacing} mm changed the whole-tumour volume by {change:.0%} "
            f"({wt_before:.0f} -> {wt_after:.0f} mm3), more than the allowed {allowance:.0f} mm3 (the largest of "
            f"{params.qc.max_tumour_volume_change:.0%} of the volume, preprocess.qc.tumour_volume_band_voxels and "
            f"tumour_surface_band x its {surface:.0f} mm2 surface x the spacing); {geometry}, or use a finer "
            "preprocess.target_spacing_mm",
        )
    if lesions.vanished:
        log.info("%s: %d of %d lesion(s) (%s mm3) had no voxel on the %s mm grid (restored as one voxel where on "
                 "the grid); volumetric and shape features measure them on the native label map", case,
                 len(lesions.vanished), lesions.count, ", ".join(f"{v['volume_mm3']:.0f}" for v in lesions.vanished),
                 spacing)
    return record


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


def _tumour_inside(brain: sitk.Image, seg: sitk.Image) -> float | None:
    """The share of the whole tumour's voxels inside ``brain`` (both on one grid); None without a tumour."""
    tumour = sitk.GetArrayViewFromImage(seg) > 0
    total = int(np.count_nonzero(tumour))
    if total == 0:
        return None
    return round(int(np.count_nonzero(tumour & (sitk.GetArrayViewFromImage(brain) > 0))) / total, 4)


def _check_tumour_inside(case: str, share: float | None, source: str, params: PreprocessParams) -> None:
    least = params.qc.min_tumour_in_brain
    if share is not None and share < least:
        raise PatientDataError(
            "qc_brain_mask_tumour",
            f"{case}: the brain mask ({source}) holds only {share:.0%} of the tumour, less than "
            f"{least:.0%} (preprocess.qc.min_tumour_in_brain): the mask missed part of the brain, or the "
            "label map is not on these images; check the label map's geometry, the given brain mask or "
            "preprocess.brain_mask",
        )


def _made_brain_mask(state: _State) -> tuple[sitk.Image, str]:
    """The brain mask on the grid it is made on (the reference's own or the working grid) and where it came
    from: the site's, the skull-stripped images' support, the trained extractor's or the morphological strip's."""
    if state.given_brain is not None:
        return state.given_brain, "given"
    images, reference = state.images, state.site.reference
    if state.site.acquisition.skull_stripped:
        return ops.nonzero_mask(images[reference]), "nonzero_support"
    settings = state.params.brain_mask
    if settings.method == "deepbet":
        return _extracted_brain_mask(state)
    t1_name = reference if reference in ("t1c", "t1n") else next(
        (s for s in ("t1c", "t1n") if s in images), reference)
    t1 = (state.reference_work if t1_name == reference
          else ops.resample_onto(images[t1_name], state.work, state.transforms[t1_name]))
    t2 = None
    if "t2w" in images and t1_name != "t2w":
        t2 = (state.reference_work if reference == "t2w"
              else ops.resample_onto(images["t2w"], state.work, state.transforms["t2w"]))
    source = f"skull_strip({t1_name}{'+t2w' if t2 is not None else ''})"
    return ops.compute_brain_mask(t1, t2), source


def _extracted_brain_mask(state: _State) -> tuple[sitk.Image, str]:
    """deepbet on the first sequence of ``brain_mask.sequences`` the patient has (the reference when none is),
    on an isotropic ``extractor_spacing_mm`` grid of that sequence's extent; the mask stays on that fine grid
    (a thick-slice reference grid would coarsen it), through the registration transform onto the same grid
    of the reference's extent for a registered sequence."""
    settings, orientation = state.params.brain_mask, state.params.orientation
    name = next((s for s in settings.sequences if s in state.images), state.site.reference)
    try:
        mask = extractor.extract_brain(state.images[name], settings, orientation)
    except extractor.BrainExtractionError as exc:
        raise PatientDataError("qc_brain_volume", f"{state.patient.case_id}: the brain extractor failed on "
                               f"{name}: {exc}; check the image, or try preprocess.brain_mask.method: "
                               "morphological") from None
    transform = state.transforms[name]
    if transform is not None:
        spacing = (settings.extractor_spacing_mm,) * 3
        mask = ops.resample_mask(mask, ops.target_grid(state.reference, spacing, orientation), transform)
    return mask, f"deepbet({name})"
