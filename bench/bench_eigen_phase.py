"""The eigenvalue phase (issue 16, item 3): time per dense symmetric eigenproblem beside this
machine's dense matrix-product rate, so the distance to the limit is a number.

    .venv/bin/python bench/bench_eigen_phase.py [--sizes 1024 2048] [--threads 1] [--repeat 1] [--no-scipy]

For each n: a float64 matrix product n x n (GFLOP/s at 2 n^3 flops), then eigenvalues only of a
random covariance (2n Gaussian rows) by torch `eigvalsh` (MKL syevd) in float64 and float32,
scipy `eigh(eigvals_only=True)` with drivers "evr" and "evd" (scipy's own OpenBLAS LAPACK) in
float64, and the Gram route (`utils.metrics.gram_route`: the covariance eigenvalues of n/2 rows
of width n through their (n/2) x (n/2) centred Gram, forming included). The reduction to
tridiagonal form, 4/3 n^3 flops, dominates eigenvalues-only solvers: "tridiag GFLOP/s" is
4/3 n^3 / time, to compare with the product rate.

The machine is shared: every cell is the process CPU time (`time.process_time`, best of
`--repeat`) of a single-threaded call, which other processes barely change, and the wall time
and 1-minute load average (/proc/loadavg) are printed beside it. "f32 err" is
max |lambda_f32 - lambda_f64| / lambda_max, and the largest change of NerVE's metrics (SE, PR,
EEE, relative) between the float32 and float64 eigenvalues.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch

from utils.metrics.gram_route import centred_gram
from utils.metrics.spectra import early_eigenvalue_enrichment, participation_ratio, spectral_entropy


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def _best(fn, repeat: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds), each the best of `repeat` calls."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return min(cpu), min(wall)


def _gram_route(rows: torch.Tensor) -> torch.Tensor:
    """`gram_eigenvalues`' arithmetic at the bench's thread count (it would pick threads by load)."""
    return torch.linalg.eigvalsh(centred_gram(rows).div_(rows.shape[0] - 1))


def _metric_change(e32: np.ndarray, e64: np.ndarray) -> float:
    """Largest relative change of SE, PR, EEE between float32 and float64 eigenvalues."""
    e32, e64 = np.clip(e32[::-1], 0, None), np.clip(e64[::-1], 0, None)
    return max(abs(f(e32) / f(e64) - 1) for f in (spectral_entropy, participation_ratio, early_eigenvalue_enrichment))


def _cells(n: int, repeat: int, scipy_drivers: bool) -> dict:
    a = torch.randn(n, n, dtype=torch.float64)
    g = torch.Generator().manual_seed(n)
    X = torch.randn(2 * n, n, generator=g, dtype=torch.float64)
    cov = X.T @ X / (2 * n)
    del X
    cov32, cov_np, half = cov.float(), cov.numpy(), torch.randn(n // 2, n)
    cells = {"matmul": _best(lambda: a @ a, repeat),
             "f64": _best(lambda: torch.linalg.eigvalsh(cov), repeat),
             "f32": _best(lambda: torch.linalg.eigvalsh(cov32), repeat),
             "gram": _best(lambda: _gram_route(half), repeat)}
    if scipy_drivers:
        for driver in ("evr", "evd"):
            cells[driver] = _best(lambda: scipy.linalg.eigh(cov_np, eigvals_only=True, driver=driver), repeat)
    e64 = torch.linalg.eigvalsh(cov).numpy()
    e32 = torch.linalg.eigvalsh(cov32).double().numpy()
    cells["f32 err"] = (float(np.max(np.abs(e32 - e64)) / e64.max()), _metric_change(e32, e64))
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-scipy", action="store_true", help="skip scipy's drivers (slow at n = 8192)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"eigenvalues only, {args.threads} thread(s), CPU seconds (wall seconds), best of {args.repeat}")
    print("| n | matmul f64: CPU s (GFLOP/s) | torch eigvalsh f64: CPU s (tridiag GFLOP/s) | torch eigvalsh f32 | "
          "scipy evr f64 | scipy evd f64 | Gram route, n/2 rows | f32 err (eigenvalues; SE/PR/EEE) | load before / after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        before = _load()
        c = _cells(n, args.repeat, not args.no_scipy)

        def cell(k):
            return f"{c[k][0]:.2f} ({c[k][1]:.2f})" if k in c else "-"

        rate, tri = 2 * n**3 / c["matmul"][0] / 1e9, 4 / 3 * n**3 / c["f64"][0] / 1e9
        print(f"| {n} | {c['matmul'][0]:.2f} ({rate:.1f}) | {c['f64'][0]:.2f} ({tri:.1f}) | {cell('f32')} | {cell('evr')} | "
              f"{cell('evd')} | {cell('gram')} | {c['f32 err'][0]:.1e}; {c['f32 err'][1]:.1e} | {before} / {_load()} |",
              flush=True)


if __name__ == "__main__":
    main()
