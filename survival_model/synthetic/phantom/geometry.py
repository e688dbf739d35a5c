"""Grids, patient motion, affine sampling maps and separable random fields.

A :class:`Grid` maps voxel indices to physical points (patient LPS, mm) with SimpleITK's conventions and
a :class:`RigidMotion` moves the patient about the head centre (the package docstring states both);
``_grid_map`` composes them into an ``_AffineMap`` from voxel index to the patient-frame point shown
there, which is what every renderer samples.

Random fields are sums of 6-30 random cosines in physical coordinates, seeded from integers stored
in the dataclasses. On a grid a cosine of an affine function of the voxel index is separable, so a
field costs one small matrix product (``_field_on_map``) instead of a cosine per voxel and term.

``_Samples`` holds flat patient-frame points (a voxel block or scattered points) and evaluates fields at
them lazily, once per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from survival_model.synthetic.phantom.tables import F32, F64, FloatLike, IntArray, _float3

__all__ = ["Grid", "RigidMotion", "sample_motion"]

_IDENTITY9: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Grid and motion
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical (LPS, mm) space, with SimpleITK's conventions.

    ``size`` is ``(nx, ny, nz)``; ``spacing`` in mm; ``origin`` is the physical position (mm) of
    voxel index ``(0, 0, 0)``; ``direction`` is the row-major 3x3 direction cosine matrix ``D``
    (orthonormal; flips allowed). The physical point of index ``(i, j, k)`` is
    ``origin + D @ (spacing * [i, j, k])``. Arrays on the grid have numpy shape ``(nz, ny, nx)``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY9

    def __post_init__(self) -> None:
        if len(self.size) != 3:
            raise ValueError(f"size must have 3 values (nx, ny, nz), got {self.size!r}")
        size = tuple(int(v) for v in self.size)
        if any(v <= 0 for v in size) or any(int(v) != v for v in self.size):
            raise ValueError(f"size must be 3 positive integers, got {self.size!r}")
        spacing = _float3("spacing", self.spacing)
        if any(v <= 0 for v in spacing):
            raise ValueError(f"spacing must be positive (mm), got {spacing!r}")
        origin = _float3("origin", self.origin)
        if len(self.direction) != 9:
            raise ValueError(f"direction must have 9 values (row-major 3x3), got {len(self.direction)}")
        direction = tuple(float(v) for v in self.direction)
        d = np.array(direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(d)) or not np.allclose(d @ d.T, np.eye(3), atol=1e-5):
            raise ValueError(f"direction must be an orthonormal 3x3 matrix, got {direction!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def centred(
        cls,
        size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        direction: tuple[float, ...] = _IDENTITY9,
    ) -> Grid:
        """A grid whose centre (continuous index ``(size - 1) / 2``) is the physical origin."""
        probe = cls(size=size, spacing=spacing, direction=direction)
        half = (np.array(probe.size, dtype=np.float64) - 1.0) / 2.0
        origin = -(probe.direction_matrix() @ (np.array(probe.spacing) * half))
        return cls(
            size=probe.size,
            spacing=probe.spacing,
            origin=_float3("origin", origin.tolist()),
            direction=probe.direction,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy array shape ``(nz, ny, nx)``."""
        return (self.size[2], self.size[1], self.size[0])

    def direction_matrix(self) -> F64:
        """The 3x3 direction matrix ``D``."""
        return np.array(self.direction, dtype=np.float64).reshape(3, 3)

    def index_matrix(self) -> F64:
        """``D @ diag(spacing)``: physical displacement (mm) per unit of index ``(i, j, k)``."""
        return self.direction_matrix() * np.array(self.spacing, dtype=np.float64)[None, :]

    def index_to_physical(self, index: npt.ArrayLike) -> F64:
        """Physical points (mm, ``(..., 3)``) of continuous indices ``(..., 3)`` in ``(i, j, k)`` order."""
        idx = np.asarray(index, dtype=np.float64)
        out: F64 = np.array(self.origin) + idx @ self.index_matrix().T
        return out

    def physical_to_index(self, points: npt.ArrayLike) -> F64:
        """Continuous indices ``(i, j, k)`` of physical points (mm, ``(..., 3)``)."""
        pts = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.index_matrix())
        out: F64 = (pts - np.array(self.origin)) @ inv.T
        return out

    def physical_points(self, dtype: npt.DTypeLike = np.float32) -> F32 | F64:
        """Physical coordinates (mm) of every voxel centre, shape ``(nz, ny, nx, 3)`` (last axis x, y, z).

        ``dtype`` is float32 (default) or float64.
        """
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        nz, ny, nx = self.shape
        m = self.index_matrix()
        pts = (
            np.array(self.origin)
            + np.arange(nz, dtype=np.float64)[:, None, None, None] * m[:, 2]
            + np.arange(ny, dtype=np.float64)[None, :, None, None] * m[:, 1]
            + np.arange(nx, dtype=np.float64)[None, None, :, None] * m[:, 0]
        )
        if np.dtype(dtype) == np.dtype(np.float64):
            return pts
        return pts.astype(np.float32)


@dataclass(frozen=True)
class RigidMotion:
    """A rigid patient movement ``T(q) = R q + t`` about the head centre (the physical origin).

    ``rotation_deg`` are rotations about the x, y and z axes (degrees), composed as
    ``R = Rz @ Ry @ Rx``; ``translation_mm`` is ``t`` in mm. Rendering with a motion shows, at scanner
    point ``p``, the phantom at ``T^-1(p) = R^T (p - t)``.
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation_deg", _float3("rotation_deg", self.rotation_deg))
        object.__setattr__(self, "translation_mm", _float3("translation_mm", self.translation_mm))

    @classmethod
    def identity(cls) -> RigidMotion:
        """No movement."""
        return cls((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))

    def rotation_matrix(self) -> F64:
        """``R = Rz @ Ry @ Rx``."""
        ax, ay, az = (math.radians(v) for v in self.rotation_deg)
        cx, sx, cy, sy, cz, sz = (
            math.cos(ax),
            math.sin(ax),
            math.cos(ay),
            math.sin(ay),
            math.cos(az),
            math.sin(az),
        )
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=np.float64)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=np.float64)
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=np.float64)
        return rz @ ry @ rx

    def apply(self, points: npt.ArrayLike) -> F64:
        """Where patient points (mm, ``(..., 3)``) end up after the movement: ``R q + t``."""
        q = np.asarray(points, dtype=np.float64)
        out: F64 = q @ self.rotation_matrix().T + np.array(self.translation_mm)
        return out

    def inverse_apply(self, points: npt.ArrayLike) -> F64:
        """The patient point seen at scanner points (mm, ``(..., 3)``): ``R^T (p - t)``."""
        p = np.asarray(points, dtype=np.float64)
        out: F64 = (p - np.array(self.translation_mm)) @ self.rotation_matrix()
        return out


def sample_motion(
    rng: np.random.Generator, max_rotation_deg: float = 3.0, max_translation_mm: float = 3.0
) -> RigidMotion:
    """A random small movement: each rotation (deg) and translation (mm) uniform in ``[-max, max]``."""
    if not (math.isfinite(max_rotation_deg) and max_rotation_deg >= 0):
        raise ValueError(f"max_rotation_deg must be >= 0, got {max_rotation_deg!r}")
    if not (math.isfinite(max_translation_mm) and max_translation_mm >= 0):
        raise ValueError(f"max_translation_mm must be >= 0, got {max_translation_mm!r}")
    rot = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    tra = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return RigidMotion(_float3("rotation_deg", rot.tolist()), _float3("translation_mm", tra.tolist()))


# --------------------------------------------------------------------------------------------------
# Affine sampling maps and separable random fields
# --------------------------------------------------------------------------------------------------
class _AffineMap:
    """Patient-frame points of a voxel block: ``q(i, j, k) = c0 + A @ [i, j, k]``, shape ``(nz, ny, nx)``."""

    __slots__ = ("a", "c0", "shape")

    def __init__(self, c0: F64, a: F64, shape: tuple[int, int, int]) -> None:
        self.c0 = np.asarray(c0, dtype=np.float64)
        self.a = np.asarray(a, dtype=np.float64)
        self.shape = shape

    def coordinates(self) -> tuple[F32, F32, F32]:
        """x, y, z (mm) of every voxel, each of shape ``(nz, ny, nx)``, float32."""
        nz, ny, nx = self.shape
        ii = np.arange(nx, dtype=np.float64)
        jj = np.arange(ny, dtype=np.float64)
        kk = np.arange(nz, dtype=np.float64)
        out: list[F32] = []
        for d in range(3):
            row = self.a[d]
            plane = (self.c0[d] + row[1] * jj[:, None] + row[0] * ii[None, :]).astype(np.float32)
            col = (row[2] * kk).astype(np.float32)
            out.append(np.add(col[:, None, None], plane[None, :, :], dtype=np.float32))
        return out[0], out[1], out[2]

    def crop(self, box: tuple[int, int, int, int, int, int]) -> _AffineMap:
        """The sub-block ``[k0:k1, j0:j1, i0:i1]``."""
        k0, k1, j0, j1, i0, i1 = box
        c0 = self.c0 + self.a @ np.array([i0, j0, k0], dtype=np.float64)
        return _AffineMap(c0, self.a, (k1 - k0, j1 - j0, i1 - i0))

    def index_box(self, centre: F64, half_extent: F64) -> tuple[int, int, int, int, int, int] | None:
        """Voxel block covering the axis-aligned patient box ``centre +- half_extent`` (mm), clipped."""
        inv = np.linalg.inv(self.a)
        corners = (
            np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
            * half_extent
            + centre
        )
        idx = (corners - self.c0) @ inv.T
        lo = np.floor(idx.min(axis=0)).astype(int)
        hi = np.ceil(idx.max(axis=0)).astype(int) + 1
        nz, ny, nx = self.shape
        i0, j0, k0 = (max(int(v), 0) for v in lo)
        i1, j1, k1 = min(int(hi[0]), nx), min(int(hi[1]), ny), min(int(hi[2]), nz)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return (k0, k1, j0, j1, i0, i1)

    def ball_box(self, centre: F64, radius: float) -> tuple[int, int, int, int, int, int] | None:
        """Voxel block covering a patient-frame ball (tighter than its bounding box when rotated)."""
        inv = np.linalg.inv(self.a)
        idx = inv @ (centre - self.c0)
        half = radius * np.linalg.norm(inv, axis=1)
        lo = np.floor(idx - half).astype(int)
        hi = np.ceil(idx + half).astype(int) + 1
        nz, ny, nx = self.shape
        i0, j0, k0 = (max(int(v), 0) for v in lo)
        i1, j1, k1 = min(int(hi[0]), nx), min(int(hi[1]), ny), min(int(hi[2]), nz)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return (k0, k1, j0, j1, i0, i1)


def _grid_map(
    grid: Grid, motion: RigidMotion | None, offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> _AffineMap:
    """Map from grid index (shifted by ``offset`` voxels) to patient-frame points under ``motion``."""
    m = grid.index_matrix()
    o = np.array(grid.origin, dtype=np.float64) + m @ np.array(offset, dtype=np.float64)
    if motion is None:
        return _AffineMap(o, m, grid.shape)
    r = motion.rotation_matrix()
    t = np.array(motion.translation_mm, dtype=np.float64)
    return _AffineMap(r.T @ (o - t), r.T @ m, grid.shape)


@dataclass(frozen=True)
class _CosineField:
    """``f(p) = sum_m amp_m cos(k_m . p + phase_m)``; ``k`` in rad/mm, shape ``(M, 3)``."""

    k: F64
    phase: F64
    amp: F64

    def rms_wavenumber(self) -> float:
        """sqrt(mean |k|^2) (rad/mm): |f| / this approximates the distance to the zero set (mm)."""
        return float(np.sqrt(np.mean(np.sum(self.k**2, axis=1))))


def _make_field(
    rng: np.random.Generator,
    n: int,
    wavelength_mm: tuple[float, float],
    *,
    bounded: bool,
    anisotropy: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> _CosineField:
    """A random cosine field: unit variance, or (``bounded``) convex weights so ``|f| <= 1``."""
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    lam = rng.uniform(wavelength_mm[0], wavelength_mm[1], n)
    k = v * (2.0 * np.pi / lam)[:, None] * np.array(anisotropy)[None, :]
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    if bounded:
        w = rng.uniform(0.5, 1.0, n)
        amp = w / w.sum()
    else:
        amp = np.full(n, math.sqrt(2.0 / n))
    return _CosineField(k=k, phase=phase, amp=amp)


def _field_on_map(f: _CosineField, amap: _AffineMap) -> F32:
    """Evaluate a cosine field on an affine voxel block, separably: one (nz x 2M) @ (2M x ny*nx) product."""
    nz, ny, nx = amap.shape
    b = f.k @ amap.a  # phase increment per unit index, (M, 3)
    ph0 = f.k @ amap.c0 + f.phase
    ex = np.exp(1j * (b[:, 0:1] * np.arange(nx)[None, :]))
    ey = np.exp(1j * (b[:, 1:2] * np.arange(ny)[None, :]))
    ez = f.amp[:, None] * np.exp(1j * (ph0[:, None] + b[:, 2:3] * np.arange(nz)[None, :]))
    plane = (ey[:, :, None] * ex[:, None, :]).reshape(len(f.amp), ny * nx).astype(np.complex64)
    left = np.concatenate([ez.real, -ez.imag], axis=0).T.astype(np.float32)  # (nz, 2M)
    right = np.concatenate([plane.real, plane.imag], axis=0)  # (2M, ny*nx)
    out: F32 = (left @ right).reshape(nz, ny, nx)
    return out


def _field_at(f: _CosineField, x: FloatLike, y: FloatLike, z: FloatLike, chunk: int = 65536) -> F32:
    """Evaluate a cosine field at scattered points (flat arrays, mm)."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.float32)
    kt = f.k.T.astype(np.float32)
    ph = f.phase.astype(np.float32)
    amp = f.amp.astype(np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        arg = np.stack([x[s:e], y[s:e], z[s:e]], axis=1).astype(np.float32, copy=False) @ kt
        arg += ph
        np.cos(arg, out=arg)
        out[s:e] = arg @ amp
    return out


class _Samples:
    """Flat patient-frame points plus lazily evaluated head fields at (subsets of) them."""

    def __init__(self, x: F32, y: F32, z: F32, amap: _AffineMap | None) -> None:
        self.x = x
        self.y = y
        self.z = z
        self._amap = amap
        self._cache: dict[str, F32] = {}

    @classmethod
    def from_map(cls, amap: _AffineMap) -> _Samples:
        x, y, z = amap.coordinates()
        return cls(x.ravel(), y.ravel(), z.ravel(), amap)

    @classmethod
    def from_points(cls, points: npt.ArrayLike) -> _Samples:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        p32 = p.astype(np.float32)
        return cls(p32[:, 0].copy(), p32[:, 1].copy(), p32[:, 2].copy(), None)

    def field(self, name: str, f: _CosineField, sel: IntArray) -> F32:
        """Field ``f`` at the points ``sel`` (indices into the flat arrays)."""
        if self._amap is not None:
            if name not in self._cache:
                self._cache[name] = _field_on_map(f, self._amap).ravel()
            return self._cache[name][sel]
        return _field_at(f, self.x[sel], self.y[sel], self.z[sel])
