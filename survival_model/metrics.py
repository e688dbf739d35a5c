"""Survival metrics with bootstrap confidence intervals (scikit-survival does the scoring), and the bootstrap
draws of patients. A leaf module: training (the epoch choice) and evaluation both score with it.

Every risk score here follows one convention: higher = earlier death. Harrell's C-index comes from
``sksurv.metrics.concordance_index_censored``; its confidence interval is a percentile bootstrap over
patients (resampled with replacement; resamples without a comparable pair are skipped), because the
C-index has no simple closed-form variance. The oracle C-index scores the true risk of a simulated
cohort on the same patients: the ceiling for any model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.metrics import concordance_index_censored

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (``low``/``high`` NaN when not computed)."""

    value: float
    low: float
    high: float
    resamples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return format_ci(self.value, self.low, self.high)


def format_ci(value: Any, low: Any = None, high: Any = None) -> str:
    """``0.685 [0.549, 0.846]``; just the value without an interval, ``-`` without a value."""
    def finite(x: Any) -> bool:
        return x is not None and bool(np.isfinite(x))

    if not finite(value):
        return "-"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if finite(low) and finite(high) else f"{value:.3f}"


def percentile_interval(values: Any, confidence: float, minimum: int = 1) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap draws (NaN with fewer than ``minimum`` draws)."""
    draws = np.asarray(values, dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) < max(minimum, 1):
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return float(low), float(high)


def _arrays(risk: Any, time: Any, event: Any) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    r, t = np.asarray(risk, dtype=float).reshape(-1), np.asarray(time, dtype=float).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    if not (len(r) == len(t) == len(e)):
        raise ValueError(f"risk, time and event differ in length ({len(r)}, {len(t)}, {len(e)})")
    if not np.isfinite(r).all():
        raise ValueError("risk scores must be finite")
    return r, t, e


def harrell_c(risk: Any, time: Any, event: Any) -> float:
    """Harrell's C-index (ties in risk count one half); NaN when no pair is comparable."""
    r, t, e = _arrays(risk, time, event)
    if not e.any() or len(r) < 2:
        return float("nan")
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # no comparable pair: 0 / 0, reported as NaN
            return float(concordance_index_censored(e, t, r)[0])
    except ValueError:  # scikit-survival refuses some degenerate inputs outright
        return float("nan")


def bootstrap_c(risk: Any, time: Any, event: Any, *, resamples: int = 1000, confidence: float = 0.95,
                seed: int = 0) -> Estimate:
    """Harrell's C with a percentile bootstrap interval over patients."""
    r, t, e = _arrays(risk, time, event)
    value = harrell_c(r, t, e)
    if resamples <= 0 or np.isnan(value):
        return Estimate(value, float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(r), len(r))
        c = harrell_c(r[idx], t[idx], e[idx])
        if not np.isnan(c):
            draws.append(c)
    if not draws:
        return Estimate(value, float("nan"), float("nan"), 0)
    return Estimate(value, *percentile_interval(draws, confidence), len(draws))


def resample_indices(n: int, resamples: int, seed: int | np.random.Generator = 0) -> IntArray:
    """``(resamples, n)``: the patients drawn, ``n`` with replacement per draw (``rng.integers(0, n, (resamples,
    n))``; no draw for ``resamples`` 0)."""
    if n < 1 or resamples < 0:
        raise ValueError(f"need at least one patient and no negative number of resamples, got {n} and {resamples}")
    out: IntArray = np.random.default_rng(seed).integers(0, n, (resamples, n)).astype(np.int64)
    return out


def resample_counts(n: int, resamples: int, seed: int | np.random.Generator = 0) -> IntArray:
    """``(resamples, n)``: how often each of ``n`` patients is drawn in each draw of ``n`` with replacement
    (the counts of :func:`resample_indices`)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one patient and one resample, got {n} and {resamples}")
    return counts_of(resample_indices(n, resamples, seed), n)


def counts_of(indices: npt.ArrayLike, n: int) -> IntArray:
    """The counts of explicit resample indices ``(B, n_drawn)`` (or one resample ``(n_drawn,)``)."""
    idx = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    offsets = idx + n * np.arange(idx.shape[0])[:, None]
    counts: IntArray = np.bincount(offsets.ravel(), minlength=n * idx.shape[0]).reshape(idx.shape[0], n)
    return counts
