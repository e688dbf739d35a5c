"""Brain metastases: :class:`Lesion`, its shape, its labels, its true volumes, and where it is placed.

A lesion is an enhancing tumour whose radius along each direction is a low-order random perturbation of
``radius_mm``, with an optional necrotic core inside it (leaving at least 1 mm of enhancing rim), and
edema reaching about ``edema_mm`` beyond it (modulated by a smooth field): into white matter, less far
into deep grey nuclei, at most 2 mm into cortex. :func:`render_labels` rasterises lesions into
BraTS-METS labels (0 background, 1 NETC, 2 SNFH, 3 ET; tumour beats edema, ET beats NETC);
:func:`lesion_summaries` and :func:`region_volumes` give the true volumes; :func:`sample_lesions` places
random metastases in a head's parenchyma.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from survival_model.synthetic.phantom.anatomy import Head, _Anatomy, _render_tissue_map
from survival_model.synthetic.phantom.geometry import (
    Grid,
    RigidMotion,
    _AffineMap,
    _CosineField,
    _field_at,
    _field_on_map,
    _grid_map,
    _make_field,
    _Samples,
)
from survival_model.synthetic.phantom.tables import (
    _EDEMA_EDGE_WEIGHT,
    _ENHANCEMENT_LIMIT,
    _ET_TEXTURE,
    _NETC_TEXTURE,
    DEEP_GM,
    ENHANCEMENT_AMPLITUDE,
    F32,
    F64,
    GM,
    LABEL_ET,
    LABEL_NETC,
    LABEL_SNFH,
    PARENCHYMA_TISSUES,
    U8,
    WM,
    _check_positive,
    _check_range,
    _float3,
)

__all__ = ["Lesion", "LesionSummary", "lesion_summaries", "region_volumes", "render_labels", "sample_lesions"]

logger = logging.getLogger(__name__)

# Lesion shape constants
_RIM_AMPLITUDE = 0.35  # radial perturbation of the tumour surface at rim_irregularity = 1
_CORE_AMPLITUDE = 0.25
_MIN_RIM_MM = 1.0  # thinnest enhancing rim around a necrotic core
_EDEMA_MODULATION = 0.35


# --------------------------------------------------------------------------------------------------
# Lesions, shapes and labels
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lesion:
    """A metastasis in the patient frame.

    ``centre_mm`` (LPS mm); ``radius_mm``: mean outer radius of the enhancing tumour; ``necrosis_fraction``
    in [0, 0.85]: necrotic-core radius / radius (0 = solid nodule); ``rim_irregularity`` in [0, 1]:
    amplitude of a low-order random radial perturbation (0 = sphere, 1 = lobulated, +-35 % radius);
    ``heterogeneity`` in [0, 1]: amplitude of the enhancing-tissue texture; ``edema_mm`` >= 0: how far
    edema reaches beyond the tumour (in white matter; cortex mostly spared); ``shape_seed`` seeds the
    lesion's random fields; ``enhancement`` in [-3, 3]: contrast enhancement in standard deviations of
    a latent (0 = the intensity table's ET on t1c), which multiplies the ET's t1c intensity by
    ``1 + ENHANCEMENT_AMPLITUDE * enhancement`` and changes nothing else (shape, labels, volumes).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    necrosis_fraction: float = 0.0
    rim_irregularity: float = 0.0
    heterogeneity: float = 0.0
    edema_mm: float = 0.0
    shape_seed: int = 0
    enhancement: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre_mm", _float3("centre_mm", self.centre_mm))
        _check_positive("radius_mm", self.radius_mm)
        _check_range("necrosis_fraction", self.necrosis_fraction, 0.0, 0.85)
        _check_range("rim_irregularity", self.rim_irregularity, 0.0, 1.0)
        _check_range("heterogeneity", self.heterogeneity, 0.0, 1.0)
        _check_range("enhancement", self.enhancement, -_ENHANCEMENT_LIMIT, _ENHANCEMENT_LIMIT)
        if not (math.isfinite(self.edema_mm) and self.edema_mm >= 0):
            raise ValueError(f"edema_mm must be >= 0, got {self.edema_mm!r}")
        if int(self.shape_seed) != self.shape_seed or self.shape_seed < 0:
            raise ValueError(f"shape_seed must be a non-negative integer, got {self.shape_seed!r}")
        for name in ("radius_mm", "necrosis_fraction", "rim_irregularity", "heterogeneity", "edema_mm", "enhancement"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "shape_seed", int(self.shape_seed))

    @property
    def max_radius_mm(self) -> float:
        """Largest distance (mm) of the tumour surface from the centre."""
        return self.radius_mm * (1.0 + _RIM_AMPLITUDE * self.rim_irregularity)

    @property
    def influence_radius_mm(self) -> float:
        """Largest distance (mm) from the centre at which the lesion can label anything (incl. edema)."""
        return self.max_radius_mm + self.edema_mm * (1.0 + _EDEMA_MODULATION) + 0.5


@dataclass(frozen=True)
class _LesionShape:
    rim: _CosineField  # on unit directions, |f| <= 1
    core: _CosineField
    texture: _CosineField  # mm, unit variance
    edema: _CosineField  # mm, |f| <= 1

    @classmethod
    def of(cls, lesion: Lesion) -> _LesionShape:
        rng = np.random.default_rng([lesion.shape_seed, 7])
        ang = (2.0 * np.pi / 3.5, 2.0 * np.pi / 1.5)  # |k| in [1.5, 3.5] rad per unit direction
        return cls(
            rim=_make_field(rng, 6, ang, bounded=True),
            core=_make_field(rng, 6, ang, bounded=True),
            texture=_make_field(rng, 16, (3.0, 8.0), bounded=False),
            edema=_make_field(rng, 8, (12.0, 30.0), bounded=True),
        )

    def surface_radius(self, lesion: Lesion, ux: F32, uy: F32, uz: F32) -> F32:
        """Tumour radius (mm) along unit directions."""
        bump = np.float32(_RIM_AMPLITUDE * lesion.rim_irregularity) * _field_at(self.rim, ux, uy, uz)
        out: F32 = np.float32(lesion.radius_mm) * (np.float32(1.0) + bump)
        return out

    def core_radius(self, lesion: Lesion, ux: F32, uy: F32, uz: F32, r_s: F32) -> F32:
        """Necrotic-core radius (mm) along unit directions, given the tumour radius there."""
        if lesion.necrosis_fraction <= 0:
            return np.zeros_like(r_s)
        bump = np.float32(_CORE_AMPLITUDE * lesion.rim_irregularity) * _field_at(self.core, ux, uy, uz)
        r_c = np.float32(lesion.necrosis_fraction) * r_s * (np.float32(1.0) + bump)
        out: F32 = np.clip(r_c, 0.0, r_s - np.float32(_MIN_RIM_MM)).astype(np.float32)
        return out


@dataclass
class _LesionLayers:
    """Per-voxel lesion rendering on a block: labels plus intensity modulators."""

    labels: U8
    texture: F32  # relative modulation of tumour tissue (already scaled by heterogeneity)
    edema_weight: F32  # 1 at the tumour surface down to _EDEMA_EDGE_WEIGHT at the edema edge
    enhancement: F32  # relative t1c gain - 1 of the tumour's enhancing tissue (its lesion's amplitude * z)


_PRIORITY_TO_LABEL = np.array([0, LABEL_SNFH, LABEL_NETC, LABEL_ET], dtype=np.uint8)
_PRIORITY_TO_LABEL.setflags(write=False)


def _rasterise_lesion(lesion: Lesion, sub: _AffineMap, tis: U8, with_modulators: bool) -> tuple[U8, F32, F32]:
    """One lesion on a block: priorities (0 none, 1 SNFH, 2 NETC, 3 ET), tumour texture, edema weight.

    Shapes are evaluated only inside the lesion's ball of influence; the modulators are empty arrays
    unless ``with_modulators``.
    """
    x, y, z = sub.coordinates()
    c = lesion.centre_mm
    dx, dy, dz = (
        (x - np.float32(c[0])).ravel(),
        (y - np.float32(c[1])).ravel(),
        (z - np.float32(c[2])).ravel(),
    )
    r = np.sqrt(dx * dx + dy * dy + dz * dz)
    n = r.shape[0]
    prio = np.zeros(n, dtype=np.uint8)
    tex = np.zeros(n if with_modulators else 0, dtype=np.float32)
    edw = np.zeros(n if with_modulators else 0, dtype=np.float32)
    ball = np.flatnonzero(r < np.float32(lesion.influence_radius_mm))
    rb = r[ball]
    inv = np.float32(1.0) / np.maximum(rb, np.float32(1e-6))
    ux, uy, uz = dx[ball] * inv, dy[ball] * inv, dz[ball] * inv
    shape = _LesionShape.of(lesion)
    r_s = shape.surface_radius(lesion, ux, uy, uz)
    inside = rb < r_s
    t_idx = ball[inside]
    r_c = shape.core_radius(lesion, ux[inside], uy[inside], uz[inside], r_s[inside])
    core = rb[inside] < r_c
    prio[t_idx] = np.where(core, np.uint8(2), np.uint8(3))
    if lesion.edema_mm > 0:
        beyond = rb - r_s
        cand = (~inside) & (beyond < np.float32(lesion.edema_mm * (1.0 + _EDEMA_MODULATION)))
        e_idx = ball[cand]
        out = beyond[cand]
        modulation = _field_on_map(shape.edema, sub).ravel()[e_idx]
        e_eff = np.float32(lesion.edema_mm) * (np.float32(1.0) + np.float32(_EDEMA_MODULATION) * modulation)
        t = tis.ravel()[e_idx]
        allowed = (
            (t == WM)
            | ((t == DEEP_GM) & (out < np.float32(0.6) * e_eff))
            | ((t == GM) & (out < np.minimum(np.float32(2.0), e_eff)))
        )
        edema = allowed & (out < e_eff)
        prio[e_idx[edema]] = 1
        if with_modulators:
            fade = out[edema] / np.maximum(e_eff[edema], np.float32(1e-3))
            edw[e_idx[edema]] = np.float32(1.0) - np.float32(1.0 - _EDEMA_EDGE_WEIGHT) * fade
    if with_modulators and t_idx.size:
        texture = _field_at(shape.texture, x.ravel()[t_idx], y.ravel()[t_idx], z.ravel()[t_idx])
        amp = np.where(core, np.float32(_NETC_TEXTURE), np.float32(_ET_TEXTURE))
        tex[t_idx] = np.float32(lesion.heterogeneity) * amp * np.clip(texture, -2.5, 2.5)
    return prio.reshape(sub.shape), tex, edw


def _render_lesions(lesions: Sequence[Lesion], amap: _AffineMap, tissue: U8, with_modulators: bool) -> _LesionLayers:
    """Rasterise lesions on ``amap`` (tissue codes on the same block restrict the edema)."""
    prio = np.zeros(amap.shape, dtype=np.uint8)  # 0 none, 1 SNFH, 2 NETC, 3 ET
    shape = amap.shape if with_modulators else (1, 1, 1)
    tex = np.zeros(shape, dtype=np.float32)
    edw = np.zeros(shape, dtype=np.float32)
    enh = np.zeros(shape, dtype=np.float32)
    for lesion in lesions:
        box = amap.ball_box(np.array(lesion.centre_mm), lesion.influence_radius_mm)
        if box is None:
            continue
        k0, k1, j0, j1, i0, i1 = box
        sub = amap.crop(box)
        p, t, w = _rasterise_lesion(lesion, sub, tissue[k0:k1, j0:j1, i0:i1], with_modulators)
        pview = prio[k0:k1, j0:j1, i0:i1]
        np.maximum(pview, p, out=pview)
        if with_modulators:
            tumour = p >= 2
            tview = tex[k0:k1, j0:j1, i0:i1]
            tview[tumour] = t.reshape(sub.shape)[tumour]
            if lesion.enhancement != 0.0:
                enh[k0:k1, j0:j1, i0:i1][tumour] = np.float32(ENHANCEMENT_AMPLITUDE * lesion.enhancement)
            wview = edw[k0:k1, j0:j1, i0:i1]
            np.maximum(wview, w.reshape(sub.shape), out=wview)
    return _LesionLayers(labels=_PRIORITY_TO_LABEL[prio], texture=tex, edema_weight=edw, enhancement=enh)


def render_labels(head: Head, lesions: Sequence[Lesion], grid: Grid, motion: RigidMotion | None = None) -> U8:
    """Canonical segmentation (uint8, ``(nz, ny, nx)``): 0 background, 1 NETC, 2 SNFH, 3 ET.

    Sampled at voxel centres (no partial volume). Tumour beats edema; ET beats NETC.
    """
    amap = _grid_map(grid, motion)
    tissue = _render_tissue_map(_Anatomy(head), amap)
    return _render_lesions(lesions, amap, tissue, with_modulators=False).labels


# --------------------------------------------------------------------------------------------------
# True volumes
# --------------------------------------------------------------------------------------------------
def _fibonacci_sphere(n: int) -> F64:
    i = np.arange(n, dtype=np.float64) + 0.5
    zc = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - zc * zc)
    phi = np.pi * (3.0 - math.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), zc], axis=1)


@dataclass(frozen=True)
class LesionSummary:
    """True per-lesion values: volumes in mm3 (analytic, by quadrature over directions)."""

    index: int
    centre_mm: tuple[float, float, float]
    radius_mm: float
    tumour_mm3: float  # ET + NETC
    et_mm3: float
    netc_mm3: float
    infratentorial: bool


def lesion_summaries(head: Head, lesions: Sequence[Lesion], *, n_directions: int = 4096) -> list[LesionSummary]:
    """Per-lesion true tumour, ET and NETC volumes (mm3) and whether the centre is infratentorial.

    Volumes integrate ``r(u)^3 / 3`` over directions, so they do not depend on any grid; tumours never
    overlap, so they are also the lesions' exact shares of the ET and NETC totals.
    """
    if n_directions < 100:
        raise ValueError(f"n_directions must be >= 100, got {n_directions}")
    u = _fibonacci_sphere(n_directions).astype(np.float32)
    w = 4.0 * math.pi / n_directions / 3.0
    out: list[LesionSummary] = []
    for idx, lesion in enumerate(lesions):
        shape = _LesionShape.of(lesion)
        r_s = shape.surface_radius(lesion, u[:, 0], u[:, 1], u[:, 2])
        r_c = shape.core_radius(lesion, u[:, 0], u[:, 1], u[:, 2], r_s)
        tumour = float(np.sum(r_s.astype(np.float64) ** 3) * w)
        netc = float(np.sum(r_c.astype(np.float64) ** 3) * w)
        infra = bool(head.is_infratentorial(np.array(lesion.centre_mm)))
        out.append(LesionSummary(idx, lesion.centre_mm, lesion.radius_mm, tumour, tumour - netc, netc, infra))
    return out


def region_volumes(head: Head, lesions: Sequence[Lesion], resolution_mm: float = 0.5) -> dict[str, float]:
    """True region volumes (mm3), rendered at ``resolution_mm`` over the union of lesion boxes only.

    Keys: ``ET``, ``NETC``, ``SNFH``, ``TC`` (tumour core = ET + NETC) and ``WT`` (whole tumour = all
    three). Boxes lie on one lattice anchored at the origin; a voxel inside several boxes is counted once.
    """
    _check_positive("resolution_mm", resolution_mm)
    h = float(resolution_mm)
    anat = _Anatomy(head)
    counts = np.zeros(4, dtype=np.int64)
    boxes: list[tuple[F64, F64]] = []  # integer lattice index ranges [lo, hi)
    for lesion in lesions:
        c = np.array(lesion.centre_mm)
        r = lesion.influence_radius_mm + h
        boxes.append((np.floor((c - r) / h), np.ceil((c + r) / h) + 1))
    max_voxels = 4_000_000
    for b, (lo, hi) in enumerate(boxes):
        n = (hi - lo).astype(int)
        slab = max(1, max_voxels // int(n[0] * n[1]))
        for z0 in range(0, int(n[2]), slab):
            z1 = min(int(n[2]), z0 + slab)
            c0 = (lo + np.array([0.0, 0.0, float(z0)])) * h
            amap = _AffineMap(c0, np.eye(3) * h, (z1 - z0, int(n[1]), int(n[0])))
            ii = lo[0] + np.arange(n[0])
            jj = lo[1] + np.arange(n[1])
            kk = lo[2] + np.arange(z0, z1)
            keep = np.ones(amap.shape, dtype=np.bool_)
            for plo, phi in boxes[:b]:
                inside = (
                    ((kk >= plo[2]) & (kk < phi[2]))[:, None, None]
                    & ((jj >= plo[1]) & (jj < phi[1]))[None, :, None]
                    & ((ii >= plo[0]) & (ii < phi[0]))[None, None, :]
                )
                keep &= ~inside
            # Anatomy matters only where some lesion's edema can reach.
            need = np.zeros(amap.shape, dtype=np.bool_)
            for lesion in lesions:
                if lesion.edema_mm > 0:
                    cx, cy, cz = (np.float32(v) for v in lesion.centre_mm)
                    dx = (ii * h).astype(np.float32) - cx
                    dy = (jj * h).astype(np.float32) - cy
                    dz = (kk * h).astype(np.float32) - cz
                    r2 = dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2
                    need |= r2 < np.float32(lesion.influence_radius_mm**2)
            tissue = _render_tissue_map(anat, amap, within=need & keep)
            labels = _render_lesions(lesions, amap, tissue, with_modulators=False).labels
            counts += np.bincount(labels[keep], minlength=4)[:4]
    vox = h**3
    et, netc, snfh = counts[LABEL_ET] * vox, counts[LABEL_NETC] * vox, counts[LABEL_SNFH] * vox
    return {
        "ET": float(et),
        "NETC": float(netc),
        "SNFH": float(snfh),
        "TC": float(et + netc),
        "WT": float(et + netc + snfh),
    }


# --------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------
def sample_lesions(
    head: Head,
    n: int,
    rng: np.random.Generator,
    *,
    radius_median_mm: float = 7.0,
    radius_sigma: float = 0.45,
    radius_range_mm: tuple[float, float] = (3.0, 25.0),
    infratentorial_fraction: float = 0.15,
    edema_ratio_median: float = 1.0,
    min_gap_mm: float = 3.0,
    max_attempts: int = 60,
) -> list[Lesion]:
    """Place ``n`` (1..15) metastases in the brain parenchyma, largest first.

    Radii are log-normal (median ``radius_median_mm``, log-sd ``radius_sigma``) clipped to
    ``radius_range_mm``; each lesion is infratentorial with probability ``infratentorial_fraction``;
    centres prefer the grey/white junction; the whole tumour (at its largest radius) fits inside the
    intracranial space, and tumours keep at least ``min_gap_mm`` apart (edemas may merge). Larger
    lesions are more often necrotic. Raises ValueError when a lesion cannot be placed in
    ``max_attempts`` batches of candidate positions.
    """
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= 15:
        raise ValueError(f"n must be an integer in 1..15, got {n!r}")
    _check_positive("radius_median_mm", radius_median_mm)
    if not (math.isfinite(radius_sigma) and radius_sigma >= 0):
        raise ValueError(f"radius_sigma must be >= 0, got {radius_sigma!r}")
    r_lo, r_hi = (float(v) for v in radius_range_mm)
    if not (0 < r_lo <= r_hi <= 40):
        raise ValueError(f"radius_range_mm must satisfy 0 < lo <= hi <= 40, got {radius_range_mm!r}")
    _check_range("infratentorial_fraction", infratentorial_fraction, 0.0, 1.0)
    _check_positive("edema_ratio_median", edema_ratio_median)
    if not (math.isfinite(min_gap_mm) and min_gap_mm >= 0):
        raise ValueError(f"min_gap_mm must be >= 0, got {min_gap_mm!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")

    anat = _Anatomy(head)
    radii = np.sort(np.clip(rng.lognormal(math.log(radius_median_mm), radius_sigma, int(n)), r_lo, r_hi))[::-1]
    placed: list[Lesion] = []
    directions = _fibonacci_sphere(64)
    half_box = anat.semi * np.array([0.9, 0.9, 0.9])
    for radius in radii:
        lesion = _sample_lesion_attributes(float(radius), rng, edema_ratio_median)
        want_infra = bool(rng.uniform() < infratentorial_fraction)
        centre = _place_lesion(anat, lesion, placed, want_infra, rng, directions, half_box, min_gap_mm, max_attempts)
        placed.append(
            Lesion(
                centre_mm=centre,
                radius_mm=lesion.radius_mm,
                necrosis_fraction=lesion.necrosis_fraction,
                rim_irregularity=lesion.rim_irregularity,
                heterogeneity=lesion.heterogeneity,
                edema_mm=lesion.edema_mm,
                shape_seed=lesion.shape_seed,
            )
        )
    return placed


def _sample_lesion_attributes(radius: float, rng: np.random.Generator, edema_ratio_median: float) -> Lesion:
    p_necrotic = 1.0 / (1.0 + math.exp(-(radius - 8.0) / 2.5))
    necrosis = float(rng.uniform(0.3, 0.75)) if rng.uniform() < p_necrotic else 0.0
    irregular = float(np.clip(rng.beta(2.0, 3.0) + 0.02 * (radius - 7.0), 0.0, 1.0))
    hetero = float(rng.uniform(0.1, 0.8))
    ratio = float(rng.lognormal(math.log(edema_ratio_median), 0.6))
    edema = float(np.clip(ratio * radius * (0.5 + 0.5 * min(radius / 8.0, 1.5)), 0.0, min(2.0 * radius + 4.0, 30.0)))
    return Lesion(
        centre_mm=(0.0, 0.0, 0.0),
        radius_mm=radius,
        necrosis_fraction=min(necrosis, 0.85),
        rim_irregularity=irregular,
        heterogeneity=hetero,
        edema_mm=edema,
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _place_lesion(
    anat: _Anatomy,
    lesion: Lesion,
    placed: Sequence[Lesion],
    want_infra: bool,
    rng: np.random.Generator,
    directions: F64,
    half_box: F64,
    min_gap_mm: float,
    max_attempts: int,
) -> tuple[float, float, float]:
    r_max = lesion.max_radius_mm
    batch = 2048
    for attempt in range(max_attempts):
        # Insist on the drawn compartment for the first half of the attempts, then accept either.
        strict = attempt < max_attempts // 2
        if attempt == max_attempts // 2:
            logger.debug(
                "lesion of radius %.1f mm does not fit the %s compartment; accepting either",
                lesion.radius_mm,
                "infratentorial" if want_infra else "supratentorial",
            )
        cand = rng.uniform(-1.0, 1.0, (batch, 3)) * half_box
        smp = _Samples.from_points(cand)
        tis, jd = anat.classify(smp, junction=True)
        ok = np.isin(tis, PARENCHYMA_TISSUES)
        if strict:
            infra = anat.head.is_infratentorial(cand)
            ok &= infra if want_infra else ~infra
        for other in placed:
            dist = np.linalg.norm(cand - np.array(other.centre_mm), axis=1)
            ok &= dist >= r_max + other.max_radius_mm + min_gap_mm
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        # The tumour (at its largest radius, plus 1 mm) must lie inside the intracranial space.
        pts = cand[idx, None, :] + (r_max + 1.0) * directions[None, :, :]
        psmp = _Samples.from_points(pts.reshape(-1, 3))
        depth = anat.intracranial_depth(psmp, np.arange(pts.shape[0] * pts.shape[1]))
        fits = np.all(depth.reshape(idx.size, -1) > 0, axis=1)
        idx = idx[fits]
        if idx.size == 0:
            continue
        weights = 0.25 + np.exp(-0.5 * (jd[idx].astype(np.float64) / 4.0) ** 2)
        pick = int(rng.choice(idx, p=weights / weights.sum()))
        return (float(cand[pick, 0]), float(cand[pick, 1]), float(cand[pick, 2]))
    raise ValueError(
        f"could not place a lesion of radius {lesion.radius_mm:.1f} mm (max {r_max:.1f} mm) after "
        f"{max_attempts} attempts; reduce the number or size of lesions or min_gap_mm"
    )
