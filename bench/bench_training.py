"""Per-sample gradients: torch.func vmap(grad) against a loop of single-sample backward passes.

Default notebook-06 model (4 layers, width 128, FFN 512, GELU, PreLN, learned positions),
gradient of the last layer's down_proj weight for n sequences of 64 tokens. Prints time
(median of `repeats` after one warm-up call), the speed-up, the largest absolute difference
between the two results, and the growth of the process's peak RSS (ru_maxrss) over each
method's first call: a coarse, honest upper bound, since ru_maxrss only ever grows.

    python bench/bench_training.py
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

from utils.engine.training import NanoGPTConfig, NanoGPTForCausalLM, per_sample_grads

PARAM = "transformer.layers.3.mlp.down_proj.weight"


def loop_grads(model: NanoGPTForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """(n, numel) one backward pass per sequence."""
    rows = []
    for i in range(len(ids)):
        model.zero_grad(set_to_none=True)
        model(ids[i: i + 1], labels=ids[i: i + 1]).loss.backward()
        rows.append(model.get_parameter(PARAM).grad.reshape(-1).clone())
    return torch.stack(rows)


def peak_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure(fn, repeats: int) -> tuple[torch.Tensor, float, float]:
    """(result, median seconds, peak-RSS growth in MiB over the first call)."""
    rss = peak_rss_mib()
    out = fn()
    rss_growth = peak_rss_mib() - rss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times), rss_growth


def main(repeats: int = 5, seq_len: int = 64) -> None:
    torch.manual_seed(0)
    model = NanoGPTForCausalLM(NanoGPTConfig()).eval()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {PARAM}, seq_len {seq_len}, "
          f"median of {repeats}")
    print(f"{'n':>4} {'vmap s':>9} {'loop s':>9} {'speed-up':>9} {'max |diff|':>11} {'vmap dRSS MiB':>14} {'loop dRSS MiB':>14}")
    for n in (8, 16, 32):
        ids = torch.randint(0, 256, (n, seq_len))
        # loop first: its RSS growth is not hidden by the vmap call's larger peak
        g_loop, t_loop, rss_loop = measure(lambda: loop_grads(model, ids), repeats)
        g_vmap, t_vmap, rss_vmap = measure(lambda: per_sample_grads(model, PARAM, ids), repeats)
        diff = float((g_vmap - g_loop).abs().max())
        assert torch.allclose(g_vmap, g_loop, rtol=1e-4, atol=1e-7), diff
        print(f"{n:>4} {t_vmap:>9.4f} {t_loop:>9.4f} {t_loop / t_vmap:>8.2f}x {diff:>11.2e} {rss_vmap:>14.1f} {rss_loop:>14.1f}")


if __name__ == "__main__":
    main()
