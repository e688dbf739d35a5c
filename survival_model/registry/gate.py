"""The promotion gate: the challenger takes ``champion`` only when it is shown better on the locked test set.

Both models are scored on the **same** patients: the current locked test set, without any patient the
champion was trained on (its package lists its development patients; changed split settings, or a champion
from before the current split rule, can put a former training patient in the test set, which would flatter
the champion). That exclusion needs the
champion's pseudonymous ids to be this run's: a champion trained under another pseudonym key stops the gate
(:func:`check_pseudonym_key`, :class:`PseudonymKeyError`). The champion is re-scored from its own package,
never trusted from its old tags. Scores (``survival_model.evaluation.paired``, scikit-survival's definitions):
Uno's C up to ``evaluation.tau_days`` (IPCW from the current development patients), Harrell's C, and the
integrated Brier score of each model's own survival curves (its packaged Breslow baseline).

Rule (``registry.gate``, :class:`~survival_model.config.GateParams`), on the paired difference
``Δ = challenger - reference`` over ``resamples`` bootstrap draws of the locked test patients (each draw
resamples patients once and scores both models on it):

- the one-sided lower bound of ``Δ metric`` (``uno_c`` by default) at ``confidence`` (0.95) must exceed
  ``margin`` (0): the challenger is better, with that confidence;
- the one-sided upper bound of ``Δ integrated Brier score`` at the same confidence must be below
  ``ibs_margin`` (0.02): it is not worse in calibration and discrimination over time by that much
  (non-inferiority; ``null`` leaves this part out, for test sets whose follow-up is too short to integrate).
  0.02 was chosen by measurement (``benchmarks/gate.py``): among decisions whose C part
  passed, it refuses 3 % of the truly better challengers at 30 test patients (0.01 refuses 8 %, with no extra
  protection there; at 118 patients both refuse under 1 %) and a third to two fifths of the truly worse ones
  that passed the C part by chance; it is about a tenth of the champion's integrated Brier score (0.18);
- a NaN score, or fewer than ``min_finite`` of the resamples with both scores defined, never promotes: the
  decision is ``undefined`` and says why.

The reference is the champion, or for the first model the GPA (``gate.first_model_baseline``; its survival
curves from a Breslow baseline on the development patients), with the same rule.

Measured error rates (``benchmarks/gate.py``, ``benchmarks/RESULTS.md``: 500 replications per case, cohorts
from the repository's generator, champion and challenger = true risk + noise): a challenger truly worse by
0.01-0.05 in Harrell's C is promoted in at most 3.0 % of replications, at 30 and at 118 test patients (the
old rule, point estimate better by 0.005, promoted one truly worse by 0.01 in 35 % at 30 patients); an equal
one in 4.4 %. The price is power: at the default 30 test patients a challenger truly better by 0.05 is
promoted in 17 % of replications, by 0.02 in 7 %; at 118 patients in 50 % and 15 %. The locked test set
confirms large improvements; it cannot find small ones.

Each decision records which locked test set it read (:func:`fingerprint_test_set` of the whole locked test
set's case ids, whatever part of it was scored: the patients left out because the champion trained on them, or
because a model has no prediction inputs for them, are still the same patients looked at again); the registry
counts the decisions each test set has served (``Registry.record_test_set_decision``), since every look at the
same patients spends some of their independence. A decision with no test patient left to score is
``undefined`` (it never promotes) and reads nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.config import GateParams
from survival_model.errors import SurvivalModelError
from survival_model.evaluation.baselines import gpa
from survival_model.evaluation.paired import METRICS, PairedScores, paired_scores
from survival_model.evaluation.scores import Outcome, breslow_survival, evaluation_times
from survival_model.fingerprint import stable_hash

FloatArray = npt.NDArray[np.float64]
Outcome_ = Literal["promoted", "refused", "undefined"]
CHALLENGER, CHAMPION, GPA = "challenger", "champion", "gpa"
_LABELS = {"harrell_c": "Harrell's C", "uno_c": "Uno's C", "integrated_brier": "integrated Brier"}


class PseudonymKeyError(SurvivalModelError):
    """The champion was trained under another pseudonym key than this run's (see :func:`check_pseudonym_key`)."""


def check_pseudonym_key(champion_info: Mapping[str, Any], current: str, champion_label: str = "the champion") -> None:
    """Stop when the champion's package was built under another pseudonym key (or records none)."""
    theirs = champion_info.get("pseudonym_key_fingerprint")
    if theirs == current:
        return
    recorded = f"fingerprint {theirs}" if theirs else "no fingerprint recorded: a package older than this check"
    raise PseudonymKeyError(
        f"the pseudonym key of this run (fingerprint {current}) differs from the one {champion_label} was trained "
        f"with ({recorded}). The champion's package lists its training patients by pseudonymous id, and another "
        "key gives the same patients other ids: its training patients cannot be left out of the locked test set, "
        "so the gate would score it on patients it was trained on. Run with the champion's key "
        "(privacy.key_file), or review this version and promote it by hand "
        "(`survival-model models promote <version> --reason ...`).")


def margin_text(margin: float | None) -> str:
    """A margin as tags and reports show it: ``none`` where it is not part of the rule (``ibs_margin: null``)."""
    return "none" if margin is None else f"{margin:g}"


def fingerprint_test_set(case_ids: Iterable[str]) -> str:
    """Which locked test set a decision read: a digest of its sorted case ids (the whole locked test set, as the
    evaluation report reads its count, not only the patients a decision scored)."""
    return stable_hash("locked-test-set", sorted(str(c) for c in case_ids))[:16]


@dataclass(frozen=True)
class Decision:
    """The gate's verdict with every number it rests on: point scores per model, and the paired differences
    ``challenger - reference`` per metric (``Difference.as_dict()``: value, two-sided interval, one-sided
    bounds at ``confidence``, finite resamples)."""

    promote: bool
    outcome: str  # promoted | refused | undefined
    reason: str
    metric: str
    confidence: float
    margin: float
    ibs_margin: float | None  # None: the integrated Brier score is not part of the rule
    resamples: int
    reference: str  # "champion v<N>", "gpa" or "none"
    patients: int
    deaths: int
    excluded: int  # locked test patients left out because the champion trained on them
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    baseline: dict[str, float] | None = None
    difference: dict[str, dict[str, float]] = field(default_factory=dict)
    test_set: str = ""  # fingerprint_test_set of the whole locked test set (not only the patients scored)
    test_set_decisions: int = 0  # decisions this test set has served, this one included (set by the registry)
    extra: dict[str, Any] = field(default_factory=dict)
    test_set_patients: int = 0  # patients of the locked test set: patients + excluded + unscored
    unscored: int = 0  # locked test patients without prediction inputs for a model (not scored)

    @property
    def read_test_set(self) -> bool:
        """Whether the decision looked at test patients' outcomes (then it counts on its test set)."""
        return bool(self.test_set) and self.patients > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counted(self, decisions: int) -> Decision:
        return dataclasses.replace(self, test_set_decisions=decisions)

    def tags(self) -> dict[str, str]:
        """Flat tags for the registered version and the run."""
        out = {"gate.decision": self.outcome, "gate.reason": self.reason[:4000], "gate.reference": self.reference,
               "gate.metric": self.metric, "gate.confidence": f"{self.confidence:g}",
               "gate.margin": f"{self.margin:g}",
               "gate.ibs_margin": margin_text(self.ibs_margin),
               "gate.resamples": str(self.resamples), "gate.patients": str(self.patients),
               "gate.deaths": str(self.deaths), "gate.excluded": str(self.excluded),
               "gate.unscored": str(self.unscored), "gate.test_set_patients": str(self.test_set_patients),
               "gate.test_set": self.test_set, "gate.test_set_decisions": str(self.test_set_decisions)}
        for who, values in (("challenger", self.challenger), ("champion", self.champion), ("baseline", self.baseline)):
            for name, value in (values or {}).items():
                out[f"gate.{who}.{name}"] = f"{value:.4f}"
        for name, diff in self.difference.items():
            for part in ("value", "lower", "upper", "low", "high"):
                out[f"gate.delta.{name}" + ("" if part == "value" else f".{part}")] = f"{diff[part]:+.4f}"
            out[f"gate.delta.{name}.resamples"] = str(diff["resamples"])
        return out

    def markdown(self, model_name: str, version: int) -> str:
        verdict = {"promoted": "**promoted** to `champion`", "refused": "**not promoted**",
                   "undefined": "**not promoted** (undefined)"}[self.outcome]
        pct = f"{self.confidence:.0%}"
        of_all = f" of the {self.test_set_patients}" if self.test_set_patients > self.patients else ""
        lines = [f"# Promotion gate: {model_name} version {version} {verdict}", "", self.reason, "",
                 f"Scored on {self.patients}{of_all} locked test patients ({self.deaths} deaths)"
                 + (f"; {self.excluded} left out because the champion trained on them" if self.excluded else "")
                 + (f"; {self.unscored} without prediction inputs for a model" if self.unscored else "")
                 + f". Rule: the one-sided {pct} lower bound of Δ {self.metric} (challenger - reference) above "
                   f"{self.margin:g}"
                 + (", the integrated Brier score not checked (ibs_margin: null)" if self.ibs_margin is None else
                    f", and the one-sided {pct} upper bound of Δ integrated Brier below {self.ibs_margin:g}")
                 + f"; {self.resamples} paired bootstrap resamples of these patients.", ""]
        if self.read_test_set:
            lines += [f"This test set (`{self.test_set}`) has now served {self.test_set_decisions} gate "
                      "decision(s): each look at the same patients makes the next one less independent.", ""]
        elif self.test_set:
            lines += [f"No outcome of this test set (`{self.test_set}`) was read: the decision is not counted on it.",
                      ""]
        lines += ["| model | Harrell's C | Uno's C | integrated Brier |", "|---|---|---|---|"]
        for label, values in ((f"challenger (v{version})", self.challenger), (self.reference, self.champion),
                              ("gpa", self.baseline)):
            if values:
                lines.append("| " + " | ".join([label, *(f"{values.get(m, np.nan):.3f}" for m in METRICS)]) + " |")
        if self.difference:
            lines += ["", f"| Δ (challenger - {self.reference}) | value | {pct} two-sided interval | one-sided "
                          f"lower | one-sided upper | resamples |", "|---|---|---|---|---|---|"]
            for name, d in self.difference.items():
                lines.append(f"| {_LABELS.get(name, name)} | {d['value']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] "
                             f"| {d['lower']:+.3f} | {d['upper']:+.3f} | {d['resamples']} |")
        return "\n".join(lines) + "\n"


def _rule(scores: PairedScores, reference: str, gate: GateParams) -> tuple[Outcome_, str]:
    """The rule of the module docstring for the challenger against ``reference``."""
    pct, needed = f"{gate.confidence:.0%}", int(np.ceil(gate.min_finite * scores.resamples))
    d = scores.difference(CHALLENGER, reference, gate.metric, gate.confidence, gate.min_finite)
    ibs = scores.difference(CHALLENGER, reference, "integrated_brier", gate.confidence, gate.min_finite)
    challenger, other = scores.point[CHALLENGER][gate.metric], scores.point[reference][gate.metric]
    if not d.defined:
        return "undefined", (f"undefined: {gate.metric} cannot be compared on this test set (challenger "
                             f"{challenger:.3f}, reference {other:.3f}; defined in {d.resamples} of "
                             f"{scores.resamples} resamples, {needed} needed)")
    shown = (f"{gate.metric} {challenger:.3f} vs {other:.3f}: Δ {d.value:+.3f}, one-sided {pct} lower bound "
             f"{d.lower:+.3f}")
    if d.lower <= gate.margin:
        return "refused", (f"the challenger does not beat it with {pct} confidence: {shown}, not above the margin "
                           f"{gate.margin:g}")
    if gate.ibs_margin is None:
        return "promoted", (f"better with {pct} confidence: {shown} > {gate.margin:g} (the integrated Brier score "
                            "is not part of this rule: ibs_margin null)")
    if not ibs.defined:
        return "undefined", (f"{shown} (better), but the integrated Brier score is undefined on this test set "
                             f"(Δ {ibs.value:+.3f}; defined in {ibs.resamples} of {scores.resamples} resamples, "
                             f"{needed} needed)")
    ibs_shown = f"integrated Brier Δ {ibs.value:+.3f}, one-sided {pct} upper bound {ibs.upper:+.3f}"
    if ibs.upper >= gate.ibs_margin:
        return "refused", (f"{shown} (better), but the integrated Brier score is not shown non-inferior: {ibs_shown}, "
                           f"not below the margin {gate.ibs_margin:g}")
    return "promoted", (f"better with {pct} confidence: {shown} > {gate.margin:g}; {ibs_shown} < {gate.ibs_margin:g} "
                        "(non-inferior)")


def decide(scores: PairedScores, gate: GateParams, *, champion_label: str | None = None, excluded: int = 0,
           test_set: str = "") -> Decision:
    """Apply the rule (module docstring) to paired scores of the models ``challenger`` and ``champion`` (or,
    for the first model, ``gpa``) on the same patients and draws."""
    def made(outcome: Outcome_, reason: str, reference: str, name: str | None) -> Decision:
        difference = ({m: scores.difference(CHALLENGER, name, m, gate.confidence, gate.min_finite).as_dict()
                       for m in METRICS} if name is not None else {})
        return Decision(outcome == "promoted", outcome, reason, gate.metric, gate.confidence, gate.margin,
                        gate.ibs_margin, scores.resamples, reference, scores.patients, scores.deaths, excluded,
                        scores.point[CHALLENGER], scores.point.get(CHAMPION), scores.point.get(GPA), difference,
                        test_set)

    if CHAMPION in scores.point:
        label = champion_label or CHAMPION
        outcome, why = _rule(scores, CHAMPION, gate)
        return made(outcome, f"against the champion ({label}, re-scored): " + why, label, CHAMPION)
    if gate.first_model_baseline == "none":
        return made("promoted", "first model, promoted without a baseline (gate.first_model_baseline: none)",
                    "none", None)
    if GPA not in scores.point:
        return made("undefined", "undefined: first model, but the GPA could not be scored", GPA, None)
    outcome, why = _rule(scores, GPA, gate)
    return made(outcome, "first model, against the GPA: " + why, GPA, GPA)


def locked_patients(test_ids: list[str], champion_development: list[str] | None) -> tuple[list[str], int]:
    """The test patients both models can be scored on, and how many were left out."""
    if not champion_development:
        return list(test_ids), 0
    trained = set(champion_development)
    kept = [c for c in test_ids if c not in trained]
    return kept, len(test_ids) - len(kept)


def model_curves(model: Any, frame: pd.DataFrame, grid: FloatArray) -> tuple[FloatArray, FloatArray]:
    """A packaged model's (``PackagedModel``) risks for prediction-input rows and its own survival curves: those
    its predictions use (a fold ensemble's mixture of its folds' curves, from ``fold_risks``, where it has them;
    else the curve of its risk)."""
    risk = np.asarray(model.risk(frame), dtype=float)
    if not len(grid):
        return risk, np.zeros((len(risk), 0))
    members = model.fold_risks(frame) if hasattr(model, "fold_risks") else risk
    return risk, np.asarray(model.survival(np.asarray(members, dtype=float), grid), dtype=float)


@dataclass(frozen=True)
class LockedSet:
    """Which locked test set a decision reads, and how many of its patients were not scored."""

    fingerprint: str
    patients: int
    excluded: int  # left out because the champion trained on them
    unscored: int  # without prediction inputs for a model


def locked_set(scored: Iterable[str], locked_test_set: Iterable[str] | None, excluded: int) -> LockedSet:
    """The locked test set the ``scored`` patients were drawn from (``excluded`` of its patients left out because
    the champion trained on them; None: the scored patients and the excluded ones, unnamed); a ``ValueError``
    when a scored patient is not in it, or it holds fewer unscored patients than were left out."""
    scored_ids = {str(c) for c in scored}
    if locked_test_set is None:
        return LockedSet(fingerprint_test_set(scored_ids), len(scored_ids) + excluded, excluded, 0)
    locked = {str(c) for c in locked_test_set}
    outside = sorted(scored_ids - locked)
    if outside:
        raise ValueError(f"{len(outside)} scored patient(s) are not in the locked test set, e.g. {outside[0]!r}")
    unscored = len(locked) - len(scored_ids) - excluded
    if unscored < 0:
        raise ValueError(f"{excluded} patient(s) left out because the champion trained on them, but the locked test "
                         f"set holds only {len(locked) - len(scored_ids)} patient(s) that were not scored")
    return LockedSet(fingerprint_test_set(locked), len(locked), excluded, unscored)


def nothing_to_score(gate: GateParams, reference: str, locked: LockedSet) -> Decision:
    """The ``undefined`` decision when no locked test patient is left to score (it reads no outcome)."""
    reason = (f"undefined: no locked test patient is left to score ({locked.patients} in the locked test set: "
              f"{locked.excluded} left out because the champion trained on them, {locked.unscored} without "
              "prediction inputs for a model)")
    return Decision(False, "undefined", reason, gate.metric, gate.confidence, gate.margin, gate.ibs_margin,
                    gate.resamples, reference, 0, 0, locked.excluded, {}, test_set=locked.fingerprint,
                    test_set_patients=locked.patients, unscored=locked.unscored)


def judge(challenger: Any, challenger_rows: pd.DataFrame, champion: tuple[str, Any, pd.DataFrame] | None,
          development: pd.DataFrame, test: pd.DataFrame, gate: GateParams, *, tau: float,
          excluded: int = 0, locked_test_set: Iterable[str] | None = None) -> Decision:
    """Score the challenger and the champion (``(label, model, rows)``; None for the first model, which is
    compared with the GPA) on the feature-table rows ``test`` (each model's prediction inputs for them in
    the same order) on the same bootstrap draws, with IPCW and the GPA's baseline from ``development``, and
    decide. ``locked_test_set``: the case ids of the whole locked test set ``test`` was drawn from (default:
    ``test['case_id']``), the test set the decision names and is counted on; ``excluded`` of them were left
    out because the champion trained on them, the others not in ``test`` are recorded as unscored. No row in
    ``test``: an ``undefined`` decision."""
    if "case_id" in test.columns:
        locked_info = locked_set(test["case_id"], locked_test_set, excluded)
    elif locked_test_set is None:  # rows without ids: no test set to name
        locked_info = LockedSet("", len(test) + excluded, excluded, 0)
    else:
        raise ValueError("the test rows need a case_id column to be matched with the locked test set")
    if not len(test):
        return nothing_to_score(gate, champion[0] if champion is not None else
                                (GPA if gate.first_model_baseline == "gpa" else "none"), locked_info)
    train, locked = Outcome.of_frame(development), Outcome.of_frame(test)
    grid = evaluation_times(train, locked)
    risks, curves = {}, {}
    risks[CHALLENGER], curves[CHALLENGER] = model_curves(challenger, challenger_rows, grid)
    label = None
    if champion is not None:
        label, model, rows = champion
        risks[CHAMPION], curves[CHAMPION] = model_curves(model, rows, grid)
    elif gate.first_model_baseline == "gpa":
        train_risk, risk = -gpa(development)[0], -gpa(test)[0]
        risks[GPA] = risk
        curves[GPA] = breslow_survival(train_risk, train, risk, grid) if len(grid) else np.zeros((len(risk), 0))
    scores = paired_scores(train, locked, risks, tau=tau, survival=curves, grid=grid if len(grid) else None,
                           resamples=gate.resamples, seed=gate.seed)
    decision = decide(scores, gate, champion_label=label, excluded=excluded, test_set=locked_info.fingerprint)
    return dataclasses.replace(decision, test_set_patients=locked_info.patients, unscored=locked_info.unscored)

