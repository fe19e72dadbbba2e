"""The activation engine: one streaming pass of a model over token windows (notebooks 04, 05).

`collect_activations(loaded, tokens, ...)` runs the model's base (no LM head, so no (B, S, V)
logits are ever materialised) over the windows in batches under `torch.inference_mode` and, with
forward hooks placed through the adapter, accumulates on the model's device (`StreamingCovariance`:
per-batch centring merged exactly, Chan et al. 1979; float32 or float64 storage):

- residual stream, L + 2 states per token (the index convention of every consumer):
      0          after the embeddings (input of block 0 = HF `hidden_states[0]`, so it includes
                 e.g. Gemma's sqrt(d) embedding scale),
      i = 1..L   output of block i-1 (HF `hidden_states[i]`), before the final norm,
      L + 1      the final-normed last state, i.e. exactly what the LM head reads
                 (= state L for models without a final norm, e.g. BERT);
- FFN pre-activation (output of `adapter.ffn_pre_module(i)`) and post-activation (input of
  `adapter.ffn_post_module(i)`) covariances, D_ff x D_ff each, for the requested `ffn_layers`
  (NerVE eq. 1);
- a seeded subsample of `keep_samples` token positions, the same positions for every residual
  state, kept in float32 for sample-based metrics (CKA).

Memory. Residual accumulators cost (L + 2) d^2 8 bytes (float64). FFN accumulators cost
2 D_ff^2 b bytes per layer, b = 4 (float32, `ffn_dtype`'s default) or 8 (float64): SmolLM2 19 MB
per layer in float32, Qwen2.5-3B (D_ff 11008) 0.97 GB. The requested FFN layers are split into
groups whose accumulators fit `ffn_memory_bytes` (default: `default_ffn_budget`, a share of the
free memory of the device), one forward pass per group; passes after the first only run the
model up to the last block they need. `ffn_pass_plan` computes the plan (passes, layers per pass,
bytes, blocks run) without a model, for reports and projections. The budget bounds what one pass
accumulates; the returned statistics hold every requested layer, so a caller that must keep the
total at O(D_ff^2) asks for one group at a time and reduces each to eigenvalues before the next
(as notebook 05 does). Residual statistics and per-batch consumers use the first pass only.

Consumers. `consumers` are callables `f(batch: BatchActivations)` called after every batch of
the first pass with all residual states of that batch, so that further statistics (logit lens,
representation drift) come from the same forward pass instead of a second one.

Cache. Results are stored at `cache_dir()/activations/<params>-<hash>.pt`, the hash over the
model (params name, source, dtype, a weight fingerprint), the tokens (corpus, fingerprint,
count, seed, attention-mask fingerprint) and what was collected. Written atomically; loaded with
`torch.load(weights_only=True)`; the full key is stored and compared on load. With consumers the
model still runs (once), but cached statistics are not re-accumulated.

Padding: positions where `attention_mask == 0` never enter a statistic, sample or consumer row.

Skipped positions: the first `skip_first` positions of each window enter no statistic; with
`keep_skipped=True` their FFN pre/post rows are kept (`ActivationStats.ffn_pre_skipped`, a few
rows per window) so that all-token statistics follow exactly by `StreamingCovariance.update`
(Chan's merge) without a second forward pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from utils.cache_files import read_cache, write_cache
from utils.engine.corpus import TokenSample
from utils.machine import available_ram
from utils.metrics.covariance import StreamingCovariance, accumulator_dtype
from utils.models.loading import LoadedModel
from utils.paths import cache_dir

ENGINE_VERSION = 2


@dataclass
class BatchActivations:
    """What a consumer sees for one batch of the first pass."""

    input_ids: torch.Tensor  # (B, S)
    mask: torch.Tensor  # (B, S) bool, True = real token
    residual: list[torch.Tensor]  # L + 2 tensors (B, S, d), index convention of the module doc
    offset: int  # row index of this batch's first window in `tokens.input_ids`


@dataclass
class ActivationStats:
    """Accumulated statistics of one `collect_activations` call."""

    residual: list[StreamingCovariance]  # L + 2 (see module doc); empty when residual=False
    ffn_pre: dict[int, StreamingCovariance]  # layer -> (D_ff, D_ff) accumulator
    ffn_post: dict[int, StreamingCovariance]
    samples: torch.Tensor | None  # (L + 2, keep_samples, d) float32, or None
    sample_positions: torch.Tensor  # (keep_samples,) flat indices into input_ids.view(-1)
    n_tokens: int  # real (unmasked) tokens accumulated
    key: dict = field(default_factory=dict)
    from_cache: bool = False
    ffn_pre_skipped: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (n_skipped, D_ff)
    ffn_post_skipped: dict[int, torch.Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {
            "residual": [acc.state_dict() for acc in self.residual],
            "ffn_pre": {str(i): acc.state_dict() for i, acc in self.ffn_pre.items()},
            "ffn_post": {str(i): acc.state_dict() for i, acc in self.ffn_post.items()},
            "samples": self.samples,
            "sample_positions": self.sample_positions,
            "n_tokens": self.n_tokens,
            "key": json.dumps(self.key, sort_keys=True),
            "ffn_pre_skipped": {str(i): t.cpu() for i, t in self.ffn_pre_skipped.items()},
            "ffn_post_skipped": {str(i): t.cpu() for i, t in self.ffn_post_skipped.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "ActivationStats":
        acc = StreamingCovariance.from_state_dict
        return cls(
            residual=[acc(s) for s in state["residual"]],
            ffn_pre={int(i): acc(s) for i, s in state["ffn_pre"].items()},
            ffn_post={int(i): acc(s) for i, s in state["ffn_post"].items()},
            samples=state["samples"],
            sample_positions=state["sample_positions"],
            n_tokens=int(state["n_tokens"]),
            key=json.loads(state["key"]),
            from_cache=True,
            ffn_pre_skipped={int(i): t for i, t in state.get("ffn_pre_skipped", {}).items()},
            ffn_post_skipped={int(i): t for i, t in state.get("ffn_post_skipped", {}).items()},
        )


# --- cache --------------------------------------------------------------------------------------

def _weights_fingerprint(model: torch.nn.Module) -> str:
    """Cheap identity of the weights: names, shapes and float64 sums of each tensor's first 4096 entries."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        head = p.detach().reshape(-1)[:4096].to("cpu", torch.float64)
        h.update(f"{name}|{tuple(p.shape)}|{head.sum().item():.17g}|{head.abs().sum().item():.17g}".encode())
    return h.hexdigest()[:16]


def cache_key(loaded: LoadedModel, tokens: TokenSample, attention_mask: torch.Tensor | None, *,
              residual: bool, ffn_layers: Sequence[int], keep_samples: int, seed: int,
              skip_first: int = 0, ffn_dtype: str = "float32", keep_skipped: bool = False) -> dict:
    """Everything the collected statistics depend on."""
    p = loaded.params
    mask_fp = None if attention_mask is None else hashlib.sha256(
        attention_mask.to(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return {
        "engine": ENGINE_VERSION,
        "model": p.name, "source": p.source, "dtype": p.dtype, "weights": _weights_fingerprint(loaded.model),
        "corpus": tokens.corpus, "tokens": tokens.fingerprint(), "n_tokens": tokens.n_tokens,
        "shape": list(tokens.input_ids.shape), "token_seed": tokens.seed, "mask": mask_fp,
        "residual": residual, "ffn_layers": sorted(ffn_layers), "keep_samples": keep_samples, "seed": seed,
        "skip_first": skip_first, "ffn_dtype": ffn_dtype, "keep_skipped": keep_skipped,
    }


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir() / "activations" / f"{key['model']}-{digest}.pt"


def _load_cached(key: dict) -> ActivationStats | None:
    stats = read_cache(cache_path(key), lambda p: ActivationStats.from_state_dict(torch.load(p, weights_only=True)),
                       "activation cache entry")
    expected = json.loads(json.dumps(key, sort_keys=True, default=str))
    return stats if stats is not None and stats.key == expected else None


def _save_cached(stats: ActivationStats) -> Path:
    path = cache_path(stats.key)
    write_cache(path, lambda tmp: torch.save(stats.state_dict(), tmp), "activation cache entry")
    return path


# --- hooks --------------------------------------------------------------------------------------

class _StopForward(Exception):
    """Raised by a hook once every block a pass needs has run."""


def _tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _ffn_groups(layers: Sequence[int], d_ff: int, budget_bytes: int, dtype: str = "float64") -> list[list[int]]:
    """Split FFN layers into passes: each layer needs 2 D_ff^2 accumulator entries of `dtype`."""
    per_layer = 2 * d_ff * d_ff * accumulator_dtype(dtype).itemsize
    per_pass = max(1, budget_bytes // per_layer)
    layers = sorted(set(layers))
    return [layers[i : i + per_pass] for i in range(0, len(layers), per_pass)]


def default_ffn_budget(device: str | torch.device = "cpu", share: float = 0.5) -> int:
    """Bytes for FFN accumulators: `share` of the memory free now on `device` (after the model
    loaded). CPU: MemAvailable of /proc/meminfo; CUDA: torch.cuda.mem_get_info's free bytes."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = available_ram()
    return int(share * free)


@dataclass(frozen=True)
class PassPlan:
    """How notebook 05's FFN accumulation splits into forward passes (see `ffn_pass_plan`)."""

    layers: int
    d_ff: int
    dtype: str
    budget_bytes: int
    bytes_per_layer: int  # 2 D_ff^2 itemsize (pre + post)
    layers_per_pass: int
    passes: int
    peak_bytes: int  # accumulators of the largest pass
    blocks_run: int  # decoder blocks evaluated over all passes (a pass stops after its last layer)

    def describe(self) -> str:
        return (f"{self.passes} pass(es) of <= {self.layers_per_pass} layer(s) for L = {self.layers}, "
                f"D_ff = {self.d_ff} with {self.dtype} accumulators ({self.bytes_per_layer / 2**20:,.0f} MiB per "
                f"layer, {self.peak_bytes / 2**30:.2f} GiB per pass, budget {self.budget_bytes / 2**30:.2f} GiB); "
                f"{self.blocks_run} block evaluations = {self.blocks_run / self.layers:.2f} full forward passes")


def ffn_pass_plan(layers: int, d_ff: int, budget_bytes: int, dtype: str = "float32") -> PassPlan:
    """The passes `collect_activations` makes for FFN statistics of every layer of a model."""
    groups = _ffn_groups(range(layers), d_ff, budget_bytes, dtype)
    per_layer = 2 * d_ff * d_ff * accumulator_dtype(dtype).itemsize
    return PassPlan(layers=layers, d_ff=d_ff, dtype=dtype, budget_bytes=int(budget_bytes), bytes_per_layer=per_layer,
                    layers_per_pass=len(groups[0]), passes=len(groups),
                    peak_bytes=per_layer * max(len(g) for g in groups),
                    blocks_run=sum(g[-1] + 1 for g in groups))


def _sample_positions(mask: torch.Tensor, keep: int, seed: int) -> torch.Tensor:
    """`keep` distinct real-token positions (flat indices), seeded, sorted."""
    real = mask.reshape(-1).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    chosen = real[torch.randperm(real.numel(), generator=g)[: min(keep, real.numel())]]
    return chosen.sort().values


def _run_pass(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, stat_mask: torch.Tensor, *,
              residual: bool,
              ffn_layers: list[int], positions: torch.Tensor, consumers: Sequence[Callable],
              batch_size: int, device: torch.device, desc: str, ffn_dtype: str = "float64",
              keep_skipped: bool = False) -> dict:
    """One pass over all windows; returns the accumulators it filled."""
    adapter = loaded.adapter
    L, d, d_ff = adapter.dims.L, adapter.dims.d, adapter.dims.d_ff
    keep_states = residual or bool(consumers)
    res = [StreamingCovariance(d, device) for _ in range(L + 2)] if residual else []
    pre = {i: StreamingCovariance(d_ff, device, ffn_dtype) for i in ffn_layers}
    post = {i: StreamingCovariance(d_ff, device, ffn_dtype) for i in ffn_layers}
    skipped = {"pre": {i: [] for i in ffn_layers}, "post": {i: [] for i in ffn_layers}}  # rows left out, CPU
    samples = torch.zeros(L + 2, positions.numel(), d) if residual and positions.numel() else None
    seq_len = ids.shape[1]
    states: dict[int, torch.Tensor] = {}
    rows_mask: list[torch.Tensor] = []  # current batch's flat masks (statistics, skipped), on device
    last_block = L - 1 if keep_states else max(ffn_layers)

    # Masks go to each activation's device: with `device: auto` (accelerate's device_map) later
    # blocks may sit on another GPU than the first parameter; `.to` is a no-op on one device.
    def real_rows(x: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (n_real, D)
        return x.reshape(-1, x.shape[-1])[rows_mask[0].to(x.device)]

    def ffn_rows(kind: str, i: int, x: torch.Tensor) -> None:
        (pre if kind == "pre" else post)[i].update(real_rows(x))
        if keep_skipped:
            skipped[kind][i].append(x.reshape(-1, x.shape[-1])[rows_mask[1].to(x.device)].float().cpu())

    def on_block(i):
        def hook(module, args, output):
            if keep_states:
                states[i + 1] = _tensor(output)
            if i == last_block:
                raise _StopForward
        return hook

    def _batch(start: int) -> None:
        b_ids = ids[start : start + batch_size].to(device)
        b_mask = mask[start : start + batch_size].to(device)  # what the model attends to
        b_stat = stat_mask[start : start + batch_size].to(device)  # what enters the statistics
        rows_mask[:] = [b_stat.reshape(-1), (b_mask & ~b_stat).reshape(-1)]
        states.clear()
        try:
            adapter.base(input_ids=b_ids, attention_mask=b_mask.long(), use_cache=False)
        except _StopForward:
            pass
        if not keep_states:
            return
        # The final norm applied by hand to the last block output: the same module call the
        # model makes (verified against HF hidden_states[-1] and the model's logits in tests).
        states[L + 1] = adapter.apply_final_norm(states[L])
        batch_states = [states[j].to(device) for j in range(L + 2)]  # each (B, S, d), on the accumulators' device
        if residual:
            lo, hi = start * seq_len, (start + b_ids.shape[0]) * seq_len
            slot = ((positions >= lo) & (positions < hi)).nonzero().squeeze(1)  # rows of `samples`
            here = (positions[slot] - lo).to(device)  # flat positions inside this batch
            for j, x in enumerate(batch_states):
                res[j].update(real_rows(x))
                if samples is not None and slot.numel():
                    samples[j, slot] = x.reshape(-1, d)[here].float().cpu()
        batch = BatchActivations(input_ids=b_ids, mask=b_stat, residual=batch_states, offset=start)
        for consume in consumers:
            consume(batch)

    handles = []
    try:
        if keep_states:
            handles.append(adapter.block(0).register_forward_pre_hook(
                lambda m, args, kwargs: states.__setitem__(0, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
        for i in range(last_block + 1):
            handles.append(adapter.block(i).register_forward_hook(on_block(i)))
        for i in ffn_layers:
            handles.append(adapter.ffn_pre_module(i).register_forward_hook(
                lambda m, args, out, i=i: ffn_rows("pre", i, out)))
            handles.append(adapter.ffn_post_module(i).register_forward_pre_hook(
                lambda m, args, i=i: ffn_rows("post", i, args[0])))
        for start in tqdm(range(0, ids.shape[0], batch_size), desc=desc, leave=False, unit="batch"):
            with torch.inference_mode():
                _batch(start)
    finally:
        for h in handles:
            h.remove()
    cat = {kind: {i: torch.cat(rows) if rows else torch.zeros(0, d_ff) for i, rows in by_layer.items()}
           for kind, by_layer in skipped.items()} if keep_skipped else {"pre": {}, "post": {}}
    return {"residual": res, "pre": pre, "post": post, "samples": samples,
            "pre_skipped": cat["pre"], "post_skipped": cat["post"]}


def collect_activations(loaded: LoadedModel, tokens: TokenSample, *, residual: bool = True,
                        ffn_layers: Sequence[int] = (), keep_samples: int = 0, batch_size: int = 8,
                        seed: int = 0, cache: bool = True, device: str | torch.device | None = None,
                        attention_mask: torch.Tensor | None = None, consumers: Sequence[Callable] = (),
                        ffn_memory_bytes: int | None = None, skip_first: int = 0, ffn_dtype: str = "float32",
                        keep_skipped: bool = False) -> ActivationStats:
    """Stream the model over `tokens.input_ids` (n, S) and accumulate the statistics of the module doc.

    residual: accumulate the L + 2 residual-state covariances (and `keep_samples` samples of each).
    ffn_layers: blocks whose FFN pre/post-activation covariances are accumulated.
    keep_samples: token positions kept per residual state (same positions for every state), seeded.
    attention_mask: optional (n, S) 0/1; masked positions enter no statistic.
    consumers: callables on each `BatchActivations` of the first pass (see module doc).
    ffn_memory_bytes: budget for FFN accumulators per pass (2 D_ff^2 itemsize bytes per layer);
        None: `default_ffn_budget(device)`, half the memory free on the device.
    ffn_dtype: FFN accumulator storage, "float32" (default; exact per-batch centring keeps ~1e-6
        relative accuracy, see utils.metrics.covariance) or "float64".
    keep_skipped: also return the FFN rows of the skipped positions (`ffn_pre_skipped`,
        `ffn_post_skipped`, float32 on CPU), so that all-token statistics follow by merging.
    skip_first: the first `skip_first` positions of every window run through the model but enter
        no statistic (nor the consumers' masks): many LMs turn the first position of any window
        into an attention sink with massive activations (Xiao et al. 2023; Sun et al. 2024,
        "Massive activations in LLMs"), a few tokens that would otherwise dominate every
        covariance spectrum and CKA value.
    """
    ids = tokens.input_ids
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}")
    stat_mask = mask.clone()
    stat_mask[:, :skip_first] = False
    if not stat_mask.any():
        raise ValueError(f"skip_first={skip_first} leaves no token of windows of length {ids.shape[1]}")
    for i in ffn_layers:
        loaded.adapter.check_layer(i)
    if device is None:
        device = next(loaded.model.parameters()).device
    device = torch.device(device)
    accumulator_dtype(ffn_dtype)  # refuses anything but float32/float64 before the model runs
    if ffn_memory_bytes is None:
        ffn_memory_bytes = default_ffn_budget(device)
    key = cache_key(loaded, tokens, attention_mask, residual=residual, ffn_layers=ffn_layers,
                    keep_samples=keep_samples, seed=seed, skip_first=skip_first, ffn_dtype=ffn_dtype,
                    keep_skipped=keep_skipped)
    stats = _load_cached(key) if cache else None
    if stats is not None and not consumers:
        return stats
    positions = _sample_positions(stat_mask, keep_samples, seed)
    groups = [] if stats is not None else _ffn_groups(ffn_layers, loaded.adapter.dims.d_ff, ffn_memory_bytes,
                                                      ffn_dtype)
    want_residual = residual and stats is None
    if not groups and (want_residual or consumers):
        groups = [[]]
    acc = {"residual": [], "pre": {}, "post": {}, "samples": None, "pre_skipped": {}, "post_skipped": {}}
    for k, group in enumerate(groups):
        first = k == 0
        out = _run_pass(loaded, ids, mask, stat_mask, residual=want_residual and first, ffn_layers=group,
                        positions=positions, consumers=consumers if first else (),
                        batch_size=batch_size, device=device, ffn_dtype=ffn_dtype, keep_skipped=keep_skipped,
                        desc=f"activations pass {k + 1}/{len(groups)}")
        if first:
            acc["residual"], acc["samples"] = out["residual"], out["samples"]
        for kind in ("pre", "post", "pre_skipped", "post_skipped"):
            acc[kind].update(out[kind])
    if stats is not None:
        return stats
    stats = ActivationStats(
        residual=acc["residual"], ffn_pre=acc["pre"], ffn_post=acc["post"], samples=acc["samples"],
        sample_positions=positions, n_tokens=int(stat_mask.sum()),
        key=json.loads(json.dumps(key, sort_keys=True, default=str)),
        ffn_pre_skipped=acc["pre_skipped"], ffn_post_skipped=acc["post_skipped"],
    )
    if cache:
        _save_cached(stats)
    return stats
