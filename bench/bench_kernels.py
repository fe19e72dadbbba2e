"""Attention-kernel spectra: the seed's dense algorithm against the factored one (utils.metrics.kernels).

Dense (seed `1.py`): per head, form A_h = W_Q_h^T W_K_h (d x d, float32) and call
torch.linalg.eigvals and torch.linalg.svdvals on it. Factored: eigenvalues of W_K_h W_Q_h^T and
singular values from thin QR factors, all heads of a layer batched, float64.

Workloads: SmolLM2-135M (all 30 layers x 9 heads) and one random-initialised layer with
Qwen2.5-3B shapes (d = 2048, 16 query heads on 2 KV heads, d_head = 128); the dense 3B run covers
`--dense-heads` heads and is extrapolated to 16 per head. Each variant runs in a fresh child
process that loads only the Q and K weights (saved beforehand), with one torch thread so that
timings do not depend on what else shares the machine's cores; memory is the child's peak RSS
(ru_maxrss) minus its RSS once the weights are loaded, i.e. the extra peak of the computation.

    python bench/bench_kernels.py [--dense-heads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import resource
import tempfile
import time

import numpy as np
import torch

QWEN_3B = dict(d=2048, h=16, n_kv=2, d_head=128)


def smollm_layers():
    from utils import load_model

    adapter = load_model("smollm2-135m").adapter
    return [adapter.attention(i) for i in range(adapter.dims.L)]


def qwen_layer():
    from utils.models.adapters import AttentionWeights

    c = QWEN_3B
    g = torch.Generator().manual_seed(0)
    std = c["d"] ** -0.5
    return [AttentionWeights(
        q=torch.randn(c["h"], c["d_head"], c["d"], generator=g) * std,
        k=torch.randn(c["n_kv"], c["d_head"], c["d"], generator=g) * std,
        v=torch.empty(0), o=torch.empty(0), kv_head_of=torch.arange(c["h"]) // (c["h"] // c["n_kv"]), scale=1.0,
    )]


def dense(layers, max_heads: int | None):
    """Seed: per head, the d x d kernel, eigvals and svdvals; top-d_head |lambda| and sigma kept."""
    mags, svs = [], []
    for attn in layers:
        heads = range(attn.q.shape[0]) if max_heads is None else range(max_heads)
        for h in heads:
            A = attn.q[h].float().T @ attn.key_of(h).float()  # (d, d)
            lam = torch.linalg.eigvals(A)
            s = torch.linalg.svdvals(A)
            m = attn.q.shape[1]
            mags.append(lam.abs().sort(descending=True).values[:m].double())
            svs.append(s[:m].double())
    return torch.stack(mags), torch.stack(svs)


def factored(layers, max_heads: int | None):
    from utils.metrics.kernels import head_kernels

    mags, svs = [], []
    for attn in layers:
        kern = head_kernels(attn)
        lam, s = kern.eigenvalues(), kern.singular_values()
        n = lam.shape[0] if max_heads is None else max_heads
        mags.append(lam.abs()[:n])
        svs.append(s[:n])
    return torch.cat(mags), torch.cat(svs)


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(weights: str, variant: str, max_heads, queue):
    torch.set_num_threads(1)

    layers = torch.load(weights, weights_only=False)
    base = rss_mb()
    fn = dense if variant == "dense" else factored
    start = time.perf_counter()
    mags, svs = fn(layers, max_heads)
    seconds = time.perf_counter() - start
    queue.put((seconds, rss_mb() - base, mags.numpy(), svs.numpy()))


def measure(weights: str, variant: str, max_heads=None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(weights, variant, max_heads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-heads", type=int, default=2, help="heads of the dense Qwen2.5-3B-shaped run")
    args = parser.parse_args()
    rows = []
    tmp = tempfile.TemporaryDirectory()
    for layers, label, heads_total, dense_heads in (
        (smollm_layers(), "SmolLM2-135M, 30 layers x 9 heads (d 576, d_head 64)", 270, None),
        (qwen_layer(), "Qwen2.5-3B shapes, 1 layer x 16 heads (d 2048, d_head 128)", 16, args.dense_heads),
    ):
        weights = os.path.join(tmp.name, "weights.pt")
        torch.save([dataclasses.replace(a, v=torch.empty(0), o=torch.empty(0)) for a in layers], weights)
        t_d, rss_d, mag_d, sv_d = measure(weights, "dense", dense_heads)
        t_f, rss_f, mag_f, sv_f = measure(weights, "factored")
        n = mag_d.shape[0]
        t_dense = t_d * heads_total / n  # per-head extrapolation where only n heads ran densely
        scale_mag, scale_sv = np.abs(mag_d).max(axis=1, keepdims=True), sv_d.max(axis=1, keepdims=True)
        rows.append((label, f"{t_dense:.2f}" + ("" if n == heads_total else f" (from {n} heads)"), f"{t_f:.3f}",
                     f"{t_dense / t_f:.0f}x", f"{rss_d:.1f}", f"{rss_f:.1f}",
                     f"{(np.abs(mag_d - mag_f[:n]) / scale_mag).max():.1e}",
                     f"{(np.abs(sv_d - sv_f[:n]) / scale_sv).max():.1e}"))
    print("| workload | dense s | factored s | speed-up | dense extra peak RSS MiB | factored extra peak RSS MiB "
          "| max rel. diff top-d_head abs(lambda) | max rel. diff top-d_head sigma |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    tmp.cleanup()
    print("\nOne torch thread per variant, each in a fresh process; extra peak RSS = peak minus RSS after loading Q, K. "
          "Differences are relative to each head's largest value (dense float32 vs factored float64).")


if __name__ == "__main__":
    main()
