"""The scanner's receive-field inhomogeneity: :class:`BiasField` and :func:`sample_bias_field`.

A multiplicative field ``exp(strength * f)`` with ``f`` a zero-mean smooth field normalised to peak 1
over a 100 mm ball about the isocentre and clipped to [-1, 1]; it belongs to the scanner and does not
move with the patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from survival_model.synthetic.phantom.geometry import (
    Grid,
    RigidMotion,
    _CosineField,
    _field_at,
    _field_on_map,
    _grid_map,
    _make_field,
)
from survival_model.synthetic.phantom.tables import F32, _check_range

__all__ = ["BiasField", "sample_bias_field"]


@dataclass(frozen=True)
class BiasField:
    """Smooth multiplicative receive-field inhomogeneity, fixed to the scanner (not the patient).

    ``exp(strength * f(p))`` where ``f`` is a sum of ``n_components`` random cosines with wavelengths
    in ``wavelength_mm``, made zero-mean with peak 1 over a 100 mm ball about the isocentre and
    clipped to [-1, 1]: values lie in ``[exp(-strength), exp(strength)]`` (about 0.74..1.35 for 0.3).
    """

    seed: int
    strength: float = 0.3
    n_components: int = 4
    wavelength_mm: tuple[float, float] = (200.0, 500.0)

    def __post_init__(self) -> None:
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        _check_range("strength", self.strength, 0.0, 2.0)
        if not 1 <= int(self.n_components) <= 64:
            raise ValueError(f"n_components must be in 1..64, got {self.n_components!r}")
        lo, hi = (float(v) for v in self.wavelength_mm)
        if not (0 < lo <= hi):
            raise ValueError(f"wavelength_mm must satisfy 0 < lo <= hi, got {self.wavelength_mm!r}")
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "wavelength_mm", (lo, hi))

    @classmethod
    def identity(cls) -> BiasField:
        """A field that is 1 everywhere."""
        return cls(seed=0, strength=0.0)

    def _normalised(self) -> tuple[_CosineField, float, float]:
        f = _make_field(
            np.random.default_rng([self.seed, 11]), int(self.n_components), self.wavelength_mm, bounded=True
        )
        rng = np.random.default_rng(12345)
        ref = rng.standard_normal((2048, 3))
        ref *= (100.0 * rng.uniform(0, 1, 2048) ** (1 / 3) / np.linalg.norm(ref, axis=1))[:, None]
        r32 = ref.astype(np.float32)
        vals = _field_at(f, r32[:, 0], r32[:, 1], r32[:, 2]).astype(np.float64)
        mean = float(vals.mean())
        peak = float(np.max(np.abs(vals - mean)))
        return f, mean, max(peak, 1e-6)

    def evaluate(self, grid: Grid, motion: RigidMotion | None = None) -> F32:
        """The field on ``grid`` (float32, ``(nz, ny, nx)``).

        ``motion`` is accepted for call symmetry with the anatomy renderers and ignored: the field
        belongs to the scanner, so patient movement does not move it.
        """
        del motion
        if self.strength == 0.0:
            return np.ones(grid.shape, dtype=np.float32)
        f, mean, peak = self._normalised()
        amap = _grid_map(grid, None)
        g = (_field_on_map(f, amap) - np.float32(mean)) / np.float32(peak)
        np.clip(g, -1.0, 1.0, out=g)
        out: F32 = np.exp(np.float32(self.strength) * g).astype(np.float32, copy=False)
        return out


def sample_bias_field(rng: np.random.Generator, strength: float = 0.3) -> BiasField:
    """A random bias field with the given strength (approximate peak relative deviation)."""
    _check_range("strength", strength, 0.0, 2.0)
    return BiasField(seed=int(rng.integers(0, 2**31 - 1)), strength=float(strength))
