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

`alpha_columns` gives both for one spectrum as notebook 01's columns. They cost 2 x n_resamples
refits of O(n^2) each (0.15 s per 576-eigenvalue matrix at 50 resamples on this machine: 25 s of
SmolLM2's 31 s, some 13 minutes at a 7B model's shapes), one spectrum independent of the next, so
`bootstrap_workers` lends a process pool on the idle cores when the work is worth its start-up;
a worker computes the same floats as this process (same code, same seeds).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from utils.machine import idle_cores
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


def alpha_columns(eigenvalues, fit: PowerLawFit, n_resamples: int, level: float, seed: int) -> dict:
    """Notebook 01's bootstrap columns of one spectrum: alpha_low, alpha_high, alpha_std
    (`alpha_interval`) and alpha_p (`power_law_pvalue` of `fit`)."""
    ci = alpha_interval(eigenvalues, n_resamples, level, seed)
    return {"alpha_low": ci.low, "alpha_high": ci.high, "alpha_std": ci.std,
            "alpha_p": power_law_pvalue(eigenvalues, fit, n_resamples, seed)}


REFIT_SECONDS_PER_ENTRY = 2.5e-9  # one fit_power_law of n eigenvalues: about this x n^2 s (576: 0.8 ms here)
POOL_MIN_SECONDS = 5.0  # a pool is started only for at least this much expected work (its start-up: ~1.5 s)


def bootstrap_seconds(n_spectra: int, n_eigenvalues: int, n_resamples: int) -> float:
    """Expected serial time of `alpha_columns` over n_spectra spectra of about n_eigenvalues each."""
    return n_spectra * 2 * n_resamples * REFIT_SECONDS_PER_ENTRY * n_eigenvalues**2


@contextlib.contextmanager
def bootstrap_workers(expected_seconds: float, workers: int | None = None):
    """A process pool for `alpha_columns`, or None (compute in this process).

    workers=None: the idle cores (`utils.machine.idle_cores`, this process's threads not
    counted), when there are at least 2 and `expected_seconds` >= POOL_MIN_SECONDS; 0: none;
    n: n processes. The pool forks its workers from a forkserver that has imported this module
    (not from this process, which may hold torch's threads or a CUDA context); on an exception
    (an interrupted run) the pending work is cancelled. multiprocessing imports the main module
    again in each worker: the default lends no pool to a plain script (`python script.py`, whose
    top level would run again unless it is under `if __name__ == "__main__":`), only where the
    main module is a module run with -m (a Jupyter kernel's ipykernel_launcher, pytest) or there
    is none (`python -c`)."""
    if workers is None:
        idle = idle_cores()
        workers = idle if idle >= 2 and expected_seconds >= POOL_MIN_SECONDS and _main_is_importable() else 0
    if workers <= 0:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _main_is_importable() -> bool:
    """Whether a worker may import this process's main module again without running a script's
    top level: a module run with -m (it has a spec), or no main file at all."""
    main = sys.modules.get("__main__")
    return getattr(main, "__spec__", None) is not None or getattr(main, "__file__", None) is None


def _exit_with(pid: int) -> None:
    """In a worker: exit once process `pid` (the one that lent the pool) is gone. A pool's workers
    wait on its queues, which they hold open themselves, so a SIGKILLed parent would leave them
    (and the forkserver) running."""

    def watch():
        while True:
            try:
                os.kill(pid, 0)
            except OSError:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def submit_alpha_columns(pool: ProcessPoolExecutor | None, *args) -> dict:
    """`alpha_columns(*args)`'s columns now (no pool), or {"alpha_columns": (Future, args)} for
    `with_alpha_columns` to fill in."""
    if pool is not None:
        with contextlib.suppress(BrokenProcessPool):  # a pool that could not start: computed here
            return {"alpha_columns": (pool.submit(alpha_columns, *args), args)}
    return alpha_columns(*args)


def with_alpha_columns(row: dict) -> dict:
    """`row` with a pending `alpha_columns` replaced by its columns: the worker's, or computed here
    when the pool broke (a worker that could not start: e.g. a script whose top level multiprocessing
    cannot import again; the numbers are the same)."""
    pending = row.pop("alpha_columns", None)
    if pending is not None:
        future, args = pending
        try:
            row.update(future.result())
        except BrokenProcessPool:
            row.update(alpha_columns(*args))
    return row
