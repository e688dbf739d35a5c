"""One comparison table: every model's scores with intervals on the same test patients, and its
difference to a reference model (the GPA by default) with a paired bootstrap interval.

Each model is given as its risk on the training patients (for the Breslow baseline that turns a risk
into survival curves; see ``survival_model.evaluation.scores``) and on the test patients. The paired
bootstrap resamples test patients once per draw and scores every model on the same draw, so a
difference's interval reflects that the models were scored on the same patients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.evaluation.metrics import harrell_c, percentile_interval
from survival_model.evaluation.scores import Outcome, bootstrap_scores, uno_c

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


def paired_difference(a: FloatArray, b: FloatArray, train: Outcome, test: Outcome, *, tau: float | None,
                      resamples: int = 500, confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """``a - b`` in Harrell's and Uno's C on the same bootstrap draws of the test patients."""
    def both(ra: FloatArray, rb: FloatArray, out: Outcome) -> tuple[float, float]:
        return (harrell_c(ra, out.time, out.event) - harrell_c(rb, out.time, out.event),
                uno_c(train, out, ra, tau) - uno_c(train, out, rb, tau))

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    point = both(a, b, test)
    rng = np.random.default_rng(seed)
    draws: list[tuple[float, float]] = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        draws.append(both(a[idx], b[idx], test.take(idx)))
    out = {}
    for i, name in enumerate(("harrell_c", "uno_c")):
        values = np.array([d[i] for d in draws])
        low, high = percentile_interval(values, confidence, minimum=10)
        out[name] = {"value": float(point[i]), "low": low, "high": high,
                     "resamples": int(np.isfinite(values).sum())}
    return out


def comparison_table(models: Mapping[str, ModelRisks], train: Outcome, test: Outcome, *, tau: float | None,
                     reference: str | None = "gpa", resamples: int = 200, confidence: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Rows: models; columns: ``<metric>``, ``<metric>_low``, ``<metric>_high`` for every score, and the
    paired difference to ``reference`` in Harrell's and Uno's C (``delta_*``) when it is among the models."""
    rows = []
    for name, risks in models.items():
        if len(risks.test) != len(test.time) or len(risks.train) != len(train.time):
            raise ValueError(f"{name}: risks do not match the patients ({len(risks.train)}/{len(risks.test)} for "
                             f"{len(train.time)}/{len(test.time)})")
        scores = bootstrap_scores(risks.train, train, risks.test, test, tau=tau, resamples=resamples,
                                  confidence=confidence, seed=seed, test_days=risks.test_days,
                                  members=risks.test_members)
        row: dict[str, float | str] = {"model": name}
        for metric, estimate in scores.items():
            row[metric] = estimate["value"]
            row[f"{metric}_low"], row[f"{metric}_high"] = estimate["low"], estimate["high"]
        if reference is not None and reference in models and name != reference:
            diff = paired_difference(risks.test, models[reference].test, train, test, tau=tau,
                                     resamples=max(resamples, 200), confidence=confidence, seed=seed)
            for metric, estimate in diff.items():
                row[f"delta_{metric}"] = estimate["value"]
                row[f"delta_{metric}_low"], row[f"delta_{metric}_high"] = estimate["low"], estimate["high"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")
