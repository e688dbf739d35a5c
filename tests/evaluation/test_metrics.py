"""Harrell's C-index and its bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from survival_model.evaluation.metrics import bootstrap_c, harrell_c


def test_a_perfect_ranking_scores_one_and_the_reverse_zero() -> None:
    time = np.array([10.0, 20.0, 30.0, 40.0])
    event = np.array([True, True, True, False])
    assert harrell_c(-time, time, event) == 1.0
    assert harrell_c(time, time, event) == 0.0
    assert harrell_c(np.zeros(4), time, event) == 0.5  # ties in risk count one half


def test_no_death_or_no_comparable_pair_is_nan_and_bad_input_is_an_error() -> None:
    assert np.isnan(harrell_c([1.0, 2.0], [5.0, 6.0], [False, False]))
    with pytest.raises(ValueError, match="differ in length"):
        harrell_c([1.0, 2.0], [5.0], [True])
    with pytest.raises(ValueError, match="finite"):
        harrell_c([np.nan, 2.0], [5.0, 6.0], [True, True])


def test_the_bootstrap_interval_brackets_the_estimate_and_is_repeatable() -> None:
    rng = np.random.default_rng(0)
    time = rng.exponential(300, 80)
    event = rng.random(80) < 0.7
    risk = -time + rng.normal(0, 200, 80)
    first = bootstrap_c(risk, time, event, resamples=300, seed=1)
    assert first.low <= first.value <= first.high
    assert 0.5 < first.value < 1.0 and first.resamples == 300
    assert bootstrap_c(risk, time, event, resamples=300, seed=1) == first
    wider = bootstrap_c(risk[:20], time[:20], event[:20], resamples=300, seed=1)
    assert wider.high - wider.low > first.high - first.low  # fewer patients, a wider interval
    assert np.isnan(bootstrap_c(risk, time, event, resamples=0).low)
