"""Benchmark: notebook 01's computation on a Llama-3.2-1B-shaped bf16 checkpoint, three ways.

- streamed: `utils.load_weights` (tensors read one at a time from the safetensors, NaN/Inf
  pre-scan included) + `utils.metrics.weight_spectra.weight_spectra`;
- whole model: `AutoModelForCausalLM.from_pretrained` (dtype float32, as `load_model` with the
  default params dtype; the tokenizer is not loaded) + the same `weight_spectra`;
- WeightWatcher 0.7.7 directory mode: `WeightWatcher(model="<dir>").analyze()`, which reads the
  directory's safetensors itself (framework PYSTATEDICT_DIR).
Each variant runs in its own child process: wall time includes loading, peak RSS is ru_maxrss
of that child alone; CPU time (user + system, all threads) is the fairer comparison on a
shared machine. The streamed child also times every matrix (read excluded), which gives
the per-matrix cost model (CPU seconds) of the 70B projection printed at the end.

    .venv/bin/python bench/bench_streaming.py [--checkpoint DIR] [--variants streamed,whole,weightwatcher]

Without --checkpoint it uses the checkpoint of params/llama-3.2-1b-synthetic.yaml (random bf16
weights at Llama-3.2-1B's shape, three shards, written once into .cache/synthetic/ by utils.models.synthetic).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("streamed", "whole", "weightwatcher")
# Llama-3-70B: d, d_ff, V, L, query heads, KV heads, d_head (tied embeddings: no; bf16 storage)
LLAMA3_70B = dict(d=8192, d_ff=28672, V=128256, L=80, h=64, n_kv=8, d_head=128)


def _params_file(checkpoint: Path, tmp: Path) -> Path:
    import yaml

    path = tmp / "bench-checkpoint.yaml"
    path.write_text(yaml.safe_dump({"description": "benchmark checkpoint",
                                    "source": {"kind": "local", "path": str(checkpoint)}}))
    return path


def child(variant: str, checkpoint: Path) -> dict:
    import utils.metrics.weight_spectra as weights_module

    timings = []
    if variant == "streamed":
        metrics = weights_module.weight_metrics

        def timed(W):  # per-matrix compute CPU time (all threads), the read excluded
            start = time.process_time()
            result = metrics(W)
            timings.append((int(W.shape[0]), int(W.shape[1]), time.process_time() - start))
            print(json.dumps(timings[-1]), file=sys.stderr, flush=True)
            return result

        weights_module.weight_metrics = timed
    start = time.perf_counter()
    if variant == "weightwatcher":
        import logging

        import weightwatcher as ww

        logging.getLogger("weightwatcher").setLevel(logging.ERROR)
        details = ww.WeightWatcher(model=str(checkpoint)).analyze()
        n, alpha = len(details), float(details.alpha.median())
    else:
        if variant == "streamed":
            from utils.models.loading import load_weights

            with tempfile.TemporaryDirectory() as tmp:
                adapter = load_weights(_params_file(checkpoint, Path(tmp))).adapter
        else:
            import torch
            from transformers import AutoModelForCausalLM

            from utils.models.adapters import get_adapter

            model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, use_safetensors=True)
            adapter = get_adapter(model.eval())
        df, _ = weights_module.weight_spectra(adapter, progress=False)
        n, alpha = len(df), float(df.alpha.median())
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"variant": variant, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "n_matrices": n, "alpha_median": alpha,
            "timings": timings}


def cost_model(timings: list) -> tuple[float, float]:
    """Least-squares fit of per-matrix seconds = a * long * short^2 + b * short^3 (Gram product
    and eigendecomposition of the short x short Gram), both coefficients >= 0."""
    X = np.array([[max(r, c) * min(r, c) ** 2, min(r, c) ** 3] for r, c, _ in timings], dtype=float)
    y = np.array([t for *_, t in timings])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if (coef < 0).any():  # fall back to the Gram term alone
        coef = np.array([float(X[:, 0] @ y / (X[:, 0] @ X[:, 0])), 0.0])
    return float(coef[0]), float(coef[1])


def projection(a: float, b: float, shapes: dict) -> dict:
    """Largest tensor, Gram size and projected compute time for a model's matrix shapes."""
    d, d_ff, V, L = shapes["d"], shapes["d_ff"], shapes["V"], shapes["L"]
    q, kv = shapes["h"] * shapes["d_head"], shapes["n_kv"] * shapes["d_head"]
    block = [(q, d), (kv, d), (kv, d), (d, q), (d_ff, d), (d_ff, d), (d, d_ff)]
    matrices = block * L + [(V, d), (V, d)]  # embedding and untied unembedding
    seconds = sum(a * max(r, c) * min(r, c) ** 2 + b * min(r, c) ** 3 for r, c in matrices)
    return {"largest tensor (bf16)": V * d * 2, "largest Gram (float64)": d * d * 8, "matrices": len(matrices),
            "seconds": seconds}


def default_checkpoint() -> Path:
    """The Llama-3.2-1B-shaped checkpoint of params/llama-3.2-1b-synthetic.yaml (written once
    into the model cache by utils.models.synthetic)."""
    from utils.models.synthetic import cached_checkpoint

    return cached_checkpoint("llama-3.2-1b", seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint)))
        return
    checkpoint = args.checkpoint or default_checkpoint()
    rows = []
    for variant in args.variants.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", variant, "--checkpoint", str(checkpoint)],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"{variant} failed:\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 1e9
    print(f"## Notebook 01 on {checkpoint.name} ({size:.2f} GB of safetensors), load included\n")
    print("| variant | matrices | wall time (s) | CPU time (s) | peak RSS (MB) | median alpha |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['n_matrices']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} "
              f"| {r['alpha_median']:.2f} |")
    streamed = next((r for r in rows if r["variant"] == "streamed"), None)
    if streamed and streamed["timings"]:
        a, b = cost_model(streamed["timings"])
        compute = sum(t for *_, t in streamed["timings"])
        p = projection(a, b, LLAMA3_70B)
        print(f"\nstreamed: {compute:.1f} CPU s of {streamed['cpu_seconds']:.1f} in per-matrix compute; cost model "
              f"t = {a:.3g} * long * short^2 + {b:.3g} * short^3 CPU s")
        print(f"\n70B projection (Llama-3-70B shapes {LLAMA3_70B}): {p['matrices']} matrices, largest tensor "
              f"{p['largest tensor (bf16)'] / 2**30:.2f} GiB (bf16 embedding), largest Gram "
              f"{p['largest Gram (float64)'] / 2**30:.2f} GiB, compute {p['seconds'] / 3600:.1f} CPU hours")


if __name__ == "__main__":
    main()
