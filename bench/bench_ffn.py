"""NerVE metrics of every FFN: streaming (the activation engine) vs holding all activations.

    .venv/bin/python bench/bench_ffn.py [--model smollm2-135m] [--tokens 8192] [--memory-mb 2048]

- streaming: notebook 05's loop. `collect_activations(..., residual=False, cache=False)` over
  groups of layers whose float32 accumulators (2 D_ff^2 4 bytes per layer; per-batch centring,
  Chan et al. merge) fit `--memory-mb` (`utils.engine.activations.ffn_pass_plan`);
  eigenvalues per layer, accumulator freed at once. `--memory-mb 0` means one pass for all layers.
- naive: NerVE's appendix recipe for a whole sample: hooks keep every layer's pre/post activations
  of all tokens (float32) in memory during one forward pass, then per layer torch.cov (float64)
  and eigvalsh.
Each variant runs in its own child process; peak memory is ru_maxrss inside the child (whole
process, model and its loading included); because loading can peak higher than the analysis,
the peak of the analysis alone is also read (after every weight was paged in) (VmHWM after resetting it with /proc/self/clear_refs
once the model is loaded) and shown with its increase over the RSS after loading. Time excludes
loading the model. Prints a markdown table, the ratios and the largest metric difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

KEYS = ["se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js"]


def rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss; KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), MiB; nan where unavailable."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(variant: str, model: str, tokens: int, seq_len: int, batch_size: int, memory_mb: int) -> dict:
    import torch

    from utils import load_model, sample_tokens
    from utils.engine.activations import collect_activations
    from utils.machine import single_threaded_lapack
    from utils.metrics.spectra import nerve_metrics

    loaded = load_model(model)
    sample = sample_tokens(loaded.tokenizer, "stdlib-docs", tokens // seq_len, seq_len, 0)
    adapter, L, d_ff = loaded.adapter, loaded.dims.L, loaded.dims.d_ff
    import gc

    with torch.inference_mode():  # page in every weight (cached weights may be memory-mapped, resident on first use)
        for param in loaded.model.parameters():
            param.sum()
    gc.collect()
    base_rss = status_mib("VmRSS")  # after loading: model and libraries resident
    load_peak = rss_mib()  # loading itself may peak higher (e.g. GGUF dequantisation)
    reset = reset_peak()
    t0 = time.perf_counter()
    metrics, passes = [], 1
    if variant == "streaming":
        from utils.engine.activations import ffn_pass_plan

        budget = (memory_mb << 20) if memory_mb > 0 else 2 * d_ff * d_ff * 4 * L
        per_pass = ffn_pass_plan(L, d_ff, budget, "float32").layers_per_pass
        groups = [list(range(s, min(s + per_pass, L))) for s in range(0, L, per_pass)]
        passes = len(groups)
        for group in groups:
            stats = collect_activations(loaded, sample, residual=False, ffn_layers=group, batch_size=batch_size,
                                        ffn_memory_bytes=budget, cache=False)
            for i in group:
                eig_pre = stats.ffn_pre.pop(i).eigenvalues()
                eig_post = stats.ffn_post.pop(i).eigenvalues()
                metrics.append(nerve_metrics(eig_pre, eig_post))
            del stats
    elif variant == "naive":
        pre = {i: [] for i in range(L)}
        post = {i: [] for i in range(L)}
        handles = []
        for i in range(L):
            handles.append(adapter.ffn_pre_module(i).register_forward_hook(
                lambda m, a, o, i=i: pre[i].append(o.detach().reshape(-1, o.shape[-1]).float().clone())))
            handles.append(adapter.ffn_post_module(i).register_forward_pre_hook(
                lambda m, a, i=i: post[i].append(a[0].detach().reshape(-1, a[0].shape[-1]).float().clone())))
        ids = sample.input_ids
        with torch.inference_mode():
            for s in range(0, ids.shape[0], batch_size):
                b = ids[s: s + batch_size]
                adapter.base(input_ids=b, attention_mask=torch.ones_like(b), use_cache=False)
        for h in handles:
            h.remove()
        for i in range(L):
            eigs = []
            for store in (pre, post):
                X = torch.cat(store.pop(i)).double()
                cov = torch.cov(X.T)
                del X
                with single_threaded_lapack():
                    eigs.append(torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0))
            metrics.append(nerve_metrics(*eigs))
    else:
        raise ValueError(variant)
    seconds = time.perf_counter() - t0
    peak = rss_mib()
    phase_peak = status_mib("VmHWM") if reset else float("nan")  # peak since the reset, i.e. of the analysis
    return {"variant": variant, "seconds": seconds, "peak_rss_mib": peak, "after_load_mib": base_rss,
            "load_peak_mib": load_peak, "phase_peak_mib": phase_peak,
            "passes": passes, "metrics": [[m[k] for k in KEYS] for m in metrics], "L": L, "d_ff": d_ff,
            "threads": torch.get_num_threads()}


def run_child(variant: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--model", args.model, "--tokens",
           str(args.tokens), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--memory-mb",
           str(args.memory_mb)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {variant} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-mb", type=int, default=2048, help="streaming accumulator budget (notebook 05 default); 0: one pass")
    parser.add_argument("--variants", default="streaming,naive")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.tokens, args.seq_len, args.batch_size, args.memory_mb)))
        return

    import numpy as np

    results = [run_child(v, args) for v in args.variants.split(",")]
    r0 = results[0]
    print(f"NerVE metrics of all {r0['L']} FFNs of {args.model} (D_ff = {r0['d_ff']}), {args.tokens} tokens, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs, torch threads {r0['threads']}\n")
    print("| variant | passes | time (s) | ru_maxrss (MiB) | RSS after load (MiB) | analysis peak RSS (MiB) | "
          "analysis peak - after load (MiB) | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['passes']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{r['after_load_mib']:.0f} | {r['phase_peak_mib']:.0f} | {r['phase_peak_mib'] - r['after_load_mib']:.0f} | "
              f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    by = {r["variant"]: r for r in results}
    if "streaming" in by and "naive" in by:
        s, n = by["streaming"], by["naive"]
        a, b = np.array(s["metrics"]), np.array(n["metrics"])
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
        worst = np.unravel_index(rel.argmax(), rel.shape)
        extra = lambda r: max(r["phase_peak_mib"] - r["after_load_mib"], 1.0)  # noqa: E731
        print(f"\nnaive / streaming: time {n['seconds'] / s['seconds']:.2f}x, ru_maxrss "
              f"{n['peak_rss_mib'] / s['peak_rss_mib']:.2f}x, analysis peak "
              f"{n['phase_peak_mib'] / s['phase_peak_mib']:.2f}x, analysis peak above the loaded model "
              f"{extra(n) / extra(s):.2f}x")
        print(f"max |difference| of the metrics: {np.abs(a - b).max():.3g}; max relative difference "
              f"{rel.max():.3g} ({KEYS[worst[1]]}, layer {worst[0]})")


if __name__ == "__main__":
    main()
