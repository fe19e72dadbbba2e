"""The layer-major activation engine: the model run one block at a time over the whole token sample.

Today's engine (`utils.engine.activations.collect_activations`) runs the loaded model batch by
batch through all of its blocks (model-major): every weight resident, every accumulator alive
until the end. This engine swaps the loops (issue 16, item 1), as sequential quantisers do for
their calibration (GPTQ, Frantar et al. 2023; AutoGPTQ's and GPTQModel's layer loop):

1. Skeleton. The model is built without weights (`accelerate.init_empty_weights`, buffers real:
   rotary tables, position ids), or a loaded model is used as it is (weights resident).
2. Capture. Every block is replaced by a recorder that stores what the model's own forward
   passes it (hidden states after the embedding, the attention mask as the model builds it,
   position ids and position embeddings, per block: Gemma 3 and Qwen2 pass each layer type its
   own mask and rotary table) and returns its input; the last one raises `_Stop`. Only the
   modules outside the blocks hold weights during this step (the embedding, read once).
3. Blocks. For i = 0..L-1: block i's tensors are read from the checkpoint (`TensorStore`, names
   from the family vocabulary of `utils.models.adapters` behind `CheckpointAdapter.prefix`), every
   batch of the token sample goes through it (its FFN hooked at `ffn_pre_module(i)` and
   `ffn_post_module(i)`), the consumers reduce that layer's statistics, and the block's tensors
   are dropped again (meta) before block i + 1 is read. The final norm gives state L + 1.
4. Head. The final norm and the LM head are read once, after the blocks, for the logit lens
   (a tied head reuses the embedding tensor kept from step 2 in its stored dtype).

Peak memory: one block (compute dtype) + the residual states of the token sample (N x d, the
model's dtype) + one layer's accumulators and eigen workspace + the kept samples; weights are
read once per run. The same code runs on CPU and GPU (`device`: only the current block and the
states live there). With a loaded model (`LayerwiseModel.from_loaded`) nothing is read or freed.

Index convention of residual states (that of `utils.engine.activations`): 0 after the embeddings
(block 0's input), i = 1..L output of block i - 1, L + 1 the final-normed last state.

Per-layer consumer protocol (`LayerConsumer`): the engine calls, in this order,
    on_embedding(E)       once, with the input embedding (V, d) while it is held,
    on_state(StateBatch)  for every batch of residual state j (j = 0..L + 1, states in order;
                          state i + 1's batches come between block i's `on_block` and `end_ffn`),
    end_state(j)          after the last batch of state j: reduce, free,
    on_ffn(kind, i, x, b) for every batch of block i's FFN rows ("pre_input": input of
                          `ffn_pre_module(i)`, "pre": its output, "post": input of
                          `ffn_post_module(i)`), only for layers where `wants_ffn(i)` is true,
    on_block(i, adapter)  when block i holds its weights, before its batches (`adapter.weight_matrices(i)`
                          reads nothing more; `BlockWeightSpectra` takes notebook 01's metrics there),
    end_ffn(i)            after block i's last batch (before state i + 1's `end_state`),
    finish(head)          once, after state L + 1, with the final norm and LM head (`Head`; read
                          only when a consumer overrides `finish`).
Batches arrive in the same order as in `collect_activations`, so every accumulator receives the
same updates in the same order: the statistics are equal to today's engine's to float rounding
(bitwise on one CPU thread; tests/test_layerwise.py).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from accelerate import init_empty_weights
from torch import nn
from tqdm.auto import tqdm

from utils.engine.activations import ActivationStats, weights_fingerprint
from utils.engine.corpus import TokenSample
from utils.engine.representations import add_lens_terms, final_lens_terms, lens_frame
from utils.metrics.covariance import StreamingCovariance, accumulator_dtype, solver_dtype
from utils.metrics.gram_route import gram_eigenvalues, prefer_gram
from utils.metrics.linear_image import factor_pays, input_projection, padded
from utils.metrics.weight_spectra import SpectraOptions, matrix_record, spectra_table
from utils.models.adapters import CheckpointAdapter, ModelAdapter, get_adapter
from utils.models.gguf import auto_class
from utils.models.loading import LoadedModel, StreamedModel, StreamedWeights
from utils.models.params import Params
from utils.models.tensor_store import NonFiniteWeightError, content_fingerprint, count_nonfinite

LAYERWISE_VERSION = 1  # bump when what the engine computes changes: cached results keyed on it


class _Stop(Exception):
    """Raised by the last block's recorder: the capture needs nothing after the blocks."""


def _tensor(output):
    return output[0] if isinstance(output, tuple) else output


# --- what consumers see ---------------------------------------------------------------------------

@dataclass
class BatchInfo:
    """One batch of windows: rows `offset .. offset + B` of the token sample."""

    input_ids: torch.Tensor  # (B, S) on the compute device
    attention: torch.Tensor  # (B, S) bool: what the model attends to
    mask: torch.Tensor  # (B, S) bool: what enters the statistics (attention minus skipped positions)
    offset: int  # row of this batch's first window in `tokens.input_ids`

    @property
    def rows(self) -> torch.Tensor:  # (B S,) bool: statistic rows of a flattened (B S, D) activation
        return self.mask.reshape(-1)

    @property
    def skipped(self) -> torch.Tensor:  # (B S,) bool: attended rows left out of the statistics
        return (self.attention & ~self.mask).reshape(-1)


@dataclass
class StateBatch:
    """Residual state `state` of one batch, with the previous state of the same batch."""

    state: int  # 0..L + 1
    hidden: torch.Tensor  # (B, S, d)
    previous: torch.Tensor | None  # (B, S, d), state - 1 (None for state 0)
    batch: BatchInfo


@dataclass
class Head:
    """The final norm and LM head, for the logit lens: `logits(final_norm(h))`."""

    final_norm: object  # callable (..., d) -> (..., d)
    logits: object  # callable (..., d) normed -> (..., V), soft-capped where the config says so


class LayerConsumer:
    """Base of per-layer consumers (protocol in the module doc); every hook is a no-op here."""

    def wants_ffn(self, layer: int) -> bool:
        return False

    def on_embedding(self, weight: torch.Tensor) -> None:
        """The input embedding (V, d) as the model holds it during the capture (read once)."""

    def on_block(self, layer: int, adapter: ModelAdapter) -> None:
        """Block `layer` holds its weights (before its batches run): `adapter.weight_matrices(layer)`
        reads nothing more."""

    def on_state(self, s: StateBatch) -> None:
        pass

    def end_state(self, state: int) -> None:
        pass

    def on_ffn(self, kind: str, layer: int, x: torch.Tensor, batch: BatchInfo) -> None:
        pass

    def end_ffn(self, layer: int) -> None:
        pass

    def finish(self, head: Head) -> None:
        pass


# --- the model, one block at a time ---------------------------------------------------------------

def _set_parameter(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    module = root.get_submodule(parent) if parent else root
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def _buffers_to(model: nn.Module, device: torch.device) -> None:
    """Move the skeleton's (real) buffers to the compute device: rotary tables, position ids."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.to(device)


def _to_meta(module: nn.Module) -> None:
    """Drop a module's parameters (not its buffers): each becomes a meta tensor of its shape."""
    for name, p in list(module.named_parameters()):
        _set_parameter(module, name, torch.empty_like(p, device="meta"))


class LayerwiseModel:
    """A model whose blocks are run one at a time; weights resident (`from_loaded`) or read per
    block from a checkpoint (`from_checkpoint`, `from_streamed`)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, device: torch.device,
                 checkpoint: CheckpointAdapter | None = None, dtype: torch.dtype | None = None):
        self.model, self.adapter, self.device = model, adapter, device
        self.checkpoint, self.dtype = checkpoint, dtype
        self.reads: dict[str, int] = {}  # checkpoint tensor name -> times read (each weight once per run)
        self._tied: torch.Tensor | None = None  # the embedding as stored, for a tied LM head
        self._head_names: set[str] | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> "LayerwiseModel":
        """The loaded model's resident blocks, on their device (nothing read, nothing freed)."""
        return cls(loaded.model, loaded.adapter, next(loaded.model.parameters()).device)

    @classmethod
    def from_checkpoint(cls, checkpoint: CheckpointAdapter, *, dtype: torch.dtype, task: str = "causal_lm",
                        device: str | torch.device = "cpu", attn_implementation: str | None = None) -> "LayerwiseModel":
        """A weightless skeleton of the checkpoint's model (`init_empty_weights`, buffers real),
        its tensors read as the engine reaches them, in `dtype` (the model's compute dtype)."""
        config = checkpoint.top_config
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with init_empty_weights(include_buffers=False):
            model = auto_class(task).from_config(config, dtype=dtype, **extra)
        model.eval()
        _buffers_to(model, torch.device(device))
        lw = cls(model, get_adapter(model), torch.device(device), checkpoint, dtype)
        lw._check_names()
        return lw

    @classmethod
    def from_streamed(cls, streamed: StreamedWeights, device: str | torch.device | None = None) -> "LayerwiseModel":
        """From `utils.models.loading.open_checkpoint(params)`: params dtype, task and device."""
        p = streamed.params
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[p.dtype]
        return cls.from_checkpoint(streamed.adapter, dtype=dtype, task=p.task,
                                   device=device if device is not None else streamed.adapter.device)

    @classmethod
    def from_model(cls, model: LoadedModel | StreamedModel, device: str | torch.device | None = None) -> "LayerwiseModel":
        """From `utils.models.loading.open_model`: streamed when it opened a checkpoint, else resident."""
        return cls.from_loaded(model) if isinstance(model, LoadedModel) else cls.from_streamed(model, device)

    @property
    def streamed(self) -> bool:
        return self.checkpoint is not None

    def describe(self) -> str:
        """How the weights were held, for reports."""
        if not self.streamed:
            return f"resident (loaded model, on {self.device}), blocks run one at a time"
        return (f"streamed: each block's tensors read from the checkpoint when reached and freed after it, "
                f"in {str(self.dtype).removeprefix('torch.')} on {self.device}")

    def weights_identity(self) -> str:
        """The checkpoint's content fingerprint (streamed: no tensor read) or the resident weights'."""
        return content_fingerprint(self.checkpoint.store) if self.streamed else weights_fingerprint(self.model)

    def run_key(self, params: Params, tokens: TokenSample, **settings) -> dict:
        """Everything a run's results depend on, for caches: model, weights, compute dtype and
        device, the token sample and the caller's settings (JSON-normalised)."""
        key = {"engine": f"layerwise-{LAYERWISE_VERSION}", "model": params.name, "source": params.source,
               "dtype": str(next(self.model.parameters()).dtype), "device": self.device.type,
               "weights": self.weights_identity(), "corpus": tokens.corpus, "tokens": tokens.fingerprint(),
               "shape": list(tokens.input_ids.shape), "token_seed": tokens.seed, **settings}
        return json.loads(json.dumps(key, sort_keys=True, default=str))

    # --- names -----------------------------------------------------------------------------------
    def _base_path(self) -> str:
        """Prefix of the base model's modules inside `self.model` ('' when the model is its base)."""
        base = self.adapter.base
        return "" if base is self.model else f"{self.model.base_model_prefix}."

    def tensor_name(self, name: str) -> str | None:
        """Checkpoint name of the model parameter `name`; None for a tied LM head."""
        if self._head_names is None:
            head = self.model.get_output_embeddings()
            self._head_names = {f"{n}.weight" for n, m in self.model.named_modules() if head is not None and m is head}
        if name in self._head_names:
            return self.checkpoint.unembedding_name  # None when tied to the embedding
        base = self._base_path()
        if base and not name.startswith(base):
            return name  # a top-level module outside the base model: stored under its own name
        return self.checkpoint.prefix + name[len(base):]

    def _check_names(self) -> None:
        """Every parameter of the skeleton has its tensor in the checkpoint: a clear error first."""
        store = self.checkpoint.store
        missing = [(n, t) for n, _ in self.model.named_parameters()
                   if (t := self.tensor_name(n)) is not None and t not in store]
        if missing:
            raise KeyError(f"{store.directory}: the checkpoint lacks {len(missing)} tensor(s) the "
                           f"{self.adapter.family.name} model needs, e.g. " +
                           ", ".join(f"{t!r} (for {n})" for n, t in missing[:5]))

    def _read(self, name: str) -> torch.Tensor:
        """One checkpoint tensor, counted in `reads` and checked for NaN/Inf as it is read (the
        streamed path's `check_finite`, without a second read of the model)."""
        self.reads[name] = self.reads.get(name, 0) + 1
        tensor = self.checkpoint.store.get(name)
        if tensor.is_floating_point() and (bad := count_nonfinite(tensor)):
            raise NonFiniteWeightError(
                f"{self.checkpoint.store.directory}: tensor {name!r} has {bad:,} non-finite entries (NaN/Inf) of "
                f"{tensor.numel():,}, so the activations are undefined. The checkpoint is damaged (or training "
                "diverged): use an earlier or re-downloaded checkpoint.")
        return tensor

    def _materialize(self, prefix: str, module: nn.Module) -> None:
        """Read the parameters of `module` (at `prefix` in the model) into it, compute dtype, on device."""
        for name, p in list(module.named_parameters()):
            if p.device.type != "meta":
                continue
            tensor = self._read(self.tensor_name(prefix + name))
            if tensor.shape != p.shape:
                raise ValueError(f"checkpoint tensor for {prefix + name} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(p.shape)}")
            _set_parameter(module, name, tensor.to(self.device, self.dtype))

    # --- the three phases ----------------------------------------------------------------------------
    def _outside_blocks(self) -> list[tuple[str, nn.Module]]:
        """Modules holding parameters outside the blocks and the LM head (embeddings, final norm, ...)."""
        blocks, head = set(map(id, self.adapter.blocks.modules())), self.model.get_output_embeddings()
        return [(f"{n}." if n else "", m) for n, m in self.model.named_modules()
                if id(m) not in blocks and m is not head and m._parameters]

    @contextlib.contextmanager
    def embedding_phase(self, keep_tied: bool = True):
        """The modules outside the blocks hold their weights (read once); after it only the
        final norm and the other small ones stay, the embedding is dropped (with `keep_tied`, a
        tied LM head keeps the tensor as stored, for `head()`)."""
        if not self.streamed:
            yield
            return
        for prefix, module in self._outside_blocks():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.device.type == "meta":
                    tensor = self._read(self.tensor_name(prefix + name))
                    if (keep_tied and module is self.model.get_input_embeddings()
                            and self.checkpoint.unembedding_is_tied()):
                        self._tied = tensor
                    _set_parameter(module, name, tensor.to(self.device, self.dtype))
        try:
            yield
        finally:
            _to_meta(self.model.get_input_embeddings())

    @contextlib.contextmanager
    def block(self, layer: int):
        """Block `layer` with its weights for the duration of the context."""
        module = self.adapter.block(layer)
        if not self.streamed:
            yield module
            return
        self._materialize(f"{self._base_path()}{self.adapter.family.blocks}.{layer}.", module)
        try:
            yield module
        finally:
            _to_meta(module)

    def head(self) -> Head | None:
        """The final norm and LM head (read now, once); None for encoders."""
        if not self.adapter.is_causal_lm:
            return None
        if self.streamed:
            out = self.model.get_output_embeddings()
            if self.checkpoint.unembedding_is_tied():
                tied = self._tied if self._tied is not None else self._read(self.checkpoint.embedding_name)
                _set_parameter(out, "weight", tied.to(self.device, self.dtype))
                self._tied = None
            else:
                name = next(n for n, m in self.model.named_modules() if m is out)
                self._materialize(f"{name}.", out)
        return Head(final_norm=self.adapter.apply_final_norm, logits=self.adapter.logits)


# --- capture: the inputs of every block, from the model's own forward ---------------------------------

class _Recorder(nn.Module):
    """Stands in for block `layer` during the capture: records its inputs, returns its hidden states."""

    def __init__(self, layer: int, store: list, last: bool):
        super().__init__()
        self.layer, self.store, self.last = layer, store, last

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.store.append((hidden, args[1:], kwargs, not args))
        if self.last:
            raise _Stop
        return hidden


@dataclass
class _Inputs:
    """Block inputs of one batch besides its hidden states: (args, kwargs, hidden as keyword) per block."""

    per_block: list[tuple[tuple, dict, bool]] = field(default_factory=list)


def capture(lw: LayerwiseModel, input_ids: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, _Inputs]:
    """(state 0 (B, S, d), the inputs the model passes every block) for one batch."""
    blocks, L = lw.adapter.blocks, lw.adapter.dims.L
    originals = list(blocks)
    records: list = []
    try:
        for i in range(L):
            blocks[i] = _Recorder(i, records, i == L - 1)
        with contextlib.suppress(_Stop):
            lw.adapter.base(input_ids=input_ids, attention_mask=attention.long(), use_cache=False)
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    if len(records) != L:
        raise RuntimeError(f"the {lw.adapter.family.name} forward reached {len(records)} of {L} blocks")
    return records[0][0], _Inputs([(args, kwargs, kw) for _, args, kwargs, kw in records])


def _run_block(block: nn.Module, hidden: torch.Tensor, inputs: tuple[tuple, dict, bool]) -> torch.Tensor:
    args, kwargs, as_keyword = inputs
    out = block(*args, hidden_states=hidden, **kwargs) if as_keyword else block(hidden, *args, **kwargs)
    return _tensor(out)


# --- the layer loop ----------------------------------------------------------------------------------

def _batches(ids: torch.Tensor, attention: torch.Tensor, stat: torch.Tensor, batch_size: int,
             device: torch.device) -> list[BatchInfo]:
    return [BatchInfo(ids[s : s + batch_size].to(device), attention[s : s + batch_size].to(device),
                      stat[s : s + batch_size].to(device), s) for s in range(0, ids.shape[0], batch_size)]


def _emit(consumers, state: int, hidden: torch.Tensor, previous, batch: BatchInfo) -> None:
    s = StateBatch(state, hidden, previous, batch)
    for c in consumers:
        c.on_state(s)


def _ffn_hooks(lw: LayerwiseModel, layer: int, consumers, current: list) -> list:
    """Forward hooks feeding block `layer`'s FFN rows to the consumers that want them."""
    wanting = [c for c in consumers if c.wants_ffn(layer)]
    if not wanting:
        return []

    def feed(kind: str, x: torch.Tensor) -> None:
        for c in wanting:
            c.on_ffn(kind, layer, x, current[0])

    def pre(module, args, out) -> None:
        feed("pre_input", args[0])
        feed("pre", out)

    return [lw.adapter.ffn_pre_module(layer).register_forward_hook(pre),
            lw.adapter.ffn_post_module(layer).register_forward_pre_hook(lambda m, a: feed("post", a[0]))]


def _layer_pass(lw: LayerwiseModel, layer: int, states: list, inputs: list, batches: list, consumers) -> None:
    """Block `layer` over every batch: states[b] becomes its output (in place, one batch at a time)."""
    current: list = [None]
    with lw.block(layer) as block:
        for c in consumers:
            c.on_block(layer, lw.adapter)
        handles = _ffn_hooks(lw, layer, consumers, current)
        try:
            for b, batch in enumerate(batches):
                current[0] = batch
                out = _run_block(block, states[b], inputs[b].per_block[layer])
                _emit(consumers, layer + 1, out, states[b], batch)
                states[b] = out
        finally:
            for h in handles:
                h.remove()
    for c in consumers:
        c.end_ffn(layer)
        c.end_state(layer + 1)


def run_layerwise(lw: LayerwiseModel, tokens: TokenSample, consumers: Sequence[LayerConsumer], *,
                  batch_size: int = 8, attention_mask: torch.Tensor | None = None, skip_first: int = 0,
                  progress: bool = True) -> None:
    """Run the model layer-major over `tokens.input_ids` (n, S), feeding the consumers (module doc)."""
    ids = tokens.input_ids
    attention, stat = statistic_mask(ids, attention_mask, skip_first)
    batches = _batches(ids, attention, stat, batch_size, lw.device)
    L = lw.adapter.dims.L
    states, inputs = [], []
    wants_head = any(type(c).finish is not LayerConsumer.finish for c in consumers)
    with torch.inference_mode():
        with lw.embedding_phase(keep_tied=wants_head):
            for c in consumers:
                c.on_embedding(lw.model.get_input_embeddings().weight)
            for batch in batches:
                h0, block_inputs = capture(lw, batch.input_ids, batch.attention)
                states.append(h0)
                inputs.append(block_inputs)
        for b, batch in enumerate(batches):
            _emit(consumers, 0, states[b], None, batch)
        for c in consumers:
            c.end_state(0)
        for layer in tqdm(range(L), desc="blocks", unit="block", leave=False, disable=not progress):
            _layer_pass(lw, layer, states, inputs, batches, consumers)
        del inputs
        for b, batch in enumerate(batches):
            # The final norm by hand on the last block's output, as collect_activations does.
            normed = lw.adapter.apply_final_norm(states[b])
            _emit(consumers, L + 1, normed, states[b], batch)
            states[b] = None
        for c in consumers:
            c.end_state(L + 1)
        head = lw.head() if wants_head else None
        for c in consumers:
            c.finish(head)


def statistic_mask(ids: torch.Tensor, attention_mask: torch.Tensor | None, skip_first: int):
    """(attention (n, S) bool, statistics mask (n, S) bool) with clear errors, as collect_activations."""
    attention = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if attention.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention.shape)} != input_ids shape {tuple(ids.shape)}")
    stat = attention.clone()
    stat[:, :skip_first] = False
    if not stat.any():
        raise ValueError(f"skip_first={skip_first} leaves no token of windows of length {ids.shape[1]}")
    return attention, stat


# --- consumers: the statistics of today's engine, layer by layer --------------------------------------

def sample_positions(stat: torch.Tensor, keep: int, seed: int) -> torch.Tensor:
    """`keep` distinct statistic positions (flat indices), seeded, sorted: the draw of
    `utils.engine.activations` (tests check the two agree)."""
    real = stat.reshape(-1).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    chosen = real[torch.randperm(real.numel(), generator=g)[: min(keep, real.numel())]]
    return chosen.sort().values


class ResidualStats(LayerConsumer):
    """Covariance accumulators of residual states 0..L + 1 and `positions`' rows of each state.

    keep=True: every accumulator is kept (`accumulators`, as `ActivationStats.residual`);
    keep=False: each state's accumulator is reduced to its eigenvalues at `end_state` and freed
    (`eigenvalues[j]`, float64 descending), so one d x d accumulator exists at a time;
    route="auto" (with keep=False) takes the N x N centred Gram of the state's rows when N < d."""

    def __init__(self, L: int, d: int, device, positions: torch.Tensor, seq_len: int, keep: bool = True,
                 route: str = "covariance", n_rows: int = 0):
        if route not in ("covariance", "auto"):
            raise ValueError(f"route must be 'covariance' or 'auto', got {route!r}")
        self.d, self.device, self.positions, self.seq_len, self.keep = d, device, positions, seq_len, keep
        self.gram = route == "auto" and not keep and prefer_gram(n_rows, d)
        self.accumulators: list[StreamingCovariance | None] = [None] * (L + 2)
        self._rows: list[torch.Tensor] = []  # Gram route: the current state's statistic rows
        self.eigenvalues: dict[int, np.ndarray] = {}
        self.samples = torch.zeros(L + 2, positions.numel(), d) if positions.numel() else None

    def on_state(self, s: StateBatch) -> None:
        j, x = s.state, s.hidden.to(self.device)
        rows = x.reshape(-1, self.d)[s.batch.rows.to(x.device)]
        if self.gram:
            self._rows.append(rows.float())
        else:
            if self.accumulators[j] is None:
                self.accumulators[j] = StreamingCovariance(self.d, self.device)
            self.accumulators[j].update(rows)
        if self.samples is not None:
            lo = s.batch.offset * self.seq_len
            hi = lo + s.batch.input_ids.shape[0] * self.seq_len
            slot = ((self.positions >= lo) & (self.positions < hi)).nonzero().squeeze(1)
            if slot.numel():
                self.samples[j, slot] = x.reshape(-1, self.d)[(self.positions[slot] - lo).to(x.device)].float().cpu()

    def end_state(self, state: int) -> None:
        if self.gram:
            self.eigenvalues[state] = gram_eigenvalues(torch.cat(self._rows)).numpy()
            self._rows = []
        elif not self.keep:
            self.eigenvalues[state] = self.accumulators[state].eigenvalues().numpy()
            self.accumulators[state] = None


def ffn_layer_bytes(n_rows: int, d_ff: int, accumulator: str = "float32", pre_width: int | None = None) -> tuple[str, int]:
    """(route of the D_ff-wide post-activation problem, bytes) of one layer's FFN statistics in the
    layer-major pass. Each kind of width D (post: D_ff; pre: `pre_width`, d when `FFNStats` takes it
    from the input, default D_ff) holds its N x D rows in float32 when N < D (Gram route), else its
    D x D accumulator in `accumulator` (a d-wide pre accumulator in float64, as `FFNStats` keeps it);
    the reduction adds the larger workspace of the two (Gram route: the float64 N x N Gram and its
    eigen copy; covariance route: a float64 D x D copy)."""
    held, workspace = 0, 0
    for width in (d_ff, pre_width or d_ff):
        size = 8 if accumulator != "float32" or width < d_ff else 4
        if prefer_gram(n_rows, width):
            held, workspace = held + n_rows * width * 4, max(workspace, 2 * n_rows * n_rows * 8)
        else:
            held, workspace = held + width * width * size, max(workspace, width * width * 8)
    return ("Gram" if prefer_gram(n_rows, d_ff) else "covariance"), held + workspace


class FFNStats(LayerConsumer):
    """FFN pre/post-activation statistics of `layers` (NerVE eq. 1), as `collect_activations`.

    keep=True: accumulators kept (`pre`, `post`, and with keep_skipped the skipped positions' rows
    `pre_skipped`, `post_skipped`, float32 on the CPU), as in `ActivationStats`.
    keep=False: at `end_ffn(i)` layer i is reduced to eigenvalues and freed, as notebook 05 does:
    `eigenvalues[i] = {"pre", "post"}` over the statistic rows and, with keep_skipped, `"pre_all"`,
    `"post_all"` over every attended row, each (D_ff,) descending. route="auto" takes the N x N
    centred Gram (`utils.metrics.gram_route`) instead of a D x D accumulator when N < D (rows then
    held: N x D float32 per kind, instead of D^2); "covariance" never. `n_rows`: the rows of the
    layer's largest problem (with keep_skipped, every attended row: when those reach D, the Gram
    route would form a product and solve a problem no smaller than D).
    pre_from_input=True (keep=False): the pre-activation is the image of `ffn_pre_module`'s input
    under its weight W (D_ff, d); when d < D_ff its nonzero covariance eigenvalues are those of the
    d-wide rows X R^T (W = Q R, `utils.metrics.linear_image`), the other D_ff - d exact zeros, so
    the pre problem is d wide (D = d above) instead of D_ff."""

    def __init__(self, layers: Sequence[int], d_ff: int, device, dtype: str = "float32", keep: bool = True,
                 keep_skipped: bool = False, route: str = "covariance", n_rows: int = 0, solver: str = "float64",
                 pre_from_input: bool = False):
        if route not in ("covariance", "auto"):
            raise ValueError(f"route must be 'covariance' or 'auto', got {route!r}")
        if pre_from_input and keep:
            raise ValueError("pre_from_input needs keep=False: kept accumulators are D_ff x D_ff, as ActivationStats")
        self.layers, self.d_ff, self.device = set(layers), d_ff, device
        self.dtype, self.keep, self.keep_skipped = accumulator_dtype(dtype), keep, keep_skipped
        self.solver = solver  # eigen-solver precision of the reduction (keep=False)
        solver_dtype(solver)
        self.auto, self.n_rows, self.pre_from_input = route == "auto" and not keep, n_rows, pre_from_input
        self.gram = self.auto and prefer_gram(n_rows, d_ff)  # the route of a D_ff-wide problem
        self.pre: dict[int, StreamingCovariance] = {}
        self.post: dict[int, StreamingCovariance] = {}
        self.pre_skipped: dict[int, torch.Tensor] = {}
        self.post_skipped: dict[int, torch.Tensor] = {}
        self._projection: dict[int, torch.Tensor] = {}  # pre_from_input: R^T (d, d) of the layer's pre weight
        self._rows: dict[tuple[str, int], list] = {}  # Gram route: statistic rows per (kind, layer)
        self._skipped: dict[tuple[str, int], list] = {}
        self.eigenvalues: dict[int, dict[str, np.ndarray]] = {}

    def wants_ffn(self, layer: int) -> bool:
        return layer in self.layers

    def on_block(self, layer: int, adapter: ModelAdapter) -> None:
        if self.pre_from_input and layer in self.layers:
            weight = adapter.ffn_pre_weight(layer)  # (D_ff, d)
            if factor_pays(weight):
                self._projection[layer] = input_projection(weight).to(self.device)

    def on_ffn(self, kind: str, layer: int, x: torch.Tensor, batch: BatchInfo) -> None:
        projection = self._projection.get(layer)
        if kind == "pre_input":
            if projection is None:
                return
            kind, x = "pre", x.to(self.device, torch.float32) @ projection  # (..., d): pre's column-space coordinates
        elif kind == "pre" and projection is not None:
            return  # taken from the input
        flat = x.reshape(-1, x.shape[-1])
        rows = flat[batch.rows.to(x.device)]
        if self._gram_for(rows.shape[1]):
            self._rows.setdefault((kind, layer), []).append(rows.float())
        else:
            accs = self.pre if kind == "pre" else self.post
            if layer not in accs:
                accs[layer] = StreamingCovariance(rows.shape[1], self.device, self._storage(kind, layer))
            accs[layer].update(rows)
        if self.keep_skipped:
            self._skipped.setdefault((kind, layer), []).append(flat[batch.skipped.to(x.device)].float().cpu())

    def _storage(self, kind: str, layer: int) -> str:
        """Accumulator storage: float64 for a d-wide pre problem (d^2 float64 is an eighth of the
        D_ff^2 float32 it replaces at D_ff = 4 d, and keeps rounding out of the null directions of
        a LayerNorm'd input), else `dtype`."""
        return "float64" if kind == "pre" and layer in self._projection else self.dtype

    def _gram_for(self, width: int) -> bool:
        return self.auto and prefer_gram(self.n_rows, width)

    def _skipped_rows(self, kind: str, layer: int, width: int) -> torch.Tensor:
        rows = self._skipped.pop((kind, layer), [])
        return torch.cat(rows) if rows else torch.zeros(0, width)

    def end_ffn(self, layer: int) -> None:
        if layer not in self.layers:
            return
        if self.keep:
            if self.keep_skipped:
                self.pre_skipped[layer] = self._skipped_rows("pre", layer, self.d_ff)
                self.post_skipped[layer] = self._skipped_rows("post", layer, self.d_ff)
            return
        self.eigenvalues[layer] = {k: padded(v, self.d_ff).numpy()
                                   for kind in ("pre", "post") for k, v in self._reduce(kind, layer).items()}
        self._projection.pop(layer, None)

    def _reduce(self, kind: str, layer: int) -> dict[str, torch.Tensor]:
        """Eigenvalues of one kind of layer `layer` (and with the skipped rows merged), then freed."""
        width = self._projection[layer].shape[1] if kind == "pre" and layer in self._projection else self.d_ff
        skipped = self._skipped_rows(kind, layer, width) if self.keep_skipped else None
        if self._gram_for(width):
            rows = torch.cat(self._rows.pop((kind, layer)))
            out = {kind: gram_eigenvalues(rows, self.solver)}
            if skipped is not None:
                everything = torch.cat([rows, skipped.to(rows.device)])
                out[f"{kind}_all"] = (gram_eigenvalues(everything, self.solver) if prefer_gram(*everything.shape)
                                      else _covariance_of(everything, self.device, self._storage(kind, layer))
                                      .eigenvalues(self.solver))
            return out
        acc = (self.pre if kind == "pre" else self.post).pop(layer)
        out = {kind: acc.eigenvalues(self.solver)}
        if skipped is not None:
            acc.update(skipped)  # Chan's merge: all-token statistics, as notebook 05
            out[f"{kind}_all"] = acc.eigenvalues(self.solver)
        return out


_WIDER_THAN = {torch.float32: {"F32", "BF16", "F16"}, torch.float64: {"F64", "F32", "BF16", "F16"}}
_SAFETENSORS_NAME = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def holds_exactly(stored: str, compute: torch.dtype) -> bool:
    """Whether converting a tensor stored as `stored` (safetensors' name) to `compute` keeps every value."""
    return stored == _SAFETENSORS_NAME.get(compute) or stored in _WIDER_THAN.get(compute, set())


class BlockWeightSpectra(LayerConsumer):
    """`utils.metrics.weight_spectra.weight_spectra` of the model the pass runs, from the tensors
    the pass reads anyway: each block's matrices while the block is resident, the embedding in the
    embedding phase, an untied LM head at the end (so a streamed checkpoint is read once for its
    weight and activation metrics). Equal to `weight_spectra` when the compute dtype holds the
    stored weights exactly (`holds_exactly`: float32 compute, or the stored dtype), else a warning
    at construction; `table()` gives its result.
    Default SpectraOptions only: randomize's shuffles would come in another order. Its `finish`
    makes the engine read the head; with a tied head that is no second read, but the embedding
    tensor (V x d, stored dtype) stays through the pass."""

    def __init__(self, lw: LayerwiseModel, options: SpectraOptions | None = None):
        self.options = options or SpectraOptions()
        if self.options.randomize:
            raise ValueError("BlockWeightSpectra does not take randomize (its shuffles follow weight_spectra's order)")
        self.adapter, self.rng = lw.adapter, np.random.RandomState(self.options.seed)
        # Tied or not as the checkpoint says: the skeleton's head holds its own copy of a tied tensor.
        self.tied = (lw.checkpoint if lw.streamed else lw.adapter).unembedding_is_tied()
        if lw.streamed:
            store = lw.checkpoint.store
            floats = {store.dtype(n) for n in store.names} & {"F64", "F32", "BF16", "F16"}  # not integer buffers
            rounded = sorted(d for d in floats if not holds_exactly(d, lw.dtype))
            if rounded:
                warnings.warn(f"weight metrics are taken from the {str(lw.dtype).removeprefix('torch.')} compute copies "
                              f"of weights stored as {'/'.join(rounded)}: they differ from notebook 01's, which reads "
                              "the stored values (compute in float32 for the same numbers)", stacklevel=2)
        self.blocks: list[dict] = []
        self.outside: list[dict] = []  # embedding, untied unembedding (layer -1)

    def on_embedding(self, weight: torch.Tensor) -> None:
        self.outside.insert(0, matrix_record(-1, "embed", weight, self.options, self.rng))

    def on_block(self, layer: int, adapter: ModelAdapter) -> None:
        self.blocks += [matrix_record(layer, name, W, self.options, self.rng)
                        for name, W in adapter.weight_matrices(layer).items()]

    def finish(self, head: Head | None) -> None:
        unembed = self.adapter.unembedding() if head is not None and not self.tied else None
        if unembed is not None:
            self.outside.append(matrix_record(-1, "unembed", unembed, self.options, self.rng))

    def table(self) -> tuple[pd.DataFrame, dict]:
        return spectra_table(self.blocks + self.outside, self.options)


def _covariance_of(rows: torch.Tensor, device, dtype) -> StreamingCovariance:
    acc = StreamingCovariance(rows.shape[1], device, dtype)
    acc.update(rows)
    return acc


class LayerwiseDrift(LayerConsumer):
    """`utils.engine.representations.Drift` in layer-major order: mean over statistic tokens of
    cos(h_{j-1}, h_j) and ||h_j - h_{j-1}||_2 for j = 1..L + 1 (L + 1: the final norm's step,
    omitted without a final norm). Per step, the batches add up in the same order as in `Drift`."""

    def __init__(self, L: int, has_final_norm: bool):
        self.L, self.has_final_norm = L, has_final_norm
        self.steps = L + int(has_final_norm)
        self.sums = torch.zeros(2, self.steps, dtype=torch.float64)
        self.count = 0

    def on_state(self, s: StateBatch) -> None:
        if s.previous is None or s.state > self.steps:
            return
        keep = s.batch.rows
        a = s.previous.reshape(-1, s.previous.shape[-1])[keep].double()
        b = s.hidden.reshape(-1, s.hidden.shape[-1])[keep].double()
        self.sums[0, s.state - 1] += float(torch.nn.functional.cosine_similarity(a, b, dim=-1).sum())
        self.sums[1, s.state - 1] += float((b - a).norm(dim=-1).sum())
        if s.state == 1:
            self.count += int(keep.sum())

    def result(self) -> pd.DataFrame:
        """As `Drift.result`: layer j = 1..L (block j), L + 1 ('final_norm')."""
        means = (self.sums / self.count).numpy()
        return pd.DataFrame({
            "layer": np.arange(1, self.steps + 1),
            "step": [f"block {j}" for j in range(1, self.L + 1)] + (["final_norm"] if self.has_final_norm else []),
            "cosine": means[0], "l2": means[1],
        })


class LayerwiseLogitLens(LayerConsumer):
    """`utils.engine.representations.LogitLens` in layer-major order.

    The lens compares every layer with the final distribution, which exists only after the last
    block: each state's rows at the lens positions are kept ((L + 2) x n_positions x d, the
    model's dtype) and the logits are taken in `finish`, with the LM head read once. Positions,
    chunks and the order of the sums are those of `LogitLens`, so the results agree to rounding."""

    def __init__(self, adapter, tokens_shape: tuple[int, int], n_positions: int = 0, seed: int = 0,
                 mask: torch.Tensor | None = None, max_logit_elements: int = 1 << 23):
        if not adapter.is_causal_lm:
            raise ValueError(f"{adapter.name} models have no LM head: the logit lens does not apply")
        n_seq, self.seq_len = tokens_shape
        valid = torch.zeros(n_seq, self.seq_len, dtype=torch.bool)
        valid[:, :-1] = True  # a next token exists in the window
        if mask is not None:
            valid &= mask.bool() & torch.roll(mask.bool(), -1, dims=1)
        flat = valid.reshape(-1).nonzero().squeeze(1)
        if n_positions:
            g = torch.Generator().manual_seed(seed)
            flat = flat[torch.randperm(flat.numel(), generator=g)[:n_positions]].sort().values
        self.positions = flat
        self.L, self.chunk = adapter.dims.L, max(1, max_logit_elements // adapter.dims.V)
        self.sums = torch.zeros(5, self.L + 1, dtype=torch.float64)  # entropy, top1, agree, kl, ce
        self.ranks: list[torch.Tensor] = []
        self.count = 0
        self._kept: dict[int, list] = {}  # batch offset -> [targets, rows of states 0..L + 1]

    def on_state(self, s: StateBatch) -> None:
        B, S = s.batch.input_ids.shape
        lo = s.batch.offset * S
        pos = (self.positions[(self.positions >= lo) & (self.positions < lo + B * S)] - lo).to(s.hidden.device)
        if s.state == 0:
            self._kept[s.batch.offset] = [s.batch.input_ids.reshape(-1)[pos + 1]]
        self._kept[s.batch.offset].append(s.hidden.reshape(-1, s.hidden.shape[-1])[pos])

    def finish(self, head: Head) -> None:
        for offset in sorted(self._kept):
            targets, *rows = self._kept.pop(offset)
            for k in range(0, targets.numel(), self.chunk):
                self._chunk(head, [r[k : k + self.chunk] for r in rows], targets[k : k + self.chunk])

    def _chunk(self, head: Head, rows: list[torch.Tensor], tgt: torch.Tensor) -> None:
        """The sums of `LogitLens.__call__` for one chunk (rows[j]: (c, d) of state j)."""
        L = self.L
        final = head.logits(rows[L + 1]).float()  # (c, V)
        p_f, top_f, neg_entropy_f = final_lens_terms(final)
        ranks = torch.empty(L + 1, tgt.numel(), dtype=torch.long)
        for j in range(L + 1):
            z = final if j == L else head.logits(head.final_norm(rows[j])).float()
            ranks[j] = add_lens_terms(self.sums[:, j], z, p_f, top_f, neg_entropy_f, tgt)
        self.ranks.append(ranks)
        self.count += tgt.numel()

    def result(self) -> pd.DataFrame:
        """As `LogitLens.result`: one row per layer 0..L."""
        if self.count == 0:
            raise ValueError("the logit lens saw no positions")
        return lens_frame(self.sums, self.ranks, self.count)


# --- today's ActivationStats, layer-major --------------------------------------------------------------

def collect_layerwise(lw: LayerwiseModel, tokens: TokenSample, *, residual: bool = True,
                      ffn_layers: Sequence[int] = (), keep_samples: int = 0, batch_size: int = 8, seed: int = 0,
                      device: str | torch.device | None = None, attention_mask: torch.Tensor | None = None,
                      consumers: Sequence[LayerConsumer] = (), skip_first: int = 0, ffn_dtype: str = "float32",
                      keep_skipped: bool = False, progress: bool = True) -> ActivationStats:
    """`collect_activations`'s `ActivationStats` from one layer-major run (same arguments; no
    cache, no pass plan: every FFN layer in one pass). `consumers` are `LayerConsumer`s
    (`LayerwiseLogitLens`, `LayerwiseDrift`). All accumulators are kept, as today's engine
    returns them; memory-bounded callers use `ResidualStats(keep=False)` and `FFNStats(keep=False)`
    with `run_layerwise` instead."""
    ids = tokens.input_ids
    _, stat = statistic_mask(ids, attention_mask, skip_first)
    for i in ffn_layers:
        lw.adapter.check_layer(i)
    accumulator_dtype(ffn_dtype)
    device = torch.device(device) if device is not None else lw.device
    positions = sample_positions(stat, keep_samples, seed)
    dims = lw.adapter.dims
    res = ResidualStats(dims.L, dims.d, device, positions, ids.shape[1]) if residual else None
    ffn = FFNStats(ffn_layers, dims.d_ff, device, ffn_dtype, keep=True, keep_skipped=keep_skipped)
    run_layerwise(lw, tokens, [c for c in (res, ffn) if c is not None] + list(consumers), batch_size=batch_size,
                  attention_mask=attention_mask, skip_first=skip_first, progress=progress)
    return ActivationStats(
        residual=list(res.accumulators) if res else [], ffn_pre=ffn.pre, ffn_post=ffn.post,
        samples=res.samples if res else None, sample_positions=positions, n_tokens=int(stat.sum()),
        key={"engine": "layerwise", "streamed": lw.streamed},
        ffn_pre_skipped=ffn.pre_skipped, ffn_post_skipped=ffn.post_skipped,
    )
