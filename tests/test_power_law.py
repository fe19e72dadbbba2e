"""Bootstrap interval and goodness-of-fit p-value of WeightWatcher's alpha (Clauset et al. 2009)."""

from __future__ import annotations

import numpy as np
import pytest

from utils.metrics.power_law import alpha_interval, power_law_pvalue, power_law_samples
from utils.metrics.spectra import fit_power_law


def _pareto(alpha: float, n: int, seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).random(n)
    return (1 - u) ** (-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [2.0, 3.5])
def test_interval_covers_the_true_exponent_and_shrinks_with_n(alpha):
    small = alpha_interval(_pareto(alpha, 300, 0), n_resamples=60, seed=1)
    large = alpha_interval(_pareto(alpha, 3000, 0), n_resamples=60, seed=1)
    assert small.low < alpha < small.high and large.low < alpha < large.high
    assert large.high - large.low < small.high - small.low
    assert small.low <= fit_power_law(_pareto(alpha, 300, 0)).alpha <= small.high


def test_interval_coverage_over_repeats():
    """A 90% interval covers the truth in most of 12 independent samples (not a tight coverage test)."""
    hits = [alpha_interval(_pareto(2.5, 400, s), 40, level=0.9, seed=s).low < 2.5 < alpha_interval(
        _pareto(2.5, 400, s), 40, level=0.9, seed=s).high for s in range(12)]
    assert sum(hits) >= 8


def test_interval_is_reproducible_and_rejects_bad_input():
    x = _pareto(2.5, 200, 3)
    assert alpha_interval(x, 30, seed=4) == alpha_interval(x, 30, seed=4)
    with pytest.raises(ValueError, match="n_resamples"):
        alpha_interval(x, 1)
    with pytest.raises(ValueError, match="eigenvalues"):
        alpha_interval(np.array([1.0]), 10)


def test_pvalue_keeps_a_power_law_and_rejects_a_falling_density():
    """Pareto samples: p roughly uniform, most of 6 above 0.1; a density that falls linearly to 0
    at x = 2 (x = 2 - sqrt(u)) has no power-law piece: p = 0. (A uniform or exponential sample is
    not rejected at n = 2000: the xmin search finds a short piece that a steep power law fits.)"""
    p = [power_law_pvalue(_pareto(2.5, 1000, s), n_samples=40, seed=0) for s in range(6)]
    assert sum(v > 0.1 for v in p) >= 4
    falling = 2 - np.sqrt(np.random.default_rng(6).random(2000))
    assert power_law_pvalue(falling, n_samples=40, seed=0) < 0.1


def test_synthetic_samples_follow_clauset_construction():
    x = np.sort(_pareto(2.5, 2000, 7))
    fit = fit_power_law(x)
    samples = power_law_samples(x, fit, 50, np.random.default_rng(0))
    assert samples.shape == (50, x.size)
    share_tail = (samples >= fit.xmin).mean()
    assert share_tail == pytest.approx(fit.n_tail / x.size, abs=0.02)
    tail = samples[samples >= fit.xmin]
    assert 1 + tail.size / np.log(tail / fit.xmin).sum() == pytest.approx(fit.alpha, rel=0.03)  # MLE of the tail
