"""The promotion gate's rule on deliberately built models scored on the same synthetic patients: a small true
difference on 30 patients is not shown (no promotion), a large one on 120 is; undefined scores and a worse
integrated Brier score refuse, with the reason; the first model against the GPA; a champion trained under
another pseudonym key stops the gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from survival_model.config import GateParams
from survival_model.evaluation.scores import Outcome
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.registry.gate import (
    Decision,
    PseudonymKeyError,
    check_pseudonym_key,
    fingerprint_test_set,
    judge,
    locked_patients,
)


def cohort(n: int, seed: int) -> tuple[np.ndarray, Outcome]:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    death = rng.exponential(365 * np.exp(-risk))
    censor = rng.uniform(100, 1500, n)
    return risk, Outcome.of(np.minimum(death, censor).round() + 1, death <= censor)


class Curves:
    """A stand-in for a packaged model: fixed risks, exponential curves around one baseline (``scale``: how
    many times the true baseline hazard its curves assume)."""

    def __init__(self, risk: np.ndarray, scale: float = 1.0) -> None:
        self._risk = risk
        self.scale = scale

    def risk(self, frame: Any) -> np.ndarray:
        return self._risk

    def survival(self, risk: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.exp(-self.scale * np.outer(np.exp(risk), np.asarray(times) / 365))


def frame_of(outcome: Outcome, seed: int, prefix: str = "p") -> pd.DataFrame:
    """Feature-table rows: the outcome, ids, and GPA components unrelated to it (a useless GPA)."""
    rng = np.random.default_rng(seed)
    n = len(outcome.time)
    return pd.DataFrame({"case_id": [f"{prefix}{i:03d}" for i in range(n)], "time_days": outcome.time,
                         "event": outcome.event.astype(int), "age": rng.uniform(40, 80, n),
                         "kps": rng.choice([60, 70, 80, 90], n), "extracranial": rng.uniform(size=n) < 0.5,
                         "n_brain_mets": rng.integers(1, 5, n)})


def decide_on(test_n: int, seed: int, challenger_noise: float, champion_noise: float,
              gate: GateParams | None = None) -> Decision:
    """Challenger = truth + noise, champion = truth + more (or less) noise, on ``test_n`` test patients."""
    _, train = cohort(200, 1)
    truth, test = cohort(test_n, seed)
    rng = np.random.default_rng(seed + 100)
    challenger = Curves(truth + challenger_noise * rng.normal(size=test_n))
    champion = Curves(truth + champion_noise * rng.normal(size=test_n))
    locked = frame_of(test, seed)
    return judge(challenger, locked, ("champion v1", champion, locked), frame_of(train, 4, "d"), locked,
                 gate or GateParams(), tau=730)


def test_a_small_true_difference_on_30_patients_is_not_promoted() -> None:
    """Noise SD 0.8 against 1.0 (the challenger truly better by about 0.02 C): on 30 patients its point
    estimate beats the champion by more than the old 0.005, but the interval of the difference is about
    +-0.15 wide, so nothing is shown."""
    decision = decide_on(30, 11, 0.8, 1.0)
    d = decision.difference["uno_c"]
    assert d["value"] > 0.005  # the old point-estimate rule would have promoted
    assert not decision.promote and decision.outcome == "refused" and "does not beat" in decision.reason
    assert d["lower"] < 0 < d["upper"] and 0.15 < d["high"] - d["low"] < 0.6
    assert decision.patients == 30 and decision.resamples == 2000 and d["resamples"] >= 1800


def test_a_large_difference_on_120_patients_is_promoted() -> None:
    decision = decide_on(120, 2, 0.0, 2.0)  # the true risk against a very noisy one
    d, ibs = decision.difference["uno_c"], decision.difference["integrated_brier"]
    assert decision.promote and decision.outcome == "promoted" and "better with 95% confidence" in decision.reason
    assert d["lower"] > 0 and ibs["upper"] < GateParams().ibs_margin
    assert decision.reference == "champion v1" and decision.champion is not None and decision.baseline is None


def test_the_confidence_and_the_margin_make_it_stricter() -> None:
    lenient = decide_on(120, 2, 0.0, 2.0, GateParams(confidence=0.5))
    d = lenient.difference["uno_c"]
    assert lenient.promote
    assert not decide_on(120, 2, 0.0, 2.0, GateParams(margin=d["lower"] + 0.01)).promote
    strict = decide_on(120, 2, 0.0, 2.0, GateParams(confidence=0.999))
    assert strict.difference["uno_c"]["lower"] < d["lower"]


def test_an_undefined_score_is_refused_with_the_reason() -> None:
    _, train = cohort(200, 1)
    truth, test = cohort(60, 2)
    broken = truth.copy()
    broken[5] = np.nan
    locked = frame_of(test, 5)
    decision = judge(Curves(broken), locked, ("champion v1", Curves(truth), locked), frame_of(train, 4, "d"),
                     locked, GateParams(), tau=730)
    assert not decision.promote and decision.outcome == "undefined" and "undefined" in decision.reason
    assert decision.tags()["gate.decision"] == "undefined" and "undefined" in decision.markdown("m", 2)
    nobody_died = frame_of(Outcome(test.time, np.zeros(60, dtype=bool)), 5)
    decision = judge(Curves(truth), nobody_died, ("champion v1", Curves(-truth), nobody_died),
                     frame_of(train, 4, "d"), nobody_died, GateParams(), tau=730)
    assert decision.outcome == "undefined" and "0 of 2000 resamples" in decision.reason


def test_a_worse_integrated_brier_score_is_refused() -> None:
    """The same ranking as the true risk (better C than the noisy champion) with curves that assume ten
    times the true hazard: discrimination shown, calibration not non-inferior."""
    _, train = cohort(200, 1)
    truth, test = cohort(120, 2)
    rng = np.random.default_rng(3)
    locked = frame_of(test, 5)
    champion = Curves(truth + 2.0 * rng.normal(size=120))
    decision = judge(Curves(truth, scale=10.0), locked, ("champion v1", champion, locked), frame_of(train, 4, "d"),
                     locked, GateParams(), tau=730)
    assert decision.difference["uno_c"]["lower"] > 0
    assert not decision.promote and decision.outcome == "refused"
    assert "not shown non-inferior" in decision.reason and decision.difference["integrated_brier"]["upper"] > 0.02
    c_only = judge(Curves(truth, scale=10.0), locked, ("champion v1", champion, locked), frame_of(train, 4, "d"),
                   locked, GateParams(ibs_margin=None), tau=730)  # the Brier part left out: the C part decides
    assert c_only.promote and "ibs_margin null" in c_only.reason and c_only.tags()["gate.ibs_margin"] == "none"
    assert "not checked" in c_only.markdown("m", 2)


def test_the_first_model_against_the_gpa() -> None:
    _, train = cohort(200, 1)
    truth, test = cohort(120, 2)
    development, locked = frame_of(train, 4, "d"), frame_of(test, 5)
    first = judge(Curves(truth), locked, None, development, locked, GateParams(), tau=730)  # the GPA is noise here
    assert first.promote and first.reference == "gpa" and first.baseline is not None and first.champion is None
    assert "first model, against the GPA" in first.reason and first.difference["uno_c"]["lower"] > 0
    reversed_first = judge(Curves(-truth), locked, None, development, locked, GateParams(), tau=730)
    assert not reversed_first.promote and "GPA" in reversed_first.reason
    unguarded = judge(Curves(-truth), locked, None, development, locked, GateParams(first_model_baseline="none"),
                      tau=730)
    assert unguarded.promote and unguarded.reference == "none" and unguarded.difference == {}


def test_a_decision_names_its_test_set_and_round_trips() -> None:
    decision = decide_on(120, 2, 0.0, 2.0)
    assert decision.test_set == fingerprint_test_set(frame_of(cohort(120, 2)[1], 2)["case_id"])
    assert fingerprint_test_set(["b", "a"]) == fingerprint_test_set(["a", "b"]) != fingerprint_test_set(["a"])
    counted = decision.counted(3)
    assert Decision(**counted.as_dict()) == counted
    tags = counted.tags()
    assert tags["gate.test_set"] == decision.test_set and tags["gate.test_set_decisions"] == "3"
    assert float(tags["gate.delta.uno_c.lower"]) == pytest.approx(decision.difference["uno_c"]["lower"], abs=1e-4)
    assert tags["gate.confidence"] == "0.95" and tags["gate.resamples"] == "2000" and "gate.ibs_margin" in tags
    text = counted.markdown("m", 4)
    assert "has now served 3 gate decision(s)" in text and "one-sided lower" in text and "| champion v1 |" in text


def test_patients_the_champion_trained_on_are_left_out() -> None:
    assert locked_patients(["a", "b", "c"], ["b", "x"]) == (["a", "c"], 1)
    assert locked_patients(["a", "b"], None) == (["a", "b"], 0)


def test_a_champion_trained_under_another_key_stops_the_gate() -> None:
    ours, theirs = Pseudonymiser(b"k" * 32).fingerprint, Pseudonymiser(b"another-key-" * 3).fingerprint
    check_pseudonym_key({"pseudonym_key_fingerprint": ours}, ours)  # the same key: nothing to say
    with pytest.raises(PseudonymKeyError, match=r"differs from the one champion v2 was trained with") as caught:
        check_pseudonym_key({"pseudonym_key_fingerprint": theirs}, ours, "champion v2")
    message = str(caught.value)
    assert theirs in message and ours in message and "cannot be left out" in message and "by hand" in message
    with pytest.raises(PseudonymKeyError, match="no fingerprint recorded"):
        check_pseudonym_key({}, ours)  # a package older than the fingerprint


def test_the_decision_is_counted_on_the_whole_locked_test_set() -> None:
    """Patients left out (the champion trained on them, or no prediction inputs) are still the same locked test
    set looked at again: the decision names the whole set, and records how many were scored and left out."""
    _, train = cohort(200, 1)
    truth, test = cohort(60, 2)
    locked = frame_of(test, 5)
    whole = [*locked["case_id"], "trained-1", "trained-2", "no-inputs"]
    decision = judge(Curves(truth), locked, ("champion v1", Curves(-truth), locked), frame_of(train, 4, "d"),
                     locked, GateParams(), tau=730, excluded=2, locked_test_set=whole)
    assert decision.test_set == fingerprint_test_set(whole) != fingerprint_test_set(locked["case_id"])
    assert (decision.patients, decision.excluded, decision.unscored, decision.test_set_patients) == (60, 2, 1, 63)
    tags = decision.tags()
    assert (tags["gate.patients"], tags["gate.excluded"], tags["gate.unscored"], tags["gate.test_set_patients"]) == (
        "60", "2", "1", "63")
    assert "Scored on 60 of the 63 locked test patients" in decision.markdown("m", 2)
    assert "1 without prediction inputs" in decision.markdown("m", 2)
    with pytest.raises(ValueError, match=r"1 scored patient\(s\) are not in the locked test set, e\.g\. 'p000'"):
        judge(Curves(truth), locked, None, frame_of(train, 4, "d"), locked, GateParams(), tau=730,
              locked_test_set=whole[1:])
    with pytest.raises(ValueError, match=r"5 patient\(s\) left out .* holds only 3 patient\(s\) that were not scored"):
        judge(Curves(truth), locked, None, frame_of(train, 4, "d"), locked, GateParams(), tau=730, excluded=5,
              locked_test_set=whole)


def test_no_test_patient_left_to_score_is_undefined() -> None:
    """Every locked test patient trained on by the champion: nothing can be scored, nothing is promoted."""
    _, train = cohort(200, 1)
    nobody = frame_of(cohort(5, 2)[1], 5).iloc[:0]
    decision = judge(Curves(np.zeros(0)), nobody, ("champion v3", Curves(np.zeros(0)), nobody),
                     frame_of(train, 4, "d"), nobody, GateParams(), tau=730, excluded=4,
                     locked_test_set=["a", "b", "c", "d", "e"])
    assert not decision.promote and decision.outcome == "undefined" and decision.reference == "champion v3"
    assert decision.reason == ("undefined: no locked test patient is left to score (5 in the locked test set: 4 left "
                               "out because the champion trained on them, 1 without prediction inputs for a model)")
    assert decision.patients == 0 and not decision.read_test_set  # no outcome read: not counted
    assert decision.test_set == fingerprint_test_set(["e", "d", "c", "b", "a"])
    assert decision.tags()["gate.decision"] == "undefined"
    text = decision.markdown("m", 4)
    assert "(undefined)" in text and "the decision is not counted on it" in text


def test_the_gate_benchmark_states_a_null_ibs_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """``registry.gate.ibs_margin: null`` (gate on the C part alone) is a documented setting: the benchmark's
    summary says ``none`` instead of failing on ``f"{None:g}"``."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gate.py"
    spec = importlib.util.spec_from_file_location("gate_benchmark", path)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the repository first on the path
    spec.loader.exec_module(benchmark)
    assert "ibs_margin none," in benchmark.rule_text(GateParams(ibs_margin=None))
    assert "ibs_margin 0.02," in benchmark.rule_text(GateParams(ibs_margin=0.02))
