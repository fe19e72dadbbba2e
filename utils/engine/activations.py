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

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from utils.cache_files import read_cache, write_cache
from utils.engine.corpus import TokenSample
from utils.engine.hooks import FFNCovariances
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

def weights_fingerprint(model: torch.nn.Module) -> str:
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
        "model": p.name, "source": p.source, "dtype": p.dtype, "weights": weights_fingerprint(loaded.model),
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


# --- passes -------------------------------------------------------------------------------------

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


@dataclass(eq=False)
class ActivationSettings:
    """What `collect_activations` accumulates and how (every field a keyword of `collect_activations`).

    residual: accumulate the L + 2 residual-state covariances (and `keep_samples` samples of each).
    ffn_layers: blocks whose FFN pre/post-activation covariances (D_ff, D_ff) are accumulated.
    keep_samples: token positions kept per residual state (same positions for every state), seeded by `seed`.
    batch_size: windows per forward pass. cache: read and write the cache (module doc).
    device: accumulators' device (None: the model's first parameter's device).
    attention_mask: optional (n, S) 0/1; masked positions enter no statistic.
    consumers: callables on each `BatchActivations` of the first pass (module doc).
    ffn_memory_bytes: budget for FFN accumulators per pass (2 D_ff^2 itemsize bytes per layer);
        None: `default_ffn_budget(device)`, half the memory free on the device.
    skip_first: the first `skip_first` positions of every window run through the model but enter
        no statistic (nor the consumers' masks): many LMs turn the first position of any window
        into an attention sink with massive activations (Xiao et al. 2023; Sun et al. 2024,
        "Massive activations in LLMs"), a few tokens that would otherwise dominate every
        covariance spectrum and CKA value.
    ffn_dtype: FFN accumulator storage, "float32" (default; exact per-batch centring keeps ~1e-6
        relative accuracy, see utils.metrics.covariance) or "float64".
    keep_skipped: also return the FFN rows of the skipped positions (`ffn_pre_skipped`,
        `ffn_post_skipped`, float32 on CPU), so that all-token statistics follow by merging.
    """

    residual: bool = True
    ffn_layers: Sequence[int] = ()
    keep_samples: int = 0
    batch_size: int = 8
    seed: int = 0
    cache: bool = True
    device: str | torch.device | None = None
    attention_mask: torch.Tensor | None = None
    consumers: Sequence[Callable] = ()
    ffn_memory_bytes: int | None = None
    skip_first: int = 0
    ffn_dtype: str = "float32"
    keep_skipped: bool = False


@dataclass
class _Windows:
    """The token windows of one call: ids (n, S), mask (n, S) what the model attends to,
    stat_mask (n, S) what enters the statistics (mask without the skipped positions)."""

    ids: torch.Tensor
    mask: torch.Tensor
    stat_mask: torch.Tensor


@dataclass
class PassResult:
    """The accumulators one forward pass over all windows filled."""

    residual: list[StreamingCovariance]  # L + 2, or empty
    ffn: FFNCovariances  # layer -> pre/post (D_ff, D_ff) accumulators, skipped rows
    samples: torch.Tensor | None  # (L + 2, keep_samples, d) float32


class _Pass:
    """One pass over all windows (the first pass of a call also feeds the residual statistics and
    the consumers); blocks after the last one it needs are not run."""

    def __init__(self, loaded: LoadedModel, windows: _Windows, settings: ActivationSettings, *, ffn_layers: list[int],
                 residual: bool, consumers: Sequence[Callable], positions: torch.Tensor, device: torch.device):
        self.adapter, self.windows, self.settings = loaded.adapter, windows, settings
        self.residual_on, self.consumers, self.positions, self.device = residual, consumers, positions, device
        L, d, d_ff = self.adapter.dims.L, self.adapter.dims.d, self.adapter.dims.d_ff
        self.keep_states = residual or bool(consumers)
        self.last_block = L - 1 if self.keep_states else max(ffn_layers)
        self.residual = [StreamingCovariance(d, device) for _ in range(L + 2)] if residual else []
        self.ffn = FFNCovariances(ffn_layers, d_ff, device, settings.ffn_dtype, settings.keep_skipped)
        self.samples = torch.zeros(L + 2, positions.numel(), d) if residual and positions.numel() else None
        self.states: dict[int, torch.Tensor] = {}  # residual state index -> (B, S, d) of the current batch
        self.rows: torch.Tensor | None = None  # (B*S,) bool, current batch's statistics rows, on device

    def _block_hook(self, i: int):
        def hook(module, args, output):
            if self.keep_states:
                self.states[i + 1] = _tensor(output)
            if i == self.last_block:
                raise _StopForward
        return hook

    @contextlib.contextmanager
    def _hooks(self):
        handles = []
        try:
            if self.keep_states:
                handles.append(self.adapter.block(0).register_forward_pre_hook(
                    lambda m, args, kwargs: self.states.__setitem__(0, args[0] if args else kwargs["hidden_states"]),
                    with_kwargs=True))
            for i in range(self.last_block + 1):
                handles.append(self.adapter.block(i).register_forward_hook(self._block_hook(i)))
            with self.ffn.hooked(self.adapter):
                yield
        finally:
            for h in handles:
                h.remove()

    def _forward(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one batch up to the last block needed; returns its ids and statistics mask (B, S)."""
        end, w = start + self.settings.batch_size, self.windows
        b_ids = w.ids[start:end].to(self.device)
        b_mask = w.mask[start:end].to(self.device)  # what the model attends to
        b_stat = w.stat_mask[start:end].to(self.device)  # what enters the statistics
        self.rows = b_stat.reshape(-1)
        self.ffn.set_batch(self.rows, (b_mask & ~b_stat).reshape(-1))
        self.states.clear()
        try:
            self.adapter.base(input_ids=b_ids, attention_mask=b_mask.long(), use_cache=False)
        except _StopForward:
            pass
        return b_ids, b_stat

    def _record(self, start: int, b_ids: torch.Tensor, b_stat: torch.Tensor) -> None:
        """Residual statistics, samples and consumers of one batch."""
        L, d, seq_len = self.adapter.dims.L, self.adapter.dims.d, self.windows.ids.shape[1]
        # The final norm applied by hand to the last block output: the same module call the
        # model makes (verified against HF hidden_states[-1] and the model's logits in tests).
        self.states[L + 1] = self.adapter.apply_final_norm(self.states[L])
        batch_states = [self.states[j].to(self.device) for j in range(L + 2)]  # each (B, S, d)
        if self.residual_on:
            lo, hi = start * seq_len, (start + b_ids.shape[0]) * seq_len
            slot = ((self.positions >= lo) & (self.positions < hi)).nonzero().squeeze(1)  # rows of `samples`
            here = (self.positions[slot] - lo).to(self.device)  # flat positions inside this batch
            for j, x in enumerate(batch_states):
                flat = x.reshape(-1, x.shape[-1])  # (B*S, d)
                self.residual[j].update(flat[self.rows.to(x.device)])
                if self.samples is not None and slot.numel():
                    self.samples[j, slot] = x.reshape(-1, d)[here].float().cpu()
        batch = BatchActivations(input_ids=b_ids, mask=b_stat, residual=batch_states, offset=start)
        for consume in self.consumers:
            consume(batch)

    def run(self, desc: str) -> PassResult:
        with self._hooks():
            for start in tqdm(range(0, self.windows.ids.shape[0], self.settings.batch_size), desc=desc, leave=False,
                              unit="batch"):
                with torch.inference_mode():
                    b_ids, b_stat = self._forward(start)
                    if self.keep_states:
                        self._record(start, b_ids, b_stat)
        return PassResult(self.residual, self.ffn, self.samples)


def _windows(tokens: TokenSample, settings: ActivationSettings) -> _Windows:
    """The windows and masks of a call, with clear errors before the model runs."""
    ids, attention_mask = tokens.input_ids, settings.attention_mask
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}")
    stat_mask = mask.clone()
    stat_mask[:, :settings.skip_first] = False
    if not stat_mask.any():
        raise ValueError(f"skip_first={settings.skip_first} leaves no token of windows of length {ids.shape[1]}")
    return _Windows(ids, mask, stat_mask)


def _key(loaded: LoadedModel, tokens: TokenSample, s: ActivationSettings) -> dict:
    return cache_key(loaded, tokens, s.attention_mask, residual=s.residual, ffn_layers=s.ffn_layers,
                     keep_samples=s.keep_samples, seed=s.seed, skip_first=s.skip_first, ffn_dtype=s.ffn_dtype,
                     keep_skipped=s.keep_skipped)


def _run_passes(loaded: LoadedModel, windows: _Windows, s: ActivationSettings, groups: list[list[int]],
                residual: bool, positions: torch.Tensor, device: torch.device) -> ActivationStats:
    """One pass per FFN group; the first also accumulates the residual statistics and feeds the consumers."""
    stats = ActivationStats(residual=[], ffn_pre={}, ffn_post={}, samples=None, sample_positions=positions,
                            n_tokens=int(windows.stat_mask.sum()))
    d_ff = loaded.adapter.dims.d_ff
    for k, group in enumerate(groups):
        first = k == 0
        done = _Pass(loaded, windows, s, ffn_layers=group, residual=residual and first,
                     consumers=s.consumers if first else (), positions=positions,
                     device=device).run(f"activations pass {k + 1}/{len(groups)}")
        if first:
            stats.residual, stats.samples = done.residual, done.samples
        stats.ffn_pre.update(done.ffn.pre)
        stats.ffn_post.update(done.ffn.post)
        stats.ffn_pre_skipped.update(done.ffn.skipped_rows("pre", d_ff))
        stats.ffn_post_skipped.update(done.ffn.skipped_rows("post", d_ff))
    return stats


def collect_activations(loaded: LoadedModel, tokens: TokenSample, settings: ActivationSettings | None = None,
                        **keywords) -> ActivationStats:
    """Stream the model over `tokens.input_ids` (n, S) and accumulate the statistics of the module doc.

    `settings` (`ActivationSettings`) or its fields as keywords (residual, ffn_layers, keep_samples,
    batch_size, seed, cache, device, attention_mask, consumers, ffn_memory_bytes, skip_first,
    ffn_dtype, keep_skipped); keywords override the fields of `settings`.
    """
    s = dataclasses.replace(settings or ActivationSettings(), **keywords)
    windows = _windows(tokens, s)
    for i in s.ffn_layers:
        loaded.adapter.check_layer(i)
    device = torch.device(next(loaded.model.parameters()).device if s.device is None else s.device)
    accumulator_dtype(s.ffn_dtype)  # refuses anything but float32/float64 before the model runs
    budget = default_ffn_budget(device) if s.ffn_memory_bytes is None else s.ffn_memory_bytes
    key = _key(loaded, tokens, s)
    cached = _load_cached(key) if s.cache else None
    if cached is not None and not s.consumers:
        return cached
    positions = _sample_positions(windows.stat_mask, s.keep_samples, s.seed)
    groups = [] if cached is not None else _ffn_groups(s.ffn_layers, loaded.adapter.dims.d_ff, budget, s.ffn_dtype)
    want_residual = s.residual and cached is None
    if not groups and (want_residual or s.consumers):
        groups = [[]]
    stats = _run_passes(loaded, windows, s, groups, want_residual, positions, device)
    if cached is not None:
        return cached
    stats.key = json.loads(json.dumps(key, sort_keys=True, default=str))
    if s.cache:
        _save_cached(stats)
    return stats
