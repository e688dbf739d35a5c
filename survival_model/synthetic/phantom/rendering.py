"""Image formation: :func:`render_sequence` and :func:`render_case` (and :func:`sequence_seed`).

A *scene* is everything sequence-independent at one set of sample points (tissue codes, lesion layers,
texture gain); each sequence then reads its column of the intensity table (:mod:`.tables`) on the
scenes, so the sequences of one pose share one anatomy rendering.

Image formation (:func:`render_sequence`)
-----------------------------------------
Point sampling at voxel centres (averaging 3-7 sub-samples through the slice when the slice spacing
exceeds twice the smallest spacing), Gaussian PSF (FWHM in mm per axis, axes whose sigma is below 0.3
voxel skipped), multiplicative bias field (:class:`BiasField`: ``exp(strength * f)`` with ``f`` a
zero-mean smooth field normalised to peak 1 over a 100 mm ball about the isocentre and clipped to
[-1, 1]; it belongs to the scanner and does not move with the patient), scaling, then Rician noise:
the magnitude of the image plus complex Gaussian noise with sigma ``noise_sigma * WM * scale``, so air
has the Rayleigh floor of real magnitude images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from survival_model.synthetic.phantom.anatomy import Head, _Anatomy, _render_tissue_map
from survival_model.synthetic.phantom.bias import BiasField
from survival_model.synthetic.phantom.geometry import Grid, RigidMotion, _field_on_map, _grid_map
from survival_model.synthetic.phantom.lesions import Lesion, _LesionLayers, _render_lesions
from survival_model.synthetic.phantom.tables import (
    _LESION_INTENSITY,
    _T1C_COLUMN,
    _TEXTURE_AMPLITUDE,
    _TISSUE_INTENSITY,
    F32,
    INTRACRANIAL_TISSUES,
    LABEL_ET,
    LABEL_SNFH,
    SEQUENCES,
    U8,
    WM,
    IntArray,
    _check_positive,
    _check_sequence,
)

__all__ = ["render_case", "render_sequence", "sequence_seed"]


@dataclass
class _Scene:
    """Everything sequence-independent at one set of sample points (one sub-slice offset)."""

    tissue: U8
    lesions: _LesionLayers
    texture_gain: F32  # 1 + per-tissue texture
    lesion_index: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))


def _sub_offsets(grid: Grid) -> list[tuple[float, float, float]]:
    """Index offsets of the through-slice sub-samples (just the centre unless slices are thick)."""
    sp = np.array(grid.spacing)
    axis = int(np.argmax(sp))
    ratio = sp[axis] / sp.min()
    if ratio <= 2.0:
        return [(0.0, 0.0, 0.0)]
    n = min(7, math.ceil(ratio) | 1)
    out: list[tuple[float, float, float]] = []
    for t in np.linspace(-(n - 1) / (2 * n), (n - 1) / (2 * n), n):
        off = [0.0, 0.0, 0.0]
        off[axis] = float(t)
        out.append((off[0], off[1], off[2]))
    return out


def _build_scene(
    anat: _Anatomy,
    lesions: Sequence[Lesion],
    grid: Grid,
    motion: RigidMotion | None,
    offset: tuple[float, float, float],
) -> _Scene:
    amap = _grid_map(grid, motion, offset)
    tissue = _render_tissue_map(anat, amap)
    layers = _render_lesions(lesions, amap, tissue, with_modulators=True)
    gain = _field_on_map(anat.texture, amap)
    gain *= _TEXTURE_AMPLITUDE[tissue]
    gain += np.float32(1.0)
    lesion_index = np.flatnonzero(layers.labels.ravel())
    return _Scene(tissue=tissue, lesions=layers, texture_gain=gain, lesion_index=lesion_index)


def _scenes(anat: _Anatomy, lesions: Sequence[Lesion], grid: Grid, motion: RigidMotion | None) -> list[_Scene]:
    return [_build_scene(anat, lesions, grid, motion, off) for off in _sub_offsets(grid)]


def _object_intensity(scene: _Scene, column: int) -> F32:
    """Noise-free relative intensity of one sequence for one scene."""
    img: F32 = _TISSUE_INTENSITY[:, column][scene.tissue]
    img *= scene.texture_gain
    idx = scene.lesion_index
    if idx.size:
        flat = img.reshape(-1)
        lab = scene.lesions.labels.reshape(-1)[idx]
        tex = scene.lesions.texture.reshape(-1)[idx]
        edw = scene.lesions.edema_weight.reshape(-1)[idx]
        base = flat[idx]
        lesion_val = _LESION_INTENSITY[:, column][lab - 1]
        tumour_val = lesion_val * (np.float32(1.0) + tex)
        if column == _T1C_COLUMN:  # contrast enhancement: ET on t1c only (a gain of exactly 1 at z = 0)
            gain = np.float32(1.0) + scene.lesions.enhancement.reshape(-1)[idx]
            tumour_val *= np.where(lab == LABEL_ET, gain, np.float32(1.0))
        edema_val = base + edw * (lesion_val - base)
        flat[idx] = np.where(lab == LABEL_SNFH, edema_val, tumour_val)
    return img


def _psf_sigmas(grid: Grid, psf_fwhm_mm: float) -> list[float]:
    sig = [psf_fwhm_mm / 2.3548 / s for s in grid.spacing]  # x, y, z
    sig = [v if v >= 0.3 else 0.0 for v in sig]
    return [sig[2], sig[1], sig[0]]  # numpy axis order


def sequence_seed(seed: int, sequence: str) -> int:
    """The noise seed :func:`render_case` uses for ``sequence`` given the case ``seed``."""
    col = _check_sequence(sequence)
    return int(np.random.SeedSequence([int(seed), col]).generate_state(1)[0])


def _finish(
    scenes: Sequence[_Scene],
    grid: Grid,
    sequence: str,
    bias: BiasField | None,
    noise_sigma: float,
    seed: int,
    psf_fwhm_mm: float,
    scale: float,
) -> F32:
    col = _check_sequence(sequence)
    img = _object_intensity(scenes[0], col)
    if len(scenes) > 1:
        for sc in scenes[1:]:
            img += _object_intensity(sc, col)
        img /= np.float32(len(scenes))
    sig = _psf_sigmas(grid, psf_fwhm_mm)
    if any(s > 0 for s in sig):
        img = ndimage.gaussian_filter(img, sigma=sig, mode="nearest", truncate=3.0)
    if bias is not None and bias.strength > 0:
        img *= bias.evaluate(grid)
    img *= np.float32(scale)
    if noise_sigma > 0:
        rng = np.random.default_rng(int(seed))
        s = np.float32(noise_sigma * float(_TISSUE_INTENSITY[WM, col]) * scale)
        re = rng.standard_normal(img.shape, dtype=np.float32)
        re *= s
        re += img
        im = rng.standard_normal(img.shape, dtype=np.float32)
        im *= s
        img = np.sqrt(re * re + im * im)
    np.maximum(img, np.float32(0.0), out=img)
    return img.astype(np.float32, copy=False)


def _check_render_args(noise_sigma: float, psf_fwhm_mm: float, scale: float) -> None:
    if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
    if not (math.isfinite(psf_fwhm_mm) and psf_fwhm_mm >= 0):
        raise ValueError(f"psf_fwhm_mm must be >= 0 (mm), got {psf_fwhm_mm!r}")
    _check_positive("scale", scale)


def render_sequence(
    head: Head,
    lesions: Sequence[Lesion],
    grid: Grid,
    sequence: str,
    *,
    motion: RigidMotion | None = None,
    bias: BiasField | None = None,
    noise_sigma: float = 0.03,
    seed: int,
    psf_fwhm_mm: float = 1.0,
    scale: float = 1000.0,
) -> F32:
    """One MR image (float32, ``(nz, ny, nx)``, about 0..1500 for ``scale`` 1000), non-negative.

    ``sequence`` is one of :data:`SEQUENCES`; ``motion`` moves the patient (not the bias field);
    ``noise_sigma`` is the Rician noise sigma relative to white matter; ``seed`` seeds the noise;
    ``psf_fwhm_mm`` is the Gaussian PSF FWHM (mm, 0 to disable).
    """
    _check_sequence(sequence)
    _check_render_args(noise_sigma, psf_fwhm_mm, scale)
    scenes = _scenes(_Anatomy(head), lesions, grid, motion)
    return _finish(scenes, grid, sequence, bias, noise_sigma, seed, psf_fwhm_mm, scale)


def render_case(
    head: Head,
    lesions: Sequence[Lesion],
    grid: Grid,
    *,
    sequences: Sequence[str] = SEQUENCES,
    motions: Mapping[str, RigidMotion] | None = None,
    bias: Mapping[str, BiasField] | None = None,
    noise_sigma: float = 0.03,
    seed: int = 0,
    skull_stripped: bool = False,
    psf_fwhm_mm: float = 1.0,
    scale: float = 1000.0,
) -> dict[str, F32 | U8]:
    """Render several sequences plus ``"seg"`` (labels) for one patient on one grid.

    ``motions`` / ``bias`` map sequence names to a patient movement / bias field (missing: none). The
    segmentation is rendered with the motion of ``t1c`` (the reference sequence of BraTS-style
    annotation). Sequence ``s`` uses noise seed ``sequence_seed(seed, s)``, so a sequence's image does
    not depend on which other sequences are requested. Sequences sharing a motion share one anatomy
    rendering. With ``skull_stripped`` every image is zeroed outside its own brain mask (computed with
    that sequence's motion, so each stripped image is consistent with the anatomy it shows; with no
    motions all masks are identical, as in BraTS data); the segmentation is always inside it.
    """
    for s in sequences:
        _check_sequence(s)
    for name, mapping in (("motions", motions), ("bias", bias)):
        for key in mapping or {}:
            if key not in SEQUENCES:
                raise ValueError(f"{name} has unknown sequence {key!r}; expected keys among {SEQUENCES}")
    _check_render_args(noise_sigma, psf_fwhm_mm, scale)
    anat = _Anatomy(head)
    motions = motions or {}
    bias = bias or {}
    cache: dict[RigidMotion, list[_Scene]] = {}

    def scenes_for(motion: RigidMotion) -> list[_Scene]:
        if motion not in cache:
            cache[motion] = _scenes(anat, lesions, grid, None if motion == RigidMotion.identity() else motion)
        return cache[motion]

    centre_index = len(_sub_offsets(grid)) // 2
    out: dict[str, F32 | U8] = {}
    for s in sequences:
        motion = motions.get(s, RigidMotion.identity())
        scenes = scenes_for(motion)
        img = _finish(scenes, grid, s, bias.get(s), noise_sigma, sequence_seed(seed, s), psf_fwhm_mm, scale)
        if skull_stripped:
            img[~np.isin(scenes[centre_index].tissue, INTRACRANIAL_TISSUES)] = 0.0
        out[s] = img
    ref = scenes_for(motions.get("t1c", RigidMotion.identity()))
    out["seg"] = ref[centre_index].lesions.labels.copy()
    return out
