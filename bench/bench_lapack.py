"""Dense symmetric eigenvalues (`torch.linalg.eigvalsh`, float64): one thread vs every core, by size.

    .venv/bin/python bench/bench_lapack.py [--sizes 256 512 1024 2048 4096] [--repeat 2]

Chooses `utils.machine.LAPACK_THREADS_CROSSOVER`: the smallest n from which all cores beat one
thread. Each (n, threads) is the best of `--repeat` runs on a random SPD matrix (a covariance of
2n Gaussian rows). Prints a markdown table and the crossover measured on this machine.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def best_seconds(n: int, threads: int, repeat: int) -> float:
    g = torch.Generator().manual_seed(n)
    X = torch.randn(2 * n, n, generator=g, dtype=torch.float64)
    cov = X.T @ X / (2 * n)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            torch.linalg.eigvalsh(cov)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"eigvalsh float64, best of {args.repeat}; {cores} cores; load {os.getloadavg()[0]:.1f}")
    print(f"| n | 1 thread (s) | {cores} threads (s) | speed-up |\n|---|---|---|---|")
    crossover = None
    for n in args.sizes:
        one, many = best_seconds(n, 1, args.repeat), best_seconds(n, cores, args.repeat)
        print(f"| {n} | {one:.3f} | {many:.3f} | {one / many:.2f}x |", flush=True)
        if crossover is None and many < one:
            crossover = n
        elif many >= one:
            crossover = None
    print(f"crossover (every larger size measured is faster on {cores} threads): {crossover}")


if __name__ == "__main__":
    main()
