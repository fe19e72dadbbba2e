"""Benchmark: notebook 04's streaming pass against a naive keep-everything version.

Both variants compute, on SmolLM2-135M over 32 x 128 = 4096 tokens of stdlib-docs: residual
covariances of every layer, debiased CKA between all layers on 2048 tokens, and the logit lens on
512 positions. The streaming variant is `collect_activations` with the logit-lens and drift
consumers (chunked logits, base model only); the naive one keeps every hidden state and the full
(4096, V) model logits in memory and builds n x n Gram matrices for CKA. Each variant runs in a
child process; its wall time and peak RSS (ru_maxrss) are reported.

    .venv/bin/python bench/bench_representations.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

MODEL, N_SEQ, SEQ_LEN, KEEP, LENS = "smollm2-135m", 32, 128, 2048, 512


def streaming(loaded, tokens) -> None:
    from utils.engine.activations import collect_activations
    from utils.engine.representations import Drift, LogitLens, activation_spectra, residual_eigenvalues
    from utils.metrics.cka import cka_matrix

    lens = LogitLens(loaded.adapter, tuple(tokens.input_ids.shape), LENS, seed=0)
    stats = collect_activations(loaded, tokens, keep_samples=KEEP, cache=False,
                                consumers=[lens, Drift(loaded.adapter.final_norm is not None)])
    cka_matrix(stats.samples[: loaded.dims.L + 1], debiased=True)
    activation_spectra(residual_eigenvalues(stats))
    lens.result()


def naive(loaded, tokens) -> None:
    import torch

    model, adapter, L = loaded.model, loaded.adapter, loaded.dims.L
    with torch.no_grad():
        outs = [model(ids, output_hidden_states=True) for ids in tokens.input_ids.split(8)]
        hidden = torch.stack([torch.cat([o.hidden_states[j] for o in outs]).reshape(-1, loaded.dims.d)
                              for j in range(L + 1)])  # (L + 1, n, d), last one final-normed
        logits = torch.cat([o.logits for o in outs]).reshape(-1, loaded.dims.V)  # (n, V)
        del outs
        for j in range(L + 1):
            torch.linalg.eigvalsh(torch.cov(hidden[j].double().T))
        g = torch.Generator().manual_seed(0)
        keep = torch.randperm(hidden.shape[1], generator=g)[:KEEP]
        n = KEEP
        grams = []
        for j in range(L + 1):
            K = (hidden[j, keep] @ hidden[j, keep].T).double()
            grams.append(K - torch.diag(torch.diag(K)))
        one = torch.ones(n, dtype=torch.float64)
        for i in range(L + 1):
            for j in range(i, L + 1):
                A, B = grams[i], grams[j]
                (torch.sum(A * B) + (one @ A @ one) * (one @ B @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ A) @ (B @ one))
        valid = torch.arange(hidden.shape[1]).reshape(N_SEQ, SEQ_LEN)[:, :-1].reshape(-1)
        pos = valid[torch.randperm(valid.numel(), generator=g)[:LENS]]
        target = tokens.input_ids.reshape(-1)[pos + 1]
        final = logits[pos].log_softmax(-1)
        for j in range(L + 1):
            z = final if j == L else adapter.logits(adapter.apply_final_norm(hidden[j, pos])).log_softmax(-1)
            p = z.exp()
            (-(p * z).sum(-1).mean(), p.max(-1).values.mean(), (z > z.gather(1, target[:, None])).sum(-1).median(),
             (z.argmax(-1) == final.argmax(-1)).float().mean(), (final.exp() * (final - z)).sum(-1).mean())


def child(variant: str) -> None:
    from utils import load_model, sample_tokens

    loaded = load_model(MODEL)
    tokens = sample_tokens(loaded.tokenizer, "stdlib-docs", N_SEQ, SEQ_LEN, seed=0)
    start = time.perf_counter()
    {"streaming": streaming, "naive": naive}[variant](loaded, tokens)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    rows = {}
    for variant in ("streaming", "naive"):
        out = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, check=True)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    s, n = rows["streaming"], rows["naive"]
    print(f"notebook 04 pass on {MODEL}, {N_SEQ * SEQ_LEN} tokens, CKA on {KEEP}, logit lens on {LENS} positions\n")
    print("| variant | time (s) | peak RSS (MB) |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |")
    print(f"| naive / streaming | {n['seconds'] / s['seconds']:.2f}x | {n['peak_mb'] / s['peak_mb']:.2f}x |")


if __name__ == "__main__":
    child(sys.argv[1]) if len(sys.argv) > 1 else main()
