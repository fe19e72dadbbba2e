"""Notebooks 04 and 05's activation work, today's model-major engine against the layer-major one
the notebooks now run (`utils.engine.layerwise`), each in its own process: wall, CPU time, peak RSS.

    .venv/bin/python bench/bench_layerwise.py [--model llama-3.2-1b-synthetic] [--engines new old]
        [--parts 04 05] [--together] [--n-sequences 16] [--seq-len 128] [--lens-tokens 512]
        [--dtype float32|bfloat16] [--device cpu|cuda] [--solver float64|float32]

- new: exactly the notebooks' code, `open_model` (nothing read) then 04's `representations.measure`
  (residual covariances, CKA samples, logit lens, drift, embedding covariance in one layer-major
  pass) and 05's `ffn_eigenspectrum.plan` + `measure` (one layer-major pass, each layer reduced to
  eigenvalues before the next block; the N x N centred Gram when every problem has fewer rows
  than D_ff). 04 and 05 each run in their own process (each part's peak RSS; `--together`: one).
- old: `load_model` (every weight resident in the params dtype); 04: `collect_activations` with the
  CKA samples, `LogitLens` and `Drift`, then the L + 1 residual eigenvalue problems; 05: the FFN
  pass plan of `default_ffn_budget`, one `collect_activations` per group, per layer the pre/post
  eigenvalues and the all-token ones after merging the skipped rows.
Each child prints one JSON line (wall, CPU, peak RSS from `resource.getrusage`, and a few
numbers both engines compute: the last FFN layer's PR, the final state's eigenvalue sum, the
final-layer lens cross-entropy), and the parent a markdown table. `--dtype`/`--device` override
the params file (a temporary copy). The synthetic checkpoint is written into .cache on first use
(~1 min, 2.5 GB for the 1B shape; ~15 GB for qwen2.5-7b). The load average is printed before and
after each child.
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
import torch
import yaml

from utils.analyses import ffn_eigenspectrum as ffn
from utils.analyses import representations as rep
from utils.engine.activations import collect_activations, default_ffn_budget, ffn_pass_plan
from utils.engine.corpus import sample_tokens
from utils.engine.layerwise import statistic_mask
from utils.engine.representations import Drift, LogitLens
from utils.metrics.spectra import nerve_metrics
from utils.models.loading import load_model, open_model
from utils.models.params import load_params

KEEP_SAMPLES, BATCH, SKIP = 2048, 8, 1


def _old(args) -> dict:
    loaded = load_model(_params(args))
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
    """What notebooks 04 and 05 run: their analyses' `measure` on `open_model` (layer-major)."""
    m = open_model(_params(args))
    out: dict = {"engine_held": ""}
    if "04" in args.parts:
        p = rep.RepresentationsParameters(n_sequences=args.n_sequences, seq_len=args.seq_len, skip_first=SKIP,
                                          batch_size=BATCH, keep_samples=KEEP_SAMPLES, lens_tokens=args.lens_tokens,
                                          cache=False)
        run = rep.measure(m, p)
        L = len(run.layer_names) - 1
        out |= {"final_eig_sum": float(run.eigenvalues[L + 1].sum()),
                "lens_ce_final": float(run.lens.cross_entropy.iloc[-1]), "engine_held": run.engine}
    if "05" in args.parts:
        p = ffn.FFNParameters(n_sequences=args.n_sequences, seq_len=args.seq_len, skip_first=SKIP, batch_size=BATCH,
                              eigen_solver=args.solver)
        plan = ffn.plan(m, p)
        spectra = ffn.measure(m, plan, p)
        out |= {"pr_post_last": float(spectra.table.pr_post.iloc[-1]), "route": plan.route,
                "engine_held": plan.engine, "max_reads": max(plan.layerwise.reads.values(), default=0)}
    return out


def _params(args):
    """The params file with --dtype / --device overrides (a temporary YAML beside the cache)."""
    params = load_params(args.model)
    if not (args.dtype or args.device):
        return params
    raw = yaml.safe_load(params.path.read_text(encoding="utf-8"))
    raw |= {k: v for k, v in (("dtype", args.dtype), ("device", args.device)) if v}
    path = Path(tempfile.mkdtemp()) / f"{params.name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_params(str(path))


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
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the params file's dtype")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="override the params file's device")
    ap.add_argument("--solver", choices=["float64", "float32"], default="float64", help="notebook 05's eigen_solver")
    ap.add_argument("--together", action="store_true", help="04 and 05 in one process (default: each in its own)")
    ap.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    print(f"{args.model}: notebooks {'+'.join(args.parts)}, {args.n_sequences} x {args.seq_len} tokens, "
          f"{args.lens_tokens} lens tokens, {args.threads} thread(s)")
    print("| engine | wall (s) | CPU (s) | peak RSS (GiB) | load before / after | PR_post last FFN | "
          "final eig sum | lens CE final |\n|---|---|---|---|---|---|---|---|")
    runs = [(e, args.parts) for e in args.engines] if args.together else \
        [(e, [part]) for e in args.engines for part in args.parts]
    for engine, parts in runs:
        before = _load()
        cmd = [sys.executable, __file__, "--child", engine] + _without_parts(sys.argv[1:]) + ["--parts", *parts]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"| {engine} | failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cells = [r.get(k, np.nan) for k in ("pr_post_last", "final_eig_sum", "lens_ce_final")]
        print(f"| {engine} {'+'.join(parts)} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} | {before} / {_load()} | "
              + " | ".join(f"{c:.6g}" for c in cells) + " |", flush=True)


def _without_parts(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if a == "--parts":
            skip = True
        elif skip and a.startswith("--"):
            skip = False
        if not skip and a != "--together":
            out.append(a)
    return out


if __name__ == "__main__":
    main()
