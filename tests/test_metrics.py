"""Harrell's C-index and its bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from survival_model.metrics import bootstrap_c, harrell_c


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


def _draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential survival with log-hazard = the risk, uniform censoring (about 30 %)."""
    risk = rng.standard_normal(n)
    death = rng.exponential(300 * np.exp(-risk))
    censor = rng.uniform(50, 1500, n)
    return risk, np.minimum(death, censor), death <= censor


@pytest.mark.slow  # 100 simulated cohorts x 200 bootstrap draws each (~45 s)
def test_the_bootstrap_interval_covers_the_population_c_index_at_about_its_level() -> None:
    rng = np.random.default_rng(0)
    population = harrell_c(*_draw(20_000, rng))  # the C-index of this risk in this population
    estimates, covered, widths = [], 0, []
    for _ in range(100):
        risk, time, event = _draw(80, rng)
        c = bootstrap_c(risk, time, event, resamples=200, seed=int(rng.integers(1 << 30)))
        estimates.append(c.value)
        covered += c.low <= population <= c.high
        widths.append(c.high - c.low)
    # 95 % nominal; 100 repetitions: binomial SE 2.2 %, and the percentile bootstrap of C under-covers a little
    assert 86 <= covered <= 99, covered
    # the interval is as wide as the estimate's spread over samples says (95 %: about 3.9 SD), within 25 %
    assert 0.75 < np.mean(widths) / (3.92 * np.std(estimates, ddof=1)) < 1.25


def test_the_bootstrap_is_repeatable_and_narrows_with_more_patients() -> None:
    risk, time, event = _draw(320, np.random.default_rng(1))
    first = bootstrap_c(risk, time, event, resamples=300, seed=1)
    assert first.resamples == 300 and bootstrap_c(risk, time, event, resamples=300, seed=1) == first
    quarter = bootstrap_c(risk[:80], time[:80], event[:80], resamples=300, seed=1)
    ratio = (quarter.high - quarter.low) / (first.high - first.low)
    assert 1.5 < ratio < 2.7  # a quarter of the patients: about twice the width (1 / sqrt(n))
    assert np.isnan(bootstrap_c(risk, time, event, resamples=0).low)
