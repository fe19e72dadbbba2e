"""Benchmark: notebook 01's computation against WeightWatcher's analyze() on SmolLM2-135M.

Both variants start from the loaded model (load time excluded) and compute per-matrix spectral
metrics for every attention and FFN matrix and the embedding:
- ours: `utils.weights.weight_spectra` (one float64 Gram eigendecomposition per matrix; effective
  rank, stable rank, spectral norm, power-law alpha with KS-optimal xmin, MP signal ratio);
- WeightWatcher 0.7: `WeightWatcher(model).analyze()` (SVD per matrix, power-law fit through the
  `powerlaw` package, its default metrics).
Each variant runs in its own child process, so peak RSS (ru_maxrss) is that variant's alone.
The alphas of matrices both tools fitted are compared (median absolute difference).

    .venv/bin/python bench/bench_weight_spectra.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

MODEL = "smollm2-135m"


def ours(loaded) -> dict:
    from utils.weights import weight_spectra

    df, _ = weight_spectra(loaded.adapter, progress=False)
    return {"n_matrices": len(df), "alpha_median": float(df.alpha.median())}


def weightwatcher(loaded) -> dict:
    import logging

    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    details = ww.WeightWatcher(model=loaded.model).analyze()
    return {"n_matrices": len(details), "alpha_median": float(details.alpha.median())}


def child(variant: str) -> None:
    from utils.models import load_model

    loaded = load_model(MODEL)
    start = time.perf_counter()
    result = {"ours": ours, "weightwatcher": weightwatcher}[variant](loaded)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mb": rss_mb, **result}))


def main() -> None:
    rows = []
    for variant in ("ours", "weightwatcher"):
        done = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    a, b = rows
    print(f"## Notebook 01 weight spectra vs WeightWatcher on {MODEL} (load excluded)\n")
    print("| variant | matrices | seconds | peak RSS (MB) | median alpha |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['n_matrices']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['alpha_median']:.2f} |")
    print(f"\nspeed-up: {b['seconds'] / a['seconds']:.1f}x; peak memory ratio (ww / ours): "
          f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    child(sys.argv[1]) if len(sys.argv) > 1 else main()
