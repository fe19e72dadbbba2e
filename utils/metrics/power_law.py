"""Uncertainty of WeightWatcher's power-law fit: what WeightWatcher does not give.

Both follow Clauset, Shalizi & Newman (2009), "Power-law distributions in empirical data", SIAM
Review 51, with the fit of `utils.metrics.spectra.fit_power_law` (WeightWatcher 0.7.7's: xmin
among every eigenvalue but the largest by the one-sided KS distance D, continuous MLE alpha):

- `alpha_interval`: the nonparametric bootstrap of section 3.5: draw the n eigenvalues (those
  above WW's 1e-5) uniformly with replacement, refit xmin and alpha on each resample, and take
  the percentile interval of the refitted alphas (and their standard deviation).
- `power_law_pvalue`: the goodness-of-fit test of section 4.1: each synthetic sample keeps n
  points; with probability n_tail / n a point is drawn from the fitted power law above xmin
  (x = xmin (1 - u)^(-1 / (alpha - 1)), u uniform), otherwise uniformly from the observed
  eigenvalues below xmin; the sample is refitted (xmin searched again) and p is the fraction of
  synthetic KS distances at least the observed one. p < 0.1 rules the power law out (Clauset's
  threshold); a large p says only that the power law is not ruled out.

Each refit is the vectorised fit (all xmin candidates at once); resamples are drawn as one
(n_resamples, n) array from a seeded `numpy.random.Generator`, so results are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.metrics.spectra import WW_EVALS_THRESH, PowerLawFit, fit_power_law

CLAUSET_P_THRESHOLD = 0.1  # p below this rules out the power law (Clauset et al. 2009, section 4.1)


@dataclass(frozen=True)
class AlphaInterval:
    low: float  # percentile interval of the bootstrap alphas
    high: float
    std: float  # bootstrap standard deviation of alpha
    n_resamples: int  # resamples whose fit succeeded


def _tail_data(eigenvalues) -> np.ndarray:
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    return x[x > WW_EVALS_THRESH]


def _refit(samples: np.ndarray) -> np.ndarray:
    """(alpha, D) of `fit_power_law` on each row of samples (R, n); NaN where no fit exists."""
    out = np.full((samples.shape[0], 2), np.nan)
    for i, row in enumerate(samples):
        if np.unique(row).size >= 2:
            fit = fit_power_law(row)
            out[i] = fit.alpha, fit.ks_distance
    return out


def alpha_interval(eigenvalues, n_resamples: int = 100, level: float = 0.95, seed: int = 0) -> AlphaInterval:
    """Percentile bootstrap interval of WW's alpha at `level` (Clauset et al. 2009, section 3.5)."""
    x = _tail_data(eigenvalues)
    if x.size < 2 or n_resamples < 2 or not 0 < level < 1:
        raise ValueError(f"need >= 2 eigenvalues above {WW_EVALS_THRESH:g} (got {x.size}), n_resamples >= 2 "
                         f"(got {n_resamples}) and 0 < level < 1 (got {level})")
    rng = np.random.default_rng(seed)
    alphas = _refit(x[rng.integers(0, x.size, size=(n_resamples, x.size))])[:, 0]
    alphas = alphas[np.isfinite(alphas)]
    if alphas.size < 2:
        return AlphaInterval(float("nan"), float("nan"), float("nan"), int(alphas.size))
    tail = (1 - level) / 2
    low, high = np.quantile(alphas, [tail, 1 - tail])
    return AlphaInterval(float(low), float(high), float(alphas.std(ddof=1)), int(alphas.size))


def power_law_samples(x: np.ndarray, fit: PowerLawFit, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Clauset et al.'s semi-parametric synthetic samples (n_samples, n) of the sorted data x."""
    body = x[x < fit.xmin]
    from_tail = rng.random((n_samples, x.size)) < fit.n_tail / x.size
    if body.size == 0:
        from_tail[:] = True
    u = rng.random((n_samples, x.size))
    tail = fit.xmin * (1 - u) ** (-1.0 / (fit.alpha - 1.0))
    below = body[rng.integers(0, max(body.size, 1), size=(n_samples, x.size))] if body.size else tail
    return np.where(from_tail, tail, below)


def power_law_pvalue(eigenvalues, fit: PowerLawFit | None = None, n_samples: int = 100, seed: int = 0) -> float:
    """Goodness-of-fit p-value of the power law (Clauset et al. 2009, section 4.1), with WW's
    one-sided KS distance as the statistic (the one its xmin minimises)."""
    x = _tail_data(eigenvalues)
    fit = fit if fit is not None else fit_power_law(x)
    if not np.isfinite(fit.alpha) or fit.alpha <= 1 or n_samples < 1:
        return float("nan")
    synthetic = _refit(power_law_samples(x, fit, n_samples, np.random.default_rng(seed)))[:, 1]
    synthetic = synthetic[np.isfinite(synthetic)]
    return float((synthetic >= fit.ks_distance).mean()) if synthetic.size else float("nan")
