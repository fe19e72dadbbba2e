"""Benchmark: notebook 01's bootstrap columns (alpha_low, alpha_high, alpha_std, alpha_p) in this
process against `utils.metrics.power_law.bootstrap_workers`' process pool on the idle cores.

`weight_spectra(options=SpectraOptions(bootstrap=50))` on SmolLM2-135M (or `--model NAME`), weights
streamed, once with `workers=0` (every refit in this process) and once with one worker per idle
core; the two tables must be equal float for float. Printed: wall seconds of each, the ratio, and
this process's peak RSS (a worker, forked from a forkserver holding numpy and torch, had an RSS of
about 230 MB, mostly pages shared with the forkserver, in `ps` on this machine).

    .venv/bin/python bench/bench_bootstrap.py [--model smollm2-135m] [--resamples 50]
"""

from __future__ import annotations

import argparse
import resource
import time

import pandas as pd
import torch

from utils.machine import idle_cores
from utils.metrics.weight_spectra import SpectraOptions, weight_spectra
from utils.models.loading import load_weights


def main(model: str, resamples: int) -> None:
    torch.set_num_threads(1)
    adapter = load_weights(model).adapter
    options = SpectraOptions(bootstrap=resamples)
    workers = max(2, idle_cores())
    times, tables = {}, {}
    for n in (0, workers):
        start = time.perf_counter()
        tables[n], _ = weight_spectra(adapter, progress=False, options=options, workers=n)
        times[n] = time.perf_counter() - start
    pd.testing.assert_frame_equal(tables[workers], tables[0], check_exact=True)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"## Notebook 01's bootstrap ({resamples} resamples + {resamples} synthetic samples per matrix) on {model}, "
          f"{len(tables[0])} matrices\n")
    print("| variant | seconds | peak RSS (MB) |\n|---|---|---|")
    print(f"| this process (workers=0) | {times[0]:.1f} | {own:.0f} |")
    print(f"| {workers} worker processes | {times[workers]:.1f} | {own:.0f} (this process) |")
    print(f"\nspeed-up {times[0] / times[workers]:.2f}x; the tables are equal float for float")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--resamples", type=int, default=50)
    args = parser.parse_args()
    main(args.model, args.resamples)
