"""One comparison table: every model's scores with intervals on the same test patients, and its
difference to a reference model (the GPA by default) with a paired bootstrap interval.

Each model is given as its risk on the training patients (for the Breslow baseline that turns a risk
into survival curves; see ``survival_model.evaluation.scores``) and on the test patients. One set of
bootstrap draws of the test patients serves every model and every score, so a difference's interval
reflects that the models were scored on the same patients:

- Harrell's C, Uno's C, the integrated Brier score and their paired differences to the reference come
  from the vectorised paired bootstrap (``survival_model.evaluation.paired``), as out of fold and in
  the promotion gate;
- the scores it does not compute (time-dependent AUC, the calibration gap, the paper's metrics in days)
  are scored per draw by scikit-survival (:meth:`TestCurves.other_scores`).

Every interval follows one rule (``paired.MIN_FINITE``): without a defined value in 90 % of the draws
there is none (NaN), never an interval from a handful of draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.evaluation.paired import (
    METRICS,
    Difference,
    IntArray,
    PairedScores,
    difference_of,
    paired_scores,
)
from survival_model.evaluation.scores import Outcome, TestCurves, evaluation_times, within_follow_up
from survival_model.metrics import counts_of, resample_indices

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ModelRisks:
    """A model's risk scores (higher = earlier death) on the training and the test patients, and its own
    predicted survival times on the test patients where it makes them (``mse``, ``weibull`` networks)."""

    train: FloatArray
    test: FloatArray
    test_days: FloatArray | None = None
    #: An ensemble's members' risks on the test patients ``(n, K)``: its survival curve is their mixture.
    test_members: FloatArray | None = None


def model_curves(models: Mapping[str, ModelRisks], train: Outcome, test: Outcome) -> dict[str, TestCurves]:
    """Every model's Breslow survival curves on the test patients (checked against the patients)."""
    out = {}
    for name, risks in models.items():
        if len(risks.test) != len(test.time) or len(risks.train) != len(train.time):
            raise ValueError(f"{name}: risks do not match the patients ({len(risks.train)}/{len(risks.test)} for "
                             f"{len(train.time)}/{len(test.time)})")
        out[name] = TestCurves.of(risks.train, train, np.asarray(risks.test, dtype=float), test,
                                  test_days=risks.test_days, members=risks.test_members)
    return out


def other_estimates(curves: TestCurves, indices: IntArray, confidence: float) -> dict[str, Difference]:
    """The scores :mod:`~survival_model.evaluation.paired` does not compute, with their percentile intervals
    over the draws ``indices`` (``(B, n)`` patients drawn), under the same finite-draws rule."""
    point = curves.other_scores(np.arange(len(curves.test.time)))
    draws = [curves.other_scores(idx) for idx in indices]
    return {metric: difference_of(value, np.array([d[metric] for d in draws], dtype=float), confidence)
            for metric, value in point.items()}


def comparison_row(name: str, curves: TestCurves, scores: PairedScores, indices: IntArray, *,
                   reference: str | None, confidence: float) -> dict[str, float | str]:
    """One model's row: every score with its interval, and its paired differences to ``reference`` (``delta_*``,
    with ``delta_*_resamples``: the draws where both scores are defined)."""
    row: dict[str, float | str] = {"model": name}
    for metric in METRICS:
        row.update(scores.estimate(name, metric, confidence).columns(metric))
    for metric, estimate in other_estimates(curves, indices, confidence).items():
        row.update(estimate.columns(metric))
    if reference is not None and name != reference:
        for metric in METRICS:
            difference = scores.difference(name, reference, metric, confidence)
            row.update(difference.columns(f"delta_{metric}"))
            row[f"delta_{metric}_resamples"] = difference.resamples
    return row


def comparison_table(models: Mapping[str, ModelRisks], train: Outcome, test: Outcome, *, tau: float | None,
                     reference: str | None = "gpa", resamples: int = 200, confidence: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Rows: models; columns: ``<metric>``, ``<metric>_low``, ``<metric>_high`` for every score, and the paired
    difference to ``reference`` in Harrell's C, Uno's C and the integrated Brier score (``delta_*``) when it is
    among the models; all on the same ``resamples`` draws of the test patients (see the module docstring)."""
    curves = model_curves(models, train, test)
    indices = resample_indices(len(test.time), resamples, seed)
    grid = evaluation_times(train, within_follow_up(train, test))  # every model's curves are on this grid
    scores = paired_scores(train, test, {name: np.asarray(m.test, dtype=float) for name, m in models.items()},
                           tau=tau, survival={name: c.survival_grid for name, c in curves.items()}, grid=grid,
                           counts=counts_of(indices, len(test.time)))
    against = reference if reference is not None and reference in models else None
    rows = [comparison_row(name, c, scores, indices, reference=against, confidence=confidence)
            for name, c in curves.items()]
    return pd.DataFrame(rows).set_index("model")
