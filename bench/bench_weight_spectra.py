"""Benchmark: notebook 01's computation against WeightWatcher's analyze() on SmolLM2-135M (or another
params name: `--model llama-3.2-1b-synthetic`, random weights at Llama-3.2-1B's shape).

Both variants start from the loaded model (load time excluded) and compute per-matrix spectral
metrics for every attention and FFN matrix and the embedding:
- ours: `utils.metrics.weight_spectra.weight_spectra` (one float64 Gram eigendecomposition per matrix; effective
  rank, stable rank, spectral norm, WeightWatcher's power-law alpha vectorised over xmin
  candidates, rank slope, MP signal ratio);
- WeightWatcher 0.7.7: `WeightWatcher(model).analyze()` (SVD per matrix, its own power-law fit
  `WW_powerlaw.WWFit`, its default metrics).
Each variant runs in its own child process, so peak RSS (ru_maxrss) is that variant's alone.
Both compute the same columns: WeightWatcher's default frame (ours adds notebook 01's own metrics;
the bootstrap, off here, is timed separately). `mp_fit` and `randomize` are timed on the 14
matrices of the first two blocks (as torch Linear layers for WeightWatcher: its mp_fit refits a
kernel density at each of ~200 sigmas per matrix, far too slow for all 211 on this machine).
The alphas of the 210 block matrices are matched by layer and module name (Llama names) and
compared: share of matrices within 1% and 5% of WeightWatcher's alpha, median relative difference.

On the 1B shape the 128,256 x 2048 embedding is beyond WW's max_N = 50,000 (WW skips it, ours fits
it) and the model loads in float32 (~5 GB in each child); expect many minutes on two cores.

    .venv/bin/python bench/bench_weight_spectra.py [--model llama-3.2-1b-synthetic]
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time

MODEL = "smollm2-135m"  # the default; --model NAME for another params name
VARIANTS = ("ours", "weightwatcher", "ours-mp_fit", "weightwatcher-mp_fit", "ours-randomize", "weightwatcher-randomize")
LLAMA_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "ffn_gate",
               "up_proj": "ffn_in", "down_proj": "ffn_out"}


def _first_blocks(loaded, n: int = 2) -> list:
    return [W for layer in range(n) for W in loaded.adapter.weight_matrices(layer).values()]


def _option_ours(loaded, option: str) -> dict:
    import numpy as np

    from utils.metrics.spectra import entry_std, singular_values
    from utils.metrics.weight_spectra import SpectraOptions, matrix_row

    options, rng = SpectraOptions(**{option: True}), np.random.RandomState(0)
    rows = [matrix_row(singular_values(W).numpy(), *W.shape, entry_std(W), options, W, rng) for W in _first_blocks(loaded)]
    key = "mp_softrank" if option == "mp_fit" else "rand_distance"
    return {"n_matrices": len(rows), "alpha_median": float(np.median([r[key] for r in rows])), "alphas": {}}


def _option_ww(loaded, option: str) -> dict:
    import logging

    import numpy as np
    import torch
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    layers = []
    for W in _first_blocks(loaded):
        layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        layer.weight.data = W.detach().float().clone()
        layers.append(layer)
    np.random.seed(0)
    details = ww.WeightWatcher(model=torch.nn.Sequential(*layers)).analyze(**{option: True})
    key = "mp_softrank" if option == "mp_fit" else "rand_distance"
    return {"n_matrices": len(details), "alpha_median": float(details[key].median()), "alphas": {}}


def ours(loaded) -> dict:
    from utils.metrics.weight_spectra import weight_spectra

    df, _ = weight_spectra(loaded.adapter, progress=False)
    blocks = df[df.layer >= 0]
    return {"n_matrices": len(df), "alpha_median": float(df.alpha.median()),
            "alphas": {f"{r.layer}.{r.weight}": r.alpha for r in blocks.itertuples()}}


def weightwatcher(loaded) -> dict:
    import logging

    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    details = ww.WeightWatcher(model=loaded.model).analyze()
    alphas = {}
    for row in details.itertuples():
        found = re.search(r"layers\.(\d+)\.\w+\.(\w+)$", str(row.longname))
        if found and found.group(2) in LLAMA_NAMES:
            alphas[f"{found.group(1)}.{LLAMA_NAMES[found.group(2)]}"] = float(row.alpha)
    return {"n_matrices": len(details), "alpha_median": float(details.alpha.median()), "alphas": alphas}


def child(variant: str, model: str) -> None:
    import torch

    from utils.models.loading import load_model

    torch.set_num_threads(1)  # both variants on one thread: MKL's threaded LAPACK is slower here
    loaded = load_model(model)
    start = time.perf_counter()
    runs = {"ours": ours, "weightwatcher": weightwatcher,
            "ours-mp_fit": lambda m: _option_ours(m, "mp_fit"), "weightwatcher-mp_fit": lambda m: _option_ww(m, "mp_fit"),
            "ours-randomize": lambda m: _option_ours(m, "randomize"),
            "weightwatcher-randomize": lambda m: _option_ww(m, "randomize")}
    result = runs[variant](loaded)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mb": rss_mb, **result}))


def agreement(a: dict, b: dict) -> dict:
    """Relative differences |ours - ww| / ww over the matrices both fitted."""
    import numpy as np

    keys = sorted(set(a) & set(b))
    rel = np.array([abs(a[k] - b[k]) / abs(b[k]) for k in keys])
    return {"matched": len(keys), "within_1pct": float((rel <= 0.01).mean()), "within_5pct": float((rel <= 0.05).mean()),
            "median_rel": float(np.median(rel)), "max_rel": float(rel.max())}


def main(model: str = MODEL) -> None:
    rows = []
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, variant, model], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"## Notebook 01 weight spectra vs WeightWatcher on {model} (load excluded, one thread; mp_fit and "
          "randomize on the first two blocks, timed apart)\n")
    print("| variant | matrices | seconds | peak RSS (MB) | median (alpha; mp_softrank; rand_distance) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['n_matrices']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['alpha_median']:.4f} |")
    for a, b in zip(rows[::2], rows[1::2]):
        print(f"\n{a['variant']}: speed-up {b['seconds'] / a['seconds']:.1f}x; peak memory ratio (ww / ours): "
              f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    agree = agreement(rows[0]["alphas"], rows[1]["alphas"])
    print(f"\nalpha agreement on {agree['matched']} block matrices: {agree['within_1pct']:.1%} within 1%, "
          f"{agree['within_5pct']:.1%} within 5%, median relative difference {agree['median_rel']:.2e}, "
          f"largest {agree['max_rel']:.2e}")


def _arguments(argv: list[str]) -> tuple[str | None, str]:
    """(variant or None, model) from `[variant model]` (a child) or `[--model NAME]` (the table)."""
    if argv and argv[0] in VARIANTS:
        return argv[0], argv[1] if len(argv) > 1 else MODEL
    if argv and (argv[0] != "--model" or len(argv) != 2):
        sys.exit("usage: bench_weight_spectra.py [--model PARAMS_NAME]")
    return None, argv[1] if argv else MODEL


if __name__ == "__main__":
    variant, model = _arguments(sys.argv[1:])
    child(variant, model) if variant else main(model)
