"""Censoring-aware survival scores of one model on held-out patients (scikit-survival does the scoring).

Every model here gives a risk score (higher = earlier death). Scores that need survival probabilities
(Brier, calibration) or a time (the paper's R2 / MAE / RMSE) get them from a Breslow baseline hazard
fitted on the *training* patients' risks and outcomes (``sksurv.linear_model.coxph.BreslowEstimator``):
S(t | risk) = exp(-H0(t) exp(risk)), the proportional-hazards reading of any risk score. The predicted
survival time is the median of that curve (the first time it reaches 0.5; beyond the last training
time it is unknown and the patient is left out of the time metrics, which says so), unless the model
predicts times itself (``mse`` and ``weibull`` networks): then its own prediction is scored.

- Harrell's C (``concordance_index_censored``) and Uno's C with horizon ``tau``
  (``concordance_index_ipcw``: inverse-probability-of-censoring weights from the training patients);
- the integrated Brier score over a time grid inside the test follow-up (``integrated_brier_score``);
- time-dependent AUC at given times (``cumulative_dynamic_auc``);
- calibration at one time: patients in risk groups (quantiles of the predicted survival; group 0 = the
  lowest predicted risk, i.e. the highest predicted survival, as in the Kaplan-Meier risk groups), the mean
  predicted S(t) against the Kaplan-Meier S(t) of the group (``kaplan_meier_estimator``);
- R2, MAE and RMSE in days on **uncensored** patients only (the paper's metrics; censored times are not
  survival times), labelled so.

A time outside what the test patients' follow-up supports (scikit-survival needs the evaluation times
inside the observed range) gives NaN, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from survival_model.metrics import harrell_c

FloatArray = npt.NDArray[np.float64]
DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class Outcome:
    """Observed times (days) and death indicators of a set of patients."""

    time: FloatArray
    event: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, time: Sequence[float] | FloatArray, event: Sequence[bool] | npt.NDArray[np.bool_]) -> Outcome:
        t, e = np.asarray(time, dtype=float), np.asarray(event).astype(bool)
        if t.shape != e.shape or t.ndim != 1:
            raise ValueError(f"time and event must be 1-D of one length, got {t.shape} and {e.shape}")
        return cls(t, e)

    @classmethod
    def of_frame(cls, frame: pd.DataFrame) -> Outcome:
        """From a table's ``time_days`` and ``event`` columns."""
        return cls.of(frame["time_days"].to_numpy(dtype=float), frame["event"].astype(int).to_numpy() == 1)

    def take(self, idx: npt.NDArray[np.intp]) -> Outcome:
        return Outcome(self.time[idx], self.event[idx])

    def surv(self) -> npt.NDArray[np.void]:
        structured: npt.NDArray[np.void] = Surv.from_arrays(event=self.event, time=self.time)
        return structured


def breslow_survival(train_risk: FloatArray, train: Outcome, risk: FloatArray, times: FloatArray) -> FloatArray:
    """S(t | risk) at ``times`` for each patient, ``(n, len(times))``, from a Breslow baseline fitted on
    the training patients' risks and outcomes."""
    estimator = BreslowEstimator().fit(np.asarray(train_risk, dtype=float), train.event, train.time)
    functions = estimator.get_survival_function(np.asarray(risk, dtype=float))
    limit = float(functions[0].x[-1]) if len(functions) else 0.0
    clipped = np.minimum(np.asarray(times, dtype=float), limit)
    return np.vstack([fn(clipped) for fn in functions]) if len(functions) else np.zeros((0, len(times)))


def breslow_hazard(risk: FloatArray, outcome: Outcome, times: FloatArray) -> FloatArray:
    """The Breslow cumulative baseline hazard H0 at ``times`` from risks and outcomes (scikit-survival's
    estimator; flat after the last event time)."""
    times = np.asarray(times, dtype=float)
    if not outcome.event.any():
        return np.zeros(len(times))
    estimator = BreslowEstimator().fit(np.asarray(risk, dtype=float), outcome.event, outcome.time)
    steps = estimator.cum_baseline_hazard_
    grid, values = np.asarray(steps.x, dtype=float), np.asarray(steps.y, dtype=float)
    position = np.searchsorted(grid, times, side="right") - 1
    return np.where(position >= 0, values[np.clip(position, 0, None)], 0.0)


def survival_from(hazard: FloatArray, risk: FloatArray) -> FloatArray:
    """S(t | risk) = exp(-H0(t) exp(risk)) for one risk per row ``(n,)`` -> ``(n, len(hazard))``, or the mean
    over several risks per row ``(n, K)`` (an ensemble's mixture of its members' curves)."""
    risk = np.asarray(risk, dtype=float)
    members = risk[:, :, None] if risk.ndim == 2 else risk[:, None, None]
    with np.errstate(over="ignore"):  # an extreme risk gives exp(inf) -> S = 0, as it should
        curves: FloatArray = np.exp(-np.exp(members) * np.asarray(hazard, dtype=float)[None, None, :]).mean(axis=1)
    return curves


def median_days(survival: FloatArray, times: FloatArray) -> FloatArray:
    """The first time each curve reaches 0.5 (NaN where it stays above 0.5 on ``times``)."""
    below = survival <= 0.5
    first = np.argmax(below, axis=1)
    return np.where(below.any(axis=1), np.asarray(times, dtype=float)[first], np.nan)


def evaluation_times(train: Outcome, test: Outcome, points: int = 50) -> FloatArray:
    """A grid strictly inside the test follow-up and the training range (what scikit-survival accepts)."""
    low = max(float(np.min(test.time)), float(np.min(train.time)))
    high = min(float(np.max(test.time)), float(np.max(train.time)))
    if not high > low:
        return np.zeros(0)
    grid = np.quantile(test.time[(test.time > low) & (test.time < high)], np.linspace(0.05, 0.95, points)) \
        if ((test.time > low) & (test.time < high)).sum() >= 2 else np.zeros(0)
    return np.unique(grid)


def within_follow_up(train: Outcome, test: Outcome) -> Outcome:
    """``test`` censored at the training patients' last observed time.

    The censoring distribution behind the inverse-probability weights is a Kaplan-Meier estimate on the
    training patients, undefined after their last time, and scikit-survival refuses test times beyond it.
    A test patient observed longer is known to have survived to that time: censoring it there changes no
    comparison before that time, so Uno's C (with ``tau`` at most that time) and the AUC at earlier times are
    unchanged, and one long follow-up no longer turns the whole score into NaN.
    """
    cut = float(train.time.max()) if len(train.time) else np.inf
    beyond = test.time > cut
    if not beyond.any():
        return test
    return Outcome(np.where(beyond, cut, test.time), test.event & ~beyond)


def uno_c(train: Outcome, test: Outcome, risk: FloatArray, tau: float | None) -> float:
    """Uno's C-index up to ``tau`` days (capped at the training follow-up; NaN when it cannot be computed)."""
    limits = [v for v in (tau, float(train.time.max()) if len(train.time) else None) if v is not None]
    horizon = min(limits) if limits else None
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(concordance_index_ipcw(train.surv(), within_follow_up(train, test).surv(),
                                                np.asarray(risk, dtype=float), tau=horizon)[0])
    except ValueError:
        return float("nan")


def integrated_brier(train: Outcome, test: Outcome, survival_at: FloatArray, times: FloatArray) -> float:
    """Integrated Brier score over ``times`` (``survival_at``: ``(n, len(times))``), the test patients censored
    at the training follow-up first (:func:`within_follow_up`: the censoring weights are undefined after it).
    NaN when undefined (fewer than two times inside the follow-up, no usable weights): never a silent value."""
    if len(times) < 2:
        return float("nan")
    try:
        return float(integrated_brier_score(train.surv(), within_follow_up(train, test).surv(), survival_at, times))
    except ValueError:
        return float("nan")


def time_auc(train: Outcome, test: Outcome, risk: FloatArray, times: Sequence[float]) -> dict[float, float]:
    """Cumulative/dynamic AUC at each time (NaN for a time the test follow-up does not support)."""
    out: dict[float, float] = {}
    for t in times:
        try:
            with np.errstate(invalid="ignore", divide="ignore"):
                auc, _ = cumulative_dynamic_auc(train.surv(), within_follow_up(train, test).surv(),
                                                np.asarray(risk, dtype=float), [t])
            out[float(t)] = float(auc[0])
        except ValueError:
            out[float(t)] = float("nan")
    return out


def calibration(test: Outcome, predicted: FloatArray, t: float, groups: int = 3) -> pd.DataFrame:
    """Mean predicted S(t) against the Kaplan-Meier S(t) per group of predicted survival ``predicted``: group 0 =
    the lowest predicted risk (the highest predicted survival), as the Kaplan-Meier risk groups number them."""
    predicted = np.asarray(predicted, dtype=float)
    n_groups = max(1, min(groups, len(predicted) // 5 or 1))
    order = np.argsort(-predicted, kind="stable")  # the highest predicted survival (lowest risk) first
    rows = []
    for g, idx in enumerate(np.array_split(order, n_groups)):
        part = test.take(idx)
        observed = float("nan")
        if len(idx) and part.time.max() >= t:
            km_time, km_surv = kaplan_meier_estimator(part.event, part.time)
            observed = float(km_surv[km_time <= t][-1]) if (km_time <= t).any() else 1.0
        rows.append({"group": g, "patients": len(idx), "deaths": int(part.event.sum()),
                     "predicted": float(predicted[idx].mean()) if len(idx) else float("nan"),
                     "observed": observed})
    return pd.DataFrame(rows)


def regression_on_deaths(predicted_days: FloatArray, test: Outcome) -> dict[str, float]:
    """R2, MAE and RMSE in days on uncensored patients with a predicted time (the paper's metrics)."""
    predicted_days = np.asarray(predicted_days, dtype=float)
    keep = test.event & np.isfinite(predicted_days)
    n = int(keep.sum())
    if n < 2:
        return {"r2_uncensored": float("nan"), "mae_days_uncensored": float("nan"),
                "rmse_days_uncensored": float("nan"), "patients_uncensored": float(n)}
    truth, guess = test.time[keep], predicted_days[keep]
    residual = truth - guess
    total = float(np.sum((truth - truth.mean()) ** 2))
    return {"r2_uncensored": 1 - float(np.sum(residual**2)) / total if total > 0 else float("nan"),
            "mae_days_uncensored": float(np.mean(np.abs(residual))),
            "rmse_days_uncensored": float(np.sqrt(np.mean(residual**2))),
            "patients_uncensored": float(n)}


def score(train_risk: FloatArray, train: Outcome, risk: FloatArray, test: Outcome, *, tau: float | None,
          auc_months: Sequence[float] = (6, 12, 24), calibration_months: float = 12,
          test_days: FloatArray | None = None) -> dict[str, float]:
    """Every scalar score of one model on ``test`` (see the module docstring); NaN where undefined."""
    curves = TestCurves.of(train_risk, train, np.asarray(risk, dtype=float), test, calibration_months, test_days)
    return curves.score(np.arange(len(test.time)), tau=tau, auc_months=auc_months)


@dataclass(frozen=True)
class TestCurves:
    """A model's Breslow survival curves for the test patients, computed once: a bootstrap resample of
    the test patients only selects rows (the baseline hazard comes from the training patients)."""

    train: Outcome
    test: Outcome
    risk: FloatArray
    grid: FloatArray
    survival_grid: FloatArray
    calibration_days: float
    survival_calibration: FloatArray
    medians: FloatArray

    @classmethod
    def of(cls, train_risk: FloatArray, train: Outcome, risk: FloatArray, test: Outcome,
           calibration_months: float = 12, test_days: FloatArray | None = None,
           members: FloatArray | None = None) -> TestCurves:
        """``test_days``: the model's own predicted times (else the medians of the Breslow curves); ``members``:
        an ensemble's members' risks ``(n, K)`` on the same scale as ``train_risk``, whose curves are averaged
        (else the curve of ``risk``)."""
        grid = evaluation_times(train, within_follow_up(train, test))
        t_cal = calibration_months * DAYS_PER_MONTH
        dense = np.unique(np.concatenate([train.time, test.time]))
        times = np.concatenate([grid, [t_cal], dense])
        if not len(risk):
            survival = np.zeros((0, len(times)))
        else:
            hazard = breslow_hazard(train_risk, train, times)
            survival = survival_from(hazard, members if members is not None else np.asarray(risk, dtype=float))
        n = len(grid)
        medians = median_days(survival[:, n + 1:], dense) if test_days is None else np.asarray(test_days, dtype=float)
        return cls(train, test, risk, grid, survival[:, :n], t_cal, survival[:, n], medians)

    def score(self, idx: npt.NDArray[np.intp], *, tau: float | None,
              auc_months: Sequence[float] = (6, 12, 24)) -> dict[str, float]:
        """Every score of the patients ``idx`` (scikit-survival, one sample)."""
        test, risk = self.test.take(idx), self.risk[idx]
        inside = (self.grid > test.time.min()) & (self.grid < test.time.max())
        out = {"harrell_c": harrell_c(risk, test.time, test.event), "uno_c": uno_c(self.train, test, risk, tau),
               "integrated_brier": integrated_brier(self.train, test, self.survival_grid[idx][:, inside],
                                                    self.grid[inside])}
        out.update(self.other_scores(idx, auc_months=auc_months))
        return out

    def other_scores(self, idx: npt.NDArray[np.intp], *,
                     auc_months: Sequence[float] = (6, 12, 24)) -> dict[str, float]:
        """The scores the vectorised paired bootstrap (``survival_model.evaluation.paired``) does not compute: the
        AUC at ``auc_months``, the largest calibration gap, and the paper's metrics in days."""
        test, risk = self.test.take(idx), self.risk[idx]
        out: dict[str, float] = {}
        aucs = time_auc(self.train, test, risk, [m * DAYS_PER_MONTH for m in auc_months])
        for months, auc in zip(auc_months, aucs.values(), strict=True):
            out[f"auc_{months:g}m"] = auc
        table = calibration(test, self.survival_calibration[idx], self.calibration_days)
        gaps = (table["predicted"] - table["observed"]).abs()
        months_label = f"{self.calibration_days / DAYS_PER_MONTH:g}"
        out[f"calibration_{months_label}m_max_gap"] = float(gaps.max()) if gaps.notna().any() else float("nan")
        out.update(regression_on_deaths(self.medians[idx], test))
        return out
