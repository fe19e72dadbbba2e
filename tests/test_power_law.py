"""Bootstrap interval and goodness-of-fit p-value of WeightWatcher's alpha (Clauset et al. 2009)."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


# --- the bootstrap columns in worker processes --------------------------------------------------

def test_weight_spectra_with_workers_equals_it_without(monkeypatch):
    """The bootstrap columns computed by two worker processes are the same floats as in this
    process; the workers computed them (this process refitted no resample)."""
    from utils.metrics import power_law
    from utils.metrics.weight_spectra import SpectraOptions, weight_spectra
    from utils.models.loading import load_weights

    from .conftest import TESTS_DIR

    refits_here = []
    original = power_law._refit
    monkeypatch.setattr(power_law, "_refit", lambda samples: refits_here.append(1) or original(samples))
    adapter = load_weights(str(TESTS_DIR / "params" / "tiny-llama.yaml")).adapter
    options = SpectraOptions(bootstrap=12, seed=5)
    inline, _ = weight_spectra(adapter, progress=False, options=options, workers=0)
    assert refits_here
    refits_here.clear()
    pooled, _ = weight_spectra(adapter, progress=False, options=options, workers=2)
    assert not refits_here  # not the fallback: every resample was refitted in a worker
    assert inline.alpha_p.notna().all() and inline.alpha_low.notna().all()
    pd.testing.assert_frame_equal(pooled, inline, check_exact=True)


def test_a_pool_is_lent_only_for_enough_work_and_idle_cores(monkeypatch):
    import importlib.util
    import sys
    import types

    from utils.metrics import power_law

    monkeypatch.setattr(power_law, "idle_cores", lambda: 2)
    with power_law.bootstrap_workers(power_law.POOL_MIN_SECONDS / 2) as pool:
        assert pool is None  # the pool's start-up would cost more than it saves
    with power_law.bootstrap_workers(100.0, workers=0) as pool:
        assert pool is None
    monkeypatch.setattr(power_law, "idle_cores", lambda: 1)
    with power_law.bootstrap_workers(100.0) as pool:
        assert pool is None  # one idle core: this process's own
    monkeypatch.setattr(power_law, "idle_cores", lambda: 2)
    script = types.ModuleType("__main__")
    script.__file__, script.__spec__ = "/somewhere/analysis.py", None  # `python analysis.py`
    monkeypatch.setitem(sys.modules, "__main__", script)
    with power_law.bootstrap_workers(100.0) as pool:
        assert pool is None  # its workers would run the script's top level again
    script.__spec__ = importlib.util.spec_from_loader("ipykernel_launcher", loader=None)  # python -m ...
    assert power_law._main_is_importable()
    del script.__file__
    script.__spec__ = None  # python -c
    assert power_law._main_is_importable()
    # SmolLM2's 211 matrices of 576 eigenvalues at 50 resamples: ~20 s, as measured (25 s)
    assert 10 < power_law.bootstrap_seconds(211, 576, 50) < 40


def test_a_broken_pool_leaves_the_columns_to_this_process():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from utils.metrics.power_law import alpha_columns, submit_alpha_columns, with_alpha_columns

    x = np.sort(np.random.default_rng(2).pareto(1.5, 300) + 1)
    args = (x, fit_power_law(x), 10, 0.9, 3)
    expected = alpha_columns(*args)

    class Refusing:  # a pool that broke before this submission
        def submit(self, *a):
            raise BrokenProcessPool("gone")

    class Failing:  # a pool whose worker died on this task
        def submit(self, *a):
            future = Future()
            future.set_exception(BrokenProcessPool("died"))
            return future

    assert submit_alpha_columns(Refusing(), *args) == expected
    row = {"alpha": 2.0, **submit_alpha_columns(Failing(), *args)}
    assert with_alpha_columns(row) == {"alpha": 2.0, **expected}


POOLED_RUN = """
from utils.models.loading import load_weights
from utils.metrics.weight_spectra import SpectraOptions, weight_spectra
adapter = load_weights({params!r}).adapter
print("started", flush=True)
weight_spectra(adapter, progress=False, options=SpectraOptions(bootstrap=2000), workers=2)
"""


def test_the_workers_of_a_killed_process_exit():
    """SIGKILL, as `utils.run` stops an interrupted run's kernel: the pool's workers, its forkserver
    and resource tracker go too (the workers watch the process that lent the pool)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from .conftest import TESTS_DIR

    script = POOLED_RUN.format(params=str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while len(psutil.Process(run.pid).children(recursive=True)) < 4:  # tracker, forkserver, 2 workers
            assert time.monotonic() < deadline and run.poll() is None, "the pool did not start"
            time.sleep(0.1)
        helpers = psutil.Process(run.pid).children(recursive=True)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    gone, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, [p.cmdline()[-1][:80] for p in alive]
