"""A vectorised paired bootstrap of survival scores over test patients.

A bootstrap draw resamples the ``n`` test patients with replacement; it is fully described by how often each
patient was drawn. ``B`` draws are a ``(B, n)`` matrix of counts ``c``, and each score of a draw is a weighted
sum over patients or pairs of patients, as scikit-survival defines it:

- **Harrell's C** (``sksurv.metrics.concordance_index_censored``): pair ``(i, j)`` is comparable when ``i``
  died first (``event_i`` and ``t_i < t_j``, or ``t_i == t_j`` with ``j`` censored); it is concordant when
  ``risk_i > risk_j``, and a tie in risk (``|risk_i - risk_j| <= 1e-8``) counts one half.
  ``C_b = sum_ij c_bi c_bj K_ij S_ij / sum_ij c_bi c_bj K_ij``. Two copies of one patient are never
  comparable (``K_ii = 0``), exactly as in an explicitly resampled array.
- **Uno's C** (``concordance_index_ipcw``): the same pairs, each weighted by ``1 / G(t_i)^2`` where ``G`` is
  the Kaplan-Meier estimate of the censoring distribution of the *development* patients
  (scikit-survival's ``CensoringDistributionEstimator``, used here as is), and 0 for ``t_i >= tau``.
- **Integrated Brier score** (``integrated_brier_score``): per patient and grid time the IPCW squared error
  (``S^2 / G(t_i)`` for a death by then, ``(1 - S)^2 / G(t)`` for a patient still followed), averaged over
  the draw's patients and integrated (trapezoid) over the grid times strictly inside the draw's follow-up
  (what scikit-survival accepts).

For Uno's C and the Brier score, test patients are first censored at the development patients' last time
(``scores.within_follow_up``): the censoring distribution is undefined after it, and no comparison before it
changes. Harrell's C, which needs no weights, takes the test outcome as it is (as ``scores`` does). Uno's horizon is
``min(tau, last development time)``, as in ``scores.uno_c``. A draw where a score is undefined (no death, no
comparable pair, fewer than two grid times) gives NaN for that draw, as scikit-survival's refusal does for
that resample in ``scores``; so does every draw of a model whose risks or curves are not finite.

Why by hand: scikit-survival scores one sample per call, in a Python loop over deaths. Measured on this 2-core
machine (busy) at 118 test and 474 development patients: its three scores of one sample took 60 ms, so a gate
with 2000 resamples and two models would take about 4 minutes, and its measurement (``benchmarks/gate.py``,
thousands of gate decisions) days. As count-weighted pair sums the same 2000 draws of two models took 0.4 s
(a few ``(B, n) x (n, n)`` matrix products per model). The IPCW come from scikit-survival's own estimator.
The tests (``tests/evaluation/test_paired.py``) check that the full sample (all counts 1) gives
scikit-survival's values to 1e-9, ties in time and risk included, and that a resample's weighted value is
scikit-survival's value on the explicitly resampled arrays.

:func:`paired_scores` scores any number of models on the same draws; :meth:`PairedScores.difference` gives
the paired difference of two of them with its two-sided percentile interval and one-sided bounds
(:class:`Difference`), :func:`paired_differences` every model against a reference. One rule for every interval
of the evaluation (:data:`MIN_FINITE`): without a finite value in at least 90 % of the draws there is none (NaN),
so a handful of defined draws never reads as a result. The out-of-fold comparison (``oof``), the locked test
set's comparison (``compare``) and the promotion gate all draw their C-indices, integrated Brier scores and
paired differences from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.nonparametric import CensoringDistributionEstimator

from survival_model.evaluation.scores import Outcome, within_follow_up
from survival_model.metrics import resample_counts

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

METRICS = ("harrell_c", "uno_c", "integrated_brier")
#: Risks closer than this are a tie (scikit-survival's ``tied_tol``).
TIED_TOL = 1e-8
#: The share of draws in which a score (or a difference: both scores) must be defined for an interval; fewer:
#: no interval (NaN). One rule for every bootstrap interval of the evaluation (:func:`difference_of`).
MIN_FINITE = 0.9


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


def comparable_pairs(test: Outcome) -> BoolArray:
    """``K[i, j]``: ``i`` died before ``j`` was last seen (scikit-survival's comparable pairs)."""
    t, e = test.time, test.event
    later = t[None, :] > t[:, None]
    tied_censored = (t[None, :] == t[:, None]) & ~e[None, :]
    out: BoolArray = e[:, None] & (later | tied_censored)
    return out


def concordance(risk: FloatArray, tied_tol: float = TIED_TOL) -> FloatArray:
    """``S[i, j]``: 1 when ``risk_i > risk_j`` (beyond ``tied_tol``), 0.5 for a tie, else 0."""
    diff = risk[:, None] - risk[None, :]
    out: FloatArray = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float))
    return out


def weighted_pair_ratio(counts: FloatArray, numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """``sum_ij c_i c_j N_ij / sum_ij c_i c_j D_ij`` per draw (NaN where the denominator is 0)."""
    num = np.einsum("bi,bi->b", counts @ numerator, counts)
    den = np.einsum("bi,bi->b", counts @ denominator, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


class CensoringSurvival:
    """G(t): the development patients' censoring Kaplan-Meier (scikit-survival's ``CensoringDistributionEstimator``,
    fitted once; raises scikit-survival's ``ValueError`` where it refuses the outcome or a time)."""

    def __init__(self, train: Outcome) -> None:
        self._estimator = CensoringDistributionEstimator().fit(train.surv())

    def __call__(self, times: FloatArray) -> FloatArray:
        out: FloatArray = np.asarray(self._estimator.predict_proba(np.asarray(times, dtype=float)), dtype=float)
        return out


def uno_weights(censoring: CensoringSurvival, test: Outcome, horizon: float) -> tuple[FloatArray, BoolArray]:
    """Per test patient (already within the development follow-up): ``1 / G(t_i)^2`` for a death before
    ``horizon`` (0 otherwise), and whether that weight is undefined (``G(t_i) = 0``: scikit-survival refuses
    any sample holding such a patient)."""
    weight = np.zeros(len(test.time))
    undefined = np.zeros(len(test.time), dtype=bool)
    used = test.event & (test.time < horizon)
    if used.any():
        g = censoring(test.time[used])
        undefined[used] = g == 0
        weight[used] = np.where(g > 0, 1.0 / np.where(g > 0, g, 1.0) ** 2, 0.0)
    return weight, undefined


def brier_losses(censoring: CensoringSurvival, test: Outcome, survival: FloatArray, grid: FloatArray) -> FloatArray:
    """``(n, len(grid))``: each test patient's IPCW squared error at each grid time (scikit-survival's terms,
    ``G = 0`` read as an infinite inverse weight, i.e. a zero term)."""
    g_grid = censoring(grid)
    g_grid[g_grid == 0] = np.inf
    g_time = censoring(test.time)
    g_time[g_time == 0] = np.inf
    case = (test.time[:, None] <= grid[None, :]) & test.event[:, None]
    control = test.time[:, None] > grid[None, :]
    out: FloatArray = (np.square(survival) * case.astype(int) / g_time[:, None]
                       + np.square(1.0 - survival) * control.astype(int) / g_grid[None, :])
    return out


def weighted_integrated_brier(counts: FloatArray, test: Outcome, losses: FloatArray, grid: FloatArray) -> FloatArray:
    """The integrated Brier score per draw over the grid times strictly inside the draw's follow-up (NaN with
    fewer than two such times or no death in the draw)."""
    n = counts.sum(axis=1)
    brier = (counts @ losses) / n[:, None]
    order = np.argsort(test.time, kind="stable")
    present = counts[:, order] > 0
    first = test.time[order][np.argmax(present, axis=1)]
    last = test.time[order][len(order) - 1 - np.argmax(present[:, ::-1], axis=1)]
    inside = (grid[None, :] > first[:, None]) & (grid[None, :] < last[:, None])
    segment = inside[:, :-1] & inside[:, 1:]  # inside is contiguous: a segment joins two inside times
    area = (segment * np.diff(grid)[None, :] * (brier[:, :-1] + brier[:, 1:]) / 2).sum(axis=1)
    k = inside.sum(axis=1)
    lo = np.argmax(inside, axis=1)
    span = grid[np.clip(lo + k - 1, 0, None)] - grid[lo]
    deaths = counts @ test.event.astype(float)
    ok = (k >= 2) & (deaths > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(ok, area / np.where(ok, span, 1.0), np.nan)
    return out


# --------------------------------------------------------------------------------------------------
# Several models on the same draws
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """``a - b`` in one score: the full-sample value, the two-sided percentile interval (``low``, ``high``) and
    the one-sided bounds at ``confidence`` (``a - b > lower`` and ``a - b < upper``, each with that confidence),
    the bootstrap standard error, and how many draws had a finite difference (``resamples``). The interval and
    bounds are NaN when the value is undefined or too few draws were finite."""

    value: float
    low: float
    high: float
    lower: float
    upper: float
    se: float
    resamples: int
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def columns(self, name: str) -> dict[str, float]:
        """The table columns ``name``, ``name_low``, ``name_high`` (value and two-sided interval)."""
        return {name: self.value, f"{name}_low": self.low, f"{name}_high": self.high}

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.value) and np.isfinite(self.lower) and np.isfinite(self.upper))


def difference_of(value: float, draws: FloatArray, confidence: float, minimum: float = MIN_FINITE) -> Difference:
    """:class:`Difference` from a full-sample value and per-draw values (NaN draws left out; fewer than
    ``minimum`` of them finite, or none: no interval). Also one score's estimate (its "difference" to 0)."""
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    finite = draws[np.isfinite(draws)]
    nan = float("nan")
    if not np.isfinite(value) or len(finite) == 0 or len(finite) < minimum * len(draws):
        return Difference(float(value), nan, nan, nan, nan, nan, len(finite), confidence)
    alpha = 1 - confidence
    low, high, lower, upper = np.quantile(finite, [alpha / 2, 1 - alpha / 2, alpha, confidence])
    return Difference(float(value), float(low), float(high), float(lower), float(upper),
                      float(np.std(finite, ddof=1)) if len(finite) > 1 else nan, len(finite), confidence)


@dataclass(frozen=True)
class PairedScores:
    """Each model's scores on the full sample (``point[model][metric]``) and on the same bootstrap draws
    (``draws[model][metric]``, one value per draw; NaN where undefined)."""

    point: dict[str, dict[str, float]]
    draws: dict[str, dict[str, FloatArray]]
    patients: int
    deaths: int
    resamples: int

    def estimate(self, model: str, metric: str, confidence: float = 0.95, minimum: float = MIN_FINITE) -> Difference:
        """One model's score with its percentile interval and one-sided bounds (a "difference" to 0)."""
        return difference_of(self.point[model][metric], self.draws[model][metric], confidence, minimum)

    def difference(self, model: str, reference: str, metric: str, confidence: float = 0.95,
                   minimum: float = MIN_FINITE) -> Difference:
        """``model - reference`` in ``metric`` on the same draws (NaN when either lacks the metric)."""
        nan = np.full(self.resamples, np.nan)
        a, b = self.point[model].get(metric, np.nan), self.point[reference].get(metric, np.nan)
        da, db = self.draws[model].get(metric, nan), self.draws[reference].get(metric, nan)
        return difference_of(float(a - b), da - db, confidence, minimum)


def _finite(values: FloatArray) -> bool:
    return bool(np.isfinite(values).all())


def paired_scores(train: Outcome, test: Outcome, risks: Mapping[str, npt.ArrayLike], *, tau: float | None,
                  survival: Mapping[str, npt.ArrayLike] | None = None, grid: npt.ArrayLike | None = None,
                  resamples: int = 2000, seed: int = 0, counts: npt.ArrayLike | None = None) -> PairedScores:
    """Harrell's C, Uno's C (up to ``tau``) and, for models with curves in ``survival`` (``(n, len(grid))``
    survival probabilities at the increasing times ``grid``), the integrated Brier score of every model in
    ``risks`` (higher = earlier death), on ``test`` and on the same ``resamples`` bootstrap draws (or the given
    ``counts``, ``(B, n)``); IPCW from the development patients ``train`` (see the module docstring)."""
    n = len(test.time)
    draws = (np.asarray(counts, dtype=float) if counts is not None
             else resample_counts(n, resamples, seed).astype(float))
    if draws.ndim != 2 or draws.shape[1] != n:
        raise ValueError(f"counts must be (resamples, {n}), got {draws.shape}")
    full = np.ones((1, n))
    stacked = np.vstack([full, draws])
    cut = within_follow_up(train, test)
    limits = [v for v in (tau, float(train.time.max()) if len(train.time) else None) if v is not None]
    horizon = min(limits) if limits else np.inf
    pairs = comparable_pairs(test).astype(float)  # Harrell's C needs no censoring weights: the outcome as is
    cut_pairs = comparable_pairs(cut).astype(float)
    censoring: CensoringSurvival | None = None
    weight, undefined = np.zeros(n), np.ones(n, dtype=bool)
    try:
        censoring = CensoringSurvival(train)
        weight, undefined = uno_weights(censoring, cut, horizon)
    except ValueError:  # scikit-survival refuses the development outcome (no patient, no censoring info) or a time
        pass
    uno_pairs = weight[:, None] * cut_pairs
    uno_void = stacked[:, undefined].sum(axis=1) > 0 if undefined.any() else np.zeros(len(stacked), bool)
    times = None if grid is None else np.asarray(grid, dtype=float)
    if times is not None and (times.ndim != 1 or (np.diff(times) <= 0).any()):
        raise ValueError("grid must be strictly increasing times")
    nan = np.full(len(stacked), np.nan)
    point: dict[str, dict[str, float]] = {}
    per_draw: dict[str, dict[str, FloatArray]] = {}
    for name, values in risks.items():
        risk = np.asarray(values, dtype=float)
        if risk.shape != (n,):
            raise ValueError(f"{name}: {risk.shape[0] if risk.ndim else 0} risks for {n} test patients")
        scored: dict[str, FloatArray] = {"harrell_c": nan, "uno_c": nan}
        if _finite(risk):
            agree = concordance(risk)
            scored["harrell_c"] = weighted_pair_ratio(stacked, pairs * agree, pairs)
            scored["uno_c"] = np.where(uno_void, np.nan, weighted_pair_ratio(stacked, uno_pairs * agree, uno_pairs))
        if survival is not None and name in survival:
            scored["integrated_brier"] = _integrated_brier(stacked, censoring, cut,
                                                           np.asarray(survival[name], dtype=float), times)
        point[name] = {k: float(v[0]) for k, v in scored.items()}
        per_draw[name] = {k: v[1:] for k, v in scored.items()}
    return PairedScores(point, per_draw, n, int(test.event.sum()), len(draws))


def _integrated_brier(stacked: FloatArray, censoring: CensoringSurvival | None, cut: Outcome, curves: FloatArray,
                      grid: FloatArray | None) -> FloatArray:
    nan = np.full(len(stacked), np.nan)
    if grid is None or len(grid) < 2 or not _finite(curves) or censoring is None:
        return nan
    if curves.shape != (len(cut.time), len(grid)):
        raise ValueError(f"survival curves must be (patients, grid times) = {(len(cut.time), len(grid))}, "
                         f"got {curves.shape}")
    try:
        losses = brier_losses(censoring, cut, curves, grid)
    except ValueError:  # scikit-survival refuses the development outcome or a time
        return nan
    return weighted_integrated_brier(stacked, cut, losses, grid)


def paired_differences(train: Outcome, test: Outcome, risks: Mapping[str, npt.ArrayLike], *, reference: str,
                       tau: float | None, survival: Mapping[str, npt.ArrayLike] | None = None,
                       grid: npt.ArrayLike | None = None, resamples: int = 2000, confidence: float = 0.95,
                       seed: int = 0, minimum: float = MIN_FINITE) -> dict[str, dict[str, Difference]]:
    """Every other model minus ``reference``, per metric, on the same draws (see :func:`paired_scores`)."""
    if reference not in risks:
        raise ValueError(f"the reference {reference!r} is not among the models {sorted(risks)}")
    scores = paired_scores(train, test, risks, tau=tau, survival=survival, grid=grid, resamples=resamples, seed=seed)
    return {name: {metric: scores.difference(name, reference, metric, confidence, minimum)
                   for metric in METRICS if metric in scores.point[name] or metric in scores.point[reference]}
            for name in risks if name != reference}
