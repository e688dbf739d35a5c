"""The promotion gate: the challenger takes ``champion`` only when it is better on the locked test set.

Both models are scored on the **same** patients: the current locked test set, without any patient the
champion was trained on (its package lists its development patients; after new data the splits can move
a former training patient into the test set, which would flatter the champion). The champion is
re-scored from its own package, never trusted from its old tags. Scores (``survival_model.evaluation.scores``):
Uno's C up to ``evaluation.tau_days`` (IPCW from the current development patients), Harrell's C, and the
integrated Brier score of each model's own survival curves (its packaged Breslow baseline).

Rule: promote when ``challenger[metric] > reference[metric] + margin`` and ``challenger IBS <= reference IBS
+ tolerance``, where the reference is the champion, or for the first model the GPA (``gate.first_model_baseline``;
its survival curves from a Breslow baseline on the development patients). A NaN score never promotes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.config import GateParams
from survival_model.evaluation.metrics import harrell_c
from survival_model.evaluation.scores import (
    Outcome,
    breslow_survival,
    evaluation_times,
    integrated_brier,
    uno_c,
)

FloatArray = npt.NDArray[np.float64]


def scores(train: Outcome, test: Outcome, risk: FloatArray, survival_grid: FloatArray, grid: FloatArray, *,
           tau: float) -> dict[str, float]:
    """Harrell's C, Uno's C and the integrated Brier score of one model on ``test``."""
    return {"harrell_c": harrell_c(risk, test.time, test.event), "uno_c": uno_c(train, test, risk, tau),
            "integrated_brier": integrated_brier(train, test, survival_grid, grid)}


def score_baseline(train_risk: FloatArray, train: Outcome, risk: FloatArray, test: Outcome, *,
                   tau: float) -> dict[str, float]:
    """A risk score without survival curves of its own (the GPA): curves from a Breslow baseline on
    the development patients."""
    grid = evaluation_times(train, test)
    curves = breslow_survival(train_risk, train, risk, grid) if len(grid) else np.zeros((len(risk), 0))
    return scores(train, test, risk, curves, grid, tau=tau)


@dataclass(frozen=True)
class Decision:
    """The gate's verdict with every number it rests on."""

    promote: bool
    reason: str
    metric: str
    margin: float
    ibs_tolerance: float
    reference: str  # "champion v<N>", "gpa" or "none"
    patients: int
    deaths: int
    excluded: int  # test patients left out because the champion trained on them
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    baseline: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """Flat tags for the registered version and the run."""
        out = {"gate.decision": "promoted" if self.promote else "refused", "gate.reason": self.reason[:4000],
               "gate.reference": self.reference, "gate.metric": self.metric, "gate.margin": f"{self.margin:g}",
               "gate.ibs_tolerance": f"{self.ibs_tolerance:g}", "gate.patients": str(self.patients),
               "gate.excluded": str(self.excluded)}
        for who, values in (("challenger", self.challenger), ("champion", self.champion), ("baseline", self.baseline)):
            for name, value in (values or {}).items():
                out[f"gate.{who}.{name}"] = f"{value:.4f}"
        return out

    def markdown(self, model_name: str, version: int) -> str:
        verdict = "**promoted** to `champion`" if self.promote else "**not promoted**"
        lines = [f"# Promotion gate: {model_name} version {version} {verdict}", "", self.reason, "",
                 f"Scored on {self.patients} locked test patients ({self.deaths} deaths)"
                 + (f"; {self.excluded} left out because the champion trained on them" if self.excluded else "")
                 + f". Rule: {self.metric} better than the reference by more than {self.margin:g}, integrated "
                   f"Brier score at most {self.ibs_tolerance:g} worse.", "",
                 "| model | Harrell's C | Uno's C | integrated Brier |", "|---|---|---|---|"]
        for label, values in ((f"challenger (v{version})", self.challenger), (self.reference, self.champion),
                              ("gpa", self.baseline)):
            if values:
                lines.append(f"| {label} | {values['harrell_c']:.3f} | {values['uno_c']:.3f} | "
                             f"{values['integrated_brier']:.3f} |")
        return "\n".join(lines) + "\n"


def _beats(challenger: dict[str, float], reference: dict[str, float], gate: GateParams) -> tuple[bool, str]:
    c, r = challenger[gate.metric], reference[gate.metric]
    ci, ri = challenger["integrated_brier"], reference["integrated_brier"]
    if not (np.isfinite(c) and np.isfinite(r)):
        return False, f"{gate.metric} is undefined on this test set (challenger {c:.3f}, reference {r:.3f})"
    if c <= r + gate.margin:
        return False, f"{gate.metric} {c:.3f} does not beat {r:.3f} by more than {gate.margin:g}"
    if np.isfinite(ci) and np.isfinite(ri) and ci > ri + gate.ibs_tolerance:
        return False, (f"{gate.metric} {c:.3f} beats {r:.3f}, but the integrated Brier score {ci:.3f} is worse "
                       f"than {ri:.3f} by more than {gate.ibs_tolerance:g}")
    if not np.isfinite(ci):
        return False, "the integrated Brier score is undefined for the challenger on this test set"
    return True, (f"{gate.metric} {c:.3f} beats {r:.3f} by more than {gate.margin:g}; integrated Brier score "
                  f"{ci:.3f} vs {ri:.3f} (tolerance {gate.ibs_tolerance:g})")


def decide(challenger: dict[str, float], gate: GateParams, *, champion: dict[str, float] | None,
           champion_label: str | None, baseline: dict[str, float] | None, test: Outcome, excluded: int = 0) -> Decision:
    """Apply the rule (module docstring) to scores computed on the same patients."""
    def made(promote: bool, reason: str, reference: str) -> Decision:
        return Decision(promote, reason, gate.metric, gate.margin, gate.ibs_tolerance, reference, len(test.time),
                        int(test.event.sum()), excluded, challenger, champion, baseline)

    if champion is not None:
        ok, why = _beats(challenger, champion, gate)
        return made(ok, f"against the champion ({champion_label}, re-scored): " + why, champion_label or "champion")
    if gate.first_model_baseline == "none":
        return made(True, "first model, promoted without a baseline (gate.first_model_baseline: none)", "none")
    if baseline is None:
        return made(False, "first model, but the GPA could not be scored", "gpa")
    ok, why = _beats(challenger, baseline, gate)
    return made(ok, "first model, against the GPA: " + why, "gpa")


def locked_patients(test_ids: list[str], champion_development: list[str] | None) -> tuple[list[str], int]:
    """The test patients both models can be scored on, and how many were left out."""
    if not champion_development:
        return list(test_ids), 0
    trained = set(champion_development)
    kept = [c for c in test_ids if c not in trained]
    return kept, len(test_ids) - len(kept)


def package_scores(model: Any, frame: pd.DataFrame, train: Outcome, test: Outcome, *, tau: float) -> dict[str, float]:
    """A packaged model (``PackagedModel``) scored on prediction-input rows ``frame`` (same order as ``test``),
    with its own packaged survival curves."""
    risk = model.risk(frame)
    grid = evaluation_times(train, test)
    return scores(train, test, risk, model.survival(risk, grid), grid, tau=tau)


def judge(challenger: Any, challenger_rows: pd.DataFrame, champion: tuple[str, Any, pd.DataFrame] | None,
          development: pd.DataFrame, test: pd.DataFrame, gate: GateParams, *, tau: float,
          excluded: int = 0) -> Decision:
    """Score the challenger and the champion (``(label, model, rows)``; None for the first model, which is
    compared with the GPA) on the feature-table rows ``test`` (each model's prediction inputs for them in
    the same order), with IPCW and the GPA's baseline from ``development``, and decide."""
    from survival_model.evaluation.baselines import gpa

    train, locked = Outcome.of_frame(development), Outcome.of_frame(test)
    challenger_scores = package_scores(challenger, challenger_rows, train, locked, tau=tau)
    champion_scores = label = baseline = None
    if champion is not None:
        label, model, rows = champion
        champion_scores = package_scores(model, rows, train, locked, tau=tau)
    elif gate.first_model_baseline == "gpa":
        baseline = score_baseline(-gpa(development)[0], train, -gpa(test)[0], locked, tau=tau)
    return decide(challenger_scores, gate, champion=champion_scores, champion_label=label, baseline=baseline,
                  test=locked, excluded=excluded)
