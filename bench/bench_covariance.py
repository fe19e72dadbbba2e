"""The streaming covariance update: full Gram product X^T X against the lower-triangle strips of
`utils.metrics.covariance.StreamingCovariance` (only the lower triangle of the symmetric scatter is needed).

    .venv/bin/python bench/bench_covariance.py [--dims 1536 2048 8192] [--rows 1024] [--blocks 256 512 1024]

For each D: float32 accumulator, batches of `--rows` rows (notebook 05's batch: 8 windows x 128
tokens), best of `--repeat` timed updates after one warm-up. "full" is the former update
(`m2.addmm_(xc.T, xc)`, every entry); the strip variants are `StreamingCovariance(block=b)`.
Both include the per-batch centring and Chan merge, i.e. the whole `update` call. Also prints the
largest difference of the covariances' lower triangles (float32 rounding level expected).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from utils.metrics.covariance import StreamingCovariance


class FullGram(StreamingCovariance):
    """The update before the strips: the whole X^T X product."""

    def _add_lower_gram(self, x: torch.Tensor) -> None:
        self.m2.addmm_(x.T, x)


def best_update_seconds(acc: StreamingCovariance, rows: torch.Tensor, repeat: int) -> float:
    acc.update(rows)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        acc.update(rows)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1536, 2048, 8192])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"StreamingCovariance.update, float32, {args.rows} rows per batch, best of {args.repeat}; "
          f"{torch.get_num_threads()} torch threads; load {os.getloadavg()[0]:.1f}\n")
    print("| D | full X^T X (s) | " + " | ".join(f"strips of {b} (s)" for b in args.blocks)
          + " | best speed-up | max lower-triangle difference (relative) |")
    print("|---|---|" + "---|" * len(args.blocks) + "---|---|")
    g = torch.Generator().manual_seed(0)
    for dim in args.dims:
        rows = torch.randn(args.rows, dim, generator=g) + 3.0  # (n, D)
        full = FullGram(dim, dtype="float32")
        t_full = best_update_seconds(full, rows, args.repeat)
        cells, best, diff = [], 0.0, 0.0
        for block in args.blocks:
            acc = StreamingCovariance(dim, dtype="float32", block=block)
            t = best_update_seconds(acc, rows, args.repeat)
            cells.append(f"{t:.3f}")
            best = max(best, t_full / t)
            ref = full.covariance().tril()
            diff = max(diff, float((acc.covariance().tril() - ref).abs().max() / ref.abs().max()))
        print(f"| {dim} | {t_full:.3f} | " + " | ".join(cells) + f" | {best:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
