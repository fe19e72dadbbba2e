"""The eigenvalue phase (issue 16, item 3): time per dense symmetric eigenproblem beside this
machine's dense matrix-product rate, so the distance to the limit is a number.

    .venv/bin/python bench/bench_eigen_phase.py [--sizes 2048 4096] [--threads 1] [--repeat 1]

For each n: a float64 matrix product n x n (GFLOP/s at 2 n^3 flops), then eigenvalues only of a
random covariance (2n Gaussian rows) by torch `eigvalsh` (MKL syevd) in float64 and float32,
scipy `eigh(eigvals_only=True)` with drivers "evr" and "evd" (scipy's own OpenBLAS/LAPACK) in
float64, and the Gram route (`utils.metrics.gram_route`: the covariance of n/2 rows of width n
through its (n/2) x (n/2) centred Gram, forming included). The reduction to tridiagonal form,
4/3 n^3 flops, dominates eigenvalues-only solvers: "tridiag GFLOP/s" is 4/3 n^3 / time, to compare
with the product rate. Each cell is the best of `--repeat`; the 1-minute load average
(/proc/loadavg) is printed beside each row because the machine is shared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch

from utils.metrics.gram_route import gram_eigenvalues


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _covariance(n: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    X = torch.randn(rows, n, generator=g, dtype=torch.float64)
    return X.T @ X / rows


def _row(n: int, repeat: int) -> dict:
    a = torch.randn(n, n, dtype=torch.float64)
    mm = _best(lambda: a @ a, repeat)
    cov = _covariance(n, 2 * n)
    cov32, cov_np = cov.float(), cov.numpy()
    half = torch.randn(n // 2, n, dtype=torch.float32)
    cells = {
        "matmul64": mm,
        "torch eigvalsh f64": _best(lambda: torch.linalg.eigvalsh(cov), repeat),
        "torch eigvalsh f32": _best(lambda: torch.linalg.eigvalsh(cov32), repeat),
        "scipy evr f64": _best(lambda: scipy.linalg.eigh(cov_np, eigvals_only=True, driver="evr"), repeat),
        "scipy evd f64": _best(lambda: scipy.linalg.eigh(cov_np, eigvals_only=True, driver="evd"), repeat),
        "gram route (n/2 rows)": _best(lambda: gram_eigenvalues(half), repeat),
    }
    e64 = np.asarray(torch.linalg.eigvalsh(cov))
    e32 = np.asarray(torch.linalg.eigvalsh(cov32), dtype=np.float64)
    cells["f32 max rel err"] = float(np.max(np.abs(e32 - e64)) / e64.max())
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"eigenvalues only, {args.threads} torch thread(s), best of {args.repeat}")
    print("| n | load before | matmul f64 (s, GFLOP/s) | torch eigvalsh f64 (s, tridiag GFLOP/s) | torch f32 (s) | "
          "scipy evr f64 (s) | scipy evd f64 (s) | Gram route, n/2 rows (s) | f32 max err / lambda_max | load after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        before = _load()
        c = _row(n, args.repeat)
        rate = 2 * n**3 / c["matmul64"] / 1e9
        tri = 4 / 3 * n**3 / c["torch eigvalsh f64"] / 1e9
        print(f"| {n} | {before} | {c['matmul64']:.2f} ({rate:.1f}) | {c['torch eigvalsh f64']:.2f} ({tri:.1f}) | "
              f"{c['torch eigvalsh f32']:.2f} | {c['scipy evr f64']:.2f} | {c['scipy evd f64']:.2f} | "
              f"{c['gram route (n/2 rows)']:.2f} | {c['f32 max rel err']:.1e} | {_load()} |", flush=True)


if __name__ == "__main__":
    main()
