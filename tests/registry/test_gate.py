"""The promotion gate's rule on deliberately built models: the true risk (better) against a noisy or reversed
one (worse), scored on the same synthetic patients."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from survival_model.config import GateParams
from survival_model.evaluation.scores import Outcome
from survival_model.registry.gate import Decision, decide, judge, locked_patients, package_scores, score_baseline


def cohort(n: int, seed: int) -> tuple[np.ndarray, Outcome]:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    death = rng.exponential(365 * np.exp(-risk))
    censor = rng.uniform(100, 1500, n)
    return risk, Outcome.of(np.minimum(death, censor).round() + 1, death <= censor)


class Curves:
    """A stand-in for a packaged model: fixed risks, exponential curves around one baseline."""

    def __init__(self, risk: np.ndarray) -> None:
        self._risk = risk

    def risk(self, frame: Any) -> np.ndarray:
        return self._risk

    def survival(self, risk: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.exp(-np.outer(np.exp(risk), np.asarray(times) / 365))


@pytest.fixture(scope="module")
def scored() -> dict[str, dict[str, float]]:
    train_risk, train = cohort(200, 1)
    truth, test = cohort(120, 2)
    rng = np.random.default_rng(3)
    models = {"better": truth, "noisy": truth + rng.normal(scale=2.0, size=len(truth)), "reversed": -truth}
    out = {name: package_scores(Curves(r), None, train, test, tau=730) for name, r in models.items()}
    out["gpa"] = score_baseline(train_risk * 0.2 + rng.normal(size=200), train, truth * 0.2 + rng.normal(size=120),
                                test, tau=730)
    return out


def test_the_true_risk_scores_best(scored: dict[str, dict[str, float]]) -> None:
    assert scored["better"]["uno_c"] > scored["noisy"]["uno_c"] > 0.5 > scored["reversed"]["uno_c"]
    assert scored["better"]["integrated_brier"] < scored["reversed"]["integrated_brier"]
    assert all(np.isfinite(v) for s in scored.values() for v in s.values())


def test_a_better_challenger_is_promoted_a_worse_one_refused(scored: dict[str, dict[str, float]]) -> None:
    gate = GateParams()
    _, test = cohort(120, 2)
    promoted = decide(scored["better"], gate, champion=scored["noisy"], champion_label="champion v1", baseline=None,
                      test=test)
    assert promoted.promote and promoted.reference == "champion v1" and "beats" in promoted.reason
    refused = decide(scored["noisy"], gate, champion=scored["better"], champion_label="champion v2", baseline=None,
                     test=test)
    assert not refused.promote and "does not beat" in refused.reason
    assert refused.tags()["gate.decision"] == "refused" and refused.tags()["gate.champion.uno_c"]
    assert "not promoted" in refused.markdown("m", 3) and "| champion v2 |" in refused.markdown("m", 3)


def test_the_margin_and_the_brier_tolerance(scored: dict[str, dict[str, float]]) -> None:
    _, test = cohort(120, 2)
    better, noisy = scored["better"], scored["noisy"]
    gap = better["uno_c"] - noisy["uno_c"]
    too_wide = GateParams(margin=gap + 0.01)
    assert not decide(better, too_wide, champion=noisy, champion_label="c", baseline=None, test=test).promote
    worse_brier = {**better, "integrated_brier": noisy["integrated_brier"] + 0.05}
    decision = decide(worse_brier, GateParams(ibs_tolerance=0.01), champion=noisy, champion_label="c",
                      baseline=None, test=test)
    assert not decision.promote and "integrated Brier" in decision.reason
    undefined = {**better, "uno_c": float("nan")}
    assert not decide(undefined, GateParams(), champion=noisy, champion_label="c", baseline=None, test=test).promote


def test_the_first_model_must_beat_the_gpa(scored: dict[str, dict[str, float]]) -> None:
    _, test = cohort(120, 2)
    first = decide(scored["better"], GateParams(), champion=None, champion_label=None, baseline=scored["gpa"],
                   test=test)
    assert first.promote and first.reference == "gpa"
    reversed_first = decide(scored["reversed"], GateParams(), champion=None, champion_label=None,
                            baseline=scored["gpa"], test=test)
    assert not reversed_first.promote and "GPA" in reversed_first.reason
    assert not decide(scored["better"], GateParams(), champion=None, champion_label=None, baseline=None,
                      test=test).promote
    assert decide(scored["reversed"], GateParams(first_model_baseline="none"), champion=None, champion_label=None,
                  baseline=None, test=test).promote


def test_patients_the_champion_trained_on_are_left_out() -> None:
    assert locked_patients(["a", "b", "c"], ["b", "x"]) == (["a", "c"], 1)
    assert locked_patients(["a", "b"], None) == (["a", "b"], 0)


def test_a_decision_round_trips_as_a_dict(scored: dict[str, dict[str, float]]) -> None:
    _, test = cohort(120, 2)
    decision = decide(scored["better"], GateParams(), champion=scored["noisy"], champion_label="c", baseline=None,
                      test=test, excluded=2)
    assert Decision(**decision.as_dict()) == decision and decision.tags()["gate.excluded"] == "2"


def frame_of(outcome: Outcome, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = len(outcome.time)
    return pd.DataFrame({"time_days": outcome.time, "event": outcome.event.astype(int), "age": rng.uniform(40, 80, n),
                         "kps": rng.choice([60, 70, 80, 90], n), "extracranial": rng.uniform(size=n) < 0.5,
                         "n_brain_mets": rng.integers(1, 5, n)})


def test_judge_scores_both_models_on_the_same_patients() -> None:
    _, train = cohort(200, 1)
    truth, test = cohort(120, 2)
    development, locked = frame_of(train, 4), frame_of(test, 5)
    better, reversed_model = Curves(truth), Curves(-truth)
    promoted = judge(better, locked, ("champion v1", reversed_model, locked), development, locked, GateParams(),
                     tau=730)
    assert promoted.promote and promoted.champion is not None and promoted.baseline is None
    assert promoted.challenger["harrell_c"] == pytest.approx(1 - promoted.champion["harrell_c"])
    refused = judge(reversed_model, locked, ("champion v2", better, locked), development, locked, GateParams(),
                    tau=730, excluded=3)
    assert not refused.promote and refused.excluded == 3 and refused.patients == 120
    first = judge(better, locked, None, development, locked, GateParams(), tau=730)  # the GPA is noise here
    assert first.promote and first.reference == "gpa" and first.baseline is not None
    assert not judge(reversed_model, locked, None, development, locked, GateParams(), tau=730).promote
