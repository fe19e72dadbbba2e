"""Notebooks 04 and 05's activation collection, today's model-major engine against the layer-major
one (`utils.engine.layerwise`), each in its own process: wall, CPU time, peak RSS.

    .venv/bin/python bench/bench_layerwise.py [--model llama-3.2-1b-synthetic] [--engines new old]
        [--parts 04 05] [--n-sequences 16] [--seq-len 128] [--lens-tokens 512]

What each engine does, as the notebooks (one token sample for both parts):
- old: `load_model` (every weight resident in the params dtype); 04: `collect_activations` with the
  CKA samples, `LogitLens` and `Drift`, then the L + 1 residual eigenvalue problems; 05: the FFN
  pass plan of `default_ffn_budget`, one `collect_activations` per group, per layer the pre/post
  eigenvalues and the all-token ones after merging the skipped rows.
- new: `open_checkpoint` (nothing read), `run_layerwise` once for both parts: `ResidualStats`
  and `FFNStats` reduce each layer to eigenvalues and free it (`FFNStats(route="auto")`: the
  N x N centred Gram when N < D_ff), `LayerwiseLogitLens`, `LayerwiseDrift`.
Each child prints one JSON line (wall, CPU, peak RSS from `resource.getrusage`, and a few
numbers both engines compute: the last FFN layer's PR, the final state's eigenvalue sum, the
final-layer lens cross-entropy), and the parent a markdown table. The synthetic checkpoint is
written into .cache on first use (~1 min, 2.5 GB for the 1B shape). The machine is shared:
the load average is printed before and after each child.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import AutoTokenizer

from utils.engine.activations import collect_activations, default_ffn_budget, ffn_pass_plan
from utils.engine.corpus import sample_tokens
from utils.engine.layerwise import (
    FFNStats,
    LayerwiseDrift,
    LayerwiseLogitLens,
    LayerwiseModel,
    ResidualStats,
    run_layerwise,
    sample_positions,
    statistic_mask,
)
from utils.engine.representations import Drift, LogitLens
from utils.metrics.spectra import nerve_metrics
from utils.models.loading import load_model, open_checkpoint

KEEP_SAMPLES, BATCH, SKIP = 2048, 8, 1


def _old(args) -> dict:
    loaded = load_model(args.model)
    tokens = sample_tokens(loaded.tokenizer, n_sequences=args.n_sequences, seq_len=args.seq_len, seed=0)
    out, L, adapter = {}, loaded.dims.L, loaded.adapter
    _, stat = statistic_mask(tokens.input_ids, None, SKIP)
    if "04" in args.parts:
        lens = LogitLens(adapter, tuple(tokens.input_ids.shape), args.lens_tokens, 0, mask=stat)
        stats = collect_activations(loaded, tokens, keep_samples=KEEP_SAMPLES, batch_size=BATCH, cache=False,
                                    consumers=[lens, Drift(adapter.final_norm is not None)], skip_first=SKIP)
        eigs = [acc.eigenvalues().numpy() for acc in stats.residual]
        out |= {"final_eig_sum": float(eigs[L + 1].sum()), "lens_ce_final": float(lens.result().cross_entropy.iloc[-1])}
        del stats
    if "05" in args.parts:
        plan = ffn_pass_plan(L, loaded.dims.d_ff, default_ffn_budget("cpu"), "float32")
        out["passes"] = plan.passes
        for start in range(0, L, plan.layers_per_pass):
            group = list(range(start, min(start + plan.layers_per_pass, L)))
            stats = collect_activations(loaded, tokens, residual=False, ffn_layers=group, batch_size=BATCH,
                                        cache=False, skip_first=SKIP, keep_skipped=True)
            for i in group:
                pre, post = stats.ffn_pre.pop(i), stats.ffn_post.pop(i)
                e_pre, e_post = pre.eigenvalues().numpy(), post.eigenvalues().numpy()
                pre.update(stats.ffn_pre_skipped.pop(i))
                post.update(stats.ffn_post_skipped.pop(i))
                pre.eigenvalues(), post.eigenvalues()  # the all-token spectra, as notebook 05
                if i == L - 1:
                    out["pr_post_last"] = float(nerve_metrics(e_pre, e_post)["pr_post"])
            del stats
    return out


def _new(args) -> dict:
    streamed = open_checkpoint(args.model)
    if streamed is None:
        raise SystemExit(f"{args.model} has no safetensors on disk: the layer-major engine needs a checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(str(streamed.adapter.store.directory))
    tokens = sample_tokens(tokenizer, n_sequences=args.n_sequences, seq_len=args.seq_len, seed=0)
    lw = LayerwiseModel.from_streamed(streamed)
    dims, out = lw.adapter.dims, {}
    _, stat = statistic_mask(tokens.input_ids, None, SKIP)
    consumers = []
    if "04" in args.parts:
        positions = sample_positions(stat, KEEP_SAMPLES, 0)
        res = ResidualStats(dims.L, dims.d, lw.device, positions, args.seq_len, keep=False)
        lens = LayerwiseLogitLens(lw.adapter, tuple(tokens.input_ids.shape), args.lens_tokens, 0, mask=stat)
        consumers += [res, lens, LayerwiseDrift(dims.L, lw.adapter.final_norm is not None)]
    if "05" in args.parts:
        ffn = FFNStats(range(dims.L), dims.d_ff, lw.device, keep=False, keep_skipped=True, route="auto",
                       n_rows=int(stat.sum()))
        consumers.append(ffn)
    run_layerwise(lw, tokens, consumers, batch_size=BATCH, skip_first=SKIP)
    if "04" in args.parts:
        out |= {"final_eig_sum": float(res.eigenvalues[dims.L + 1].sum()),
                "lens_ce_final": float(lens.result().cross_entropy.iloc[-1])}
    if "05" in args.parts:
        e = ffn.eigenvalues[dims.L - 1]
        out |= {"pr_post_last": float(nerve_metrics(e["pre"], e["post"])["pr_post"]), "gram_route": ffn.gram}
    out["max_reads"] = max(lw.reads.values())
    return out


def _child(args) -> None:
    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    result = (_new if args.child == "new" else _old)(args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"engine": args.child, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "peak_rss_gb": usage.ru_maxrss / 2**20, **result}))


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b-synthetic")
    ap.add_argument("--engines", nargs="+", default=["new", "old"], choices=["new", "old"])
    ap.add_argument("--parts", nargs="+", default=["04", "05"], choices=["04", "05"])
    ap.add_argument("--n-sequences", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lens-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    print(f"{args.model}: notebooks {'+'.join(args.parts)}, {args.n_sequences} x {args.seq_len} tokens, "
          f"{args.lens_tokens} lens tokens, {args.threads} thread(s)")
    print("| engine | wall (s) | CPU (s) | peak RSS (GiB) | load before / after | PR_post last FFN | "
          "final eig sum | lens CE final |\n|---|---|---|---|---|---|---|---|")
    for engine in args.engines:
        before = _load()
        cmd = [sys.executable, __file__, "--child", engine] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"| {engine} | failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cells = [r.get(k, np.nan) for k in ("pr_post_last", "final_eig_sum", "lens_ce_final")]
        print(f"| {engine} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} | {before} / {_load()} | "
              + " | ".join(f"{c:.6g}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
