"""Every model compared on the out-of-fold predictions of all development patients.

Each development patient is scored by the model of the fold that validated it: a model fitted without it,
whose choices (epoch, penalties) were made inside that fold's training patients. Pooled over the folds,
these risks are an honest prediction set of all the development patients (118 on the default cohort,
against the locked test set's 30), so the comparison between models is made here and the locked test set
confirms it. Pooling needs the folds' risks on one scale: a Cox-type risk is defined up to a constant, so a
fitted model's risks are centred on its fold's training patients (:func:`centre_on`: the baselines', and the
cox networks' again in ``stage.network_out_of_fold`` although training centred them with ``output_offset``),
and a score with an absolute scale (the GPA) is left as it is.

- **Discrimination**: Harrell's C and Uno's C (IPCW from the development patients, up to ``tau``) of every
  model with a percentile bootstrap interval over patients, and the **paired** difference to each
  reference (the oracle, the tabular-only network, the GPA) on the same draws
  (``survival_model.evaluation.paired``), with its interval. The share of the oracle's headroom a model
  reaches, ``(C - 0.5) / (C_oracle - 0.5)``, is computed per draw too. The bootstrap resamples patients
  given the fitted fold models: it does not include the variability of refitting them.
- **Calibration** (integrated Brier score, calibration tables, risk groups): each patient's survival curve
  comes from a Breslow baseline *cross-fitted* on the other folds' out-of-fold risks
  (:func:`cross_fitted_survival`), so a patient's own outcome does not enter its curve directly (it does
  indirectly: the other folds' models, whose risks fit that baseline, were trained on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.evaluation.paired import Difference, PairedScores, difference_of, paired_scores
from survival_model.evaluation.scores import (
    DAYS_PER_MONTH,
    Outcome,
    breslow_hazard,
    calibration,
    evaluation_times,
    survival_from,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Reference roles of the paired differences, in the order they are reported.
ROLES = ("oracle", "tabular", "gpa")
METRICS = ("harrell_c", "uno_c")


def centre_on(risk_train: FloatArray, risk: FloatArray) -> FloatArray:
    """``risk`` minus the mean of the same model's risks on its training patients."""
    return np.asarray(risk, dtype=float) - float(np.mean(np.asarray(risk_train, dtype=float)))


def cross_fitted_survival(risk: FloatArray, outcome: Outcome, fold: IntArray, times: FloatArray) -> FloatArray:
    """Each patient's S(t) at ``times`` from a Breslow baseline fitted on the patients of the *other* folds
    (their out-of-fold risks and outcomes): the patient's own outcome is not used directly, though the other
    folds' models, which scored those patients, were trained on it."""
    risk, fold = np.asarray(risk, dtype=float), np.asarray(fold)
    out = np.full((len(risk), len(times)), np.nan)
    for k in np.unique(fold):
        inside = fold == k
        others = ~inside
        hazard = breslow_hazard(risk[others], Outcome(outcome.time[others], outcome.event[others]), times)
        out[inside] = survival_from(hazard, risk[inside])
    return out


@dataclass(frozen=True)
class OutOfFold:
    """Every model's out-of-fold risks on the development patients (in ``case_ids`` order) and the fold that
    validated each patient (``fold``: an index per patient; a score without folds, e.g. the GPA or the
    oracle, is scored on the same patients)."""

    case_ids: tuple[str, ...]
    outcome: Outcome
    fold: IntArray
    risks: dict[str, FloatArray]

    def frame(self) -> pd.DataFrame:
        """Long table: ``model, case_id, fold, time_days, event, risk`` (the outcome with the risks, so that any
        score can be recomputed from this table alone, e.g. per fold)."""
        return pd.concat([pd.DataFrame({"model": name, "case_id": list(self.case_ids), "fold": self.fold,
                                        "time_days": self.outcome.time, "event": self.outcome.event,
                                        "risk": values}) for name, values in self.risks.items()],
                         ignore_index=True)


def groups_for(deaths: int, most: int = 5) -> int:
    """How many risk groups the deaths allow: one per 15 deaths, at least 2, at most ``most``."""
    return int(np.clip(deaths // 15, 2, max(2, most)))


def horizons_inside(outcome: Outcome, months: Sequence[float]) -> list[float]:
    """The horizons (months) before which at least 10 patients are still followed."""
    return [m for m in months if int((outcome.time >= m * DAYS_PER_MONTH).sum()) >= 10]


@dataclass(frozen=True)
class OutOfFoldComparison:
    """The comparison on the out-of-fold predictions: ``table`` (model x score with intervals, the paired
    differences to the references, the share of the oracle's headroom) and per model the calibration
    tables at each horizon."""

    table: pd.DataFrame
    calibration: dict[str, pd.DataFrame]
    references: dict[str, str]
    patients: int
    deaths: int
    resamples: int


def _headroom(scores: PairedScores, model: str, oracle: str, metric: str, confidence: float) -> Difference:
    """``(C - 0.5) / (C_oracle - 0.5)`` with its interval on the same draws (the one finite-draws rule)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        point = (scores.point[model][metric] - 0.5) / (scores.point[oracle][metric] - 0.5)
        draws = (scores.draws[model][metric] - 0.5) / (scores.draws[oracle][metric] - 0.5)
    return difference_of(float(point), draws, confidence)


def compare_out_of_fold(oof: OutOfFold, references: Mapping[str, str], *, tau: float | None,
                        calibration_months: Sequence[float] = (6, 12), resamples: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> OutOfFoldComparison:
    """Every model's scores on the out-of-fold predictions with intervals, and the paired difference to each
    reference present (``references``: role -> model name, roles from :data:`ROLES`)."""
    outcome = oof.outcome
    grid = evaluation_times(outcome, outcome)
    survival = {name: cross_fitted_survival(risk, outcome, oof.fold, grid) for name, risk in oof.risks.items()}
    scores = paired_scores(outcome, outcome, oof.risks, tau=tau, survival=survival, grid=grid, resamples=resamples,
                           seed=seed)
    present = {role: name for role, name in references.items() if name in oof.risks}
    rows = []
    for name in oof.risks:
        row: dict[str, float | str] = {"model": name}
        for metric in (*METRICS, "integrated_brier"):
            row.update(scores.estimate(name, metric, confidence).columns(metric))
        if "oracle" in present:
            row.update(_headroom(scores, name, present["oracle"], "harrell_c", confidence).columns("headroom"))
        for role, reference in present.items():
            for metric in METRICS:
                if name == reference:
                    continue
                diff = scores.difference(name, reference, metric, confidence)
                row.update(diff.columns(f"vs_{role}_{metric}"))
                row[f"vs_{role}_{metric}_resamples"] = diff.resamples  # computed (the reference's own row: NaN)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    months = horizons_inside(outcome, calibration_months)
    groups = groups_for(int(outcome.event.sum()))
    tables = {}
    for name, risk in oof.risks.items():
        parts = []
        for m in months:
            curves = cross_fitted_survival(risk, outcome, oof.fold, np.array([m * DAYS_PER_MONTH]))[:, 0]
            part = calibration(outcome, curves, m * DAYS_PER_MONTH, groups)
            part.insert(0, "months", m)
            parts.append(part)
        tables[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return OutOfFoldComparison(table, tables, present, len(outcome.time), int(outcome.event.sum()), resamples)
