"""One vocabulary over transformer architectures.

Every notebook talks to a model through `get_adapter(model)`, never through attribute paths,
so no notebook branches on architecture. An adapter exposes, per block:

- `attention(i)`: per-head weights in the `y = W x` convention
      q (h, d_head, d), k (n_kv, d_head, d), v (n_kv, d_head, d), o (h, d, d_head),
  the GQA map `kv_head_of` (query head -> KV head) and the score scale;
- `ffn(i)`: w_in (d_ff, d), optional w_gate (d_ff, d), w_out (d, d_ff);
- `weight_matrices(i)`: the full matrices by name (q, k, v, o, ffn_gate, ffn_in, ffn_out);
- hook points: `block(i)` (its output is the residual stream), `ffn_pre_module(i)` (its output is
  the FFN pre-activation), `ffn_post_module(i)` (its input is the FFN post-activation);
plus `embedding()`, `unembedding()`, `final_norm`, `logits(h)`.

`CheckpointAdapter` gives the same weight vocabulary (`WeightAdapter`: no hook points) from a
checkpoint's safetensors, one tensor at a time, with tensor names derived from the same table.

Supported families and the one place to extend: the `FAMILIES` table at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from utils.models.tensor_store import CheckpointError


class UnsupportedArchitectureError(ValueError):
    pass


class CheckpointShapeError(CheckpointError):
    """A checkpoint tensor's shape differs from what its config.json implies (or the tensor is missing)."""


@dataclass(frozen=True)
class ModelDims:
    L: int  # blocks
    d: int  # residual width
    d_ff: int  # FFN hidden width
    h: int  # query heads
    h_kv: int  # KV heads (h_kv = h without grouped-query attention)
    V: int  # vocabulary size
    d_head: int

    def as_dict(self) -> dict:
        """The seeds' dims dict (`get_model_dims` of 1.py / 2.py), which calls the KV heads "GQA"."""
        return dict(L=self.L, d=self.d, d_ff=self.d_ff, h=self.h, GQA=self.h_kv, V=self.V, d_head=self.d_head)


@dataclass(frozen=True)
class AttentionWeights:
    """Per-head attention weights of one block; scores_h(x_i, x_j) = scale * (q[h] x_i) . (k[g] x_j)."""

    q: torch.Tensor  # (h, d_head, d)
    k: torch.Tensor  # (n_kv, d_head, d)
    v: torch.Tensor  # (n_kv, d_head, d)
    o: torch.Tensor  # (h, d, d_head): the block output is sum_h o[h] @ z_h
    kv_head_of: torch.Tensor  # (h,) long: g = kv_head_of[h]
    scale: float

    def key_of(self, head: int) -> torch.Tensor:
        """W_K of the KV head that query head `head` reads: (d_head, d)."""
        return self.k[int(self.kv_head_of[head])]


@dataclass(frozen=True)
class FFNWeights:
    w_in: torch.Tensor  # (d_ff, d): up projection
    w_gate: torch.Tensor | None  # (d_ff, d) for gated FFNs (SwiGLU, GeGLU), else None
    w_out: torch.Tensor  # (d, d_ff): down projection

    @property
    def gated(self) -> bool:
        return self.w_gate is not None


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _linear(module: nn.Module) -> torch.Tensor:
    """Weight of a Linear (out, in) or of a GPT-2 Conv1D (stored (in, out)), as (out, in)."""
    w = module.weight.detach()
    return w.T if type(module).__name__ == "Conv1D" else w


@dataclass(frozen=True)
class Family:
    """Attribute paths of one architecture family, relative to `model.base_model`.

    The same paths name the tensors of a saved checkpoint: module path + ".weight", behind a
    prefix that differs between checkpoints ("model.", "transformer.", "gpt_neox.", "bert." or
    none), found by `CheckpointAdapter`. `qkv` is three separate projections, or one fused
    projection split by `qkv_split(w (out, in), h, n_kv, d_head) -> (wq, wk, wv)`.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    qkv: tuple[str, ...]
    attn_module: str  # inside a block
    o_proj: str
    ffn_in: str
    ffn_gate: str | None
    ffn_out: str
    embed: str
    final_norm: str | None
    causal_lm: bool = True
    qkv_split: Callable[[torch.Tensor, int, int, int], tuple] | None = None
    conv1d: bool = False  # GPT-2's Conv1D stores (in, out): checkpoint tensors are transposed
    lm_head: str = "lm_head"  # output embedding, relative to the top-level model
    # Score scale of a layer's attention from the config (the loaded model's `scaling`), None: d_head^-1/2.
    query_scale: Callable[[object, int], float | None] = lambda config, layer: None

    def block_paths(self, layer: int) -> dict[str, str]:
        """Module paths (relative to the base model) of one block's matrices, keyed by weight
        type; a fused QKV projection is keyed "qkv"."""
        qkv = {"qkv": self.qkv[0]} if len(self.qkv) == 1 else dict(zip("qkv", self.qkv))
        paths = {**qkv, "o": self.o_proj, "ffn_gate": self.ffn_gate, "ffn_in": self.ffn_in, "ffn_out": self.ffn_out}
        return {k: f"{self.blocks}.{layer}.{p}" for k, p in paths.items() if p}

    def split_qkv(self, tensors: tuple, h: int, n_kv: int, d_head: int) -> tuple:
        """(wq, wk, wv) as (out, in) matrices from the tensor(s) at `qkv`, already (out, in)."""
        if self.qkv_split is None:
            return tuple(tensors)
        return tuple(self.qkv_split(tensors[0], h, n_kv, d_head))


def _gpt2_split(w: torch.Tensor, h: int, n_kv: int, d_head: int):
    return w.chunk(3, dim=0)  # (3d, d): rows [q; k; v]


def _gpt2_scale(config, layer: int) -> float:
    """GPT2Attention.scaling: d_head^-1/2 unless `scale_attn_weights` is off, divided by
    (layer + 1) under `scale_attn_by_inverse_layer_idx` (Mistral/Stanford CRFM GPT-2 runs)."""
    scale = (config.n_embd // config.n_head) ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
    return scale / (layer + 1) if getattr(config, "scale_attn_by_inverse_layer_idx", False) else scale


def _neox_split(w: torch.Tensor, h: int, n_kv: int, d_head: int):
    per_head = w.reshape(h, 3, d_head, -1)  # (3d, d), per head interleaved [q_h; k_h; v_h]
    return tuple(per_head[:, i].reshape(h * d_head, -1) for i in range(3))


def _config_d_ff(config) -> int | None:
    """The FFN width a config states: intermediate_size, GPT-2's n_inner (None: 4 d), or None."""
    if getattr(config, "model_type", None) == "gpt2":
        return getattr(config, "n_inner", None) or 4 * config.n_embd
    return getattr(config, "intermediate_size", None)


def _dims(config, L: int, d_ff: int, V: int) -> ModelDims:
    """Dims from a (text) config plus what the weights' shapes say: blocks, FFN width, vocabulary."""
    h = config.num_attention_heads
    d = config.hidden_size
    d_head = getattr(config, "head_dim", None) or d // h
    n_kv = getattr(config, "num_key_value_heads", None) or h
    return ModelDims(L=L, d=d, d_ff=d_ff, h=h, h_kv=n_kv, V=V, d_head=d_head)


class WeightAdapter:
    """The weight vocabulary shared by `ModelAdapter` (a loaded model) and `CheckpointAdapter`
    (tensors read from a checkpoint): subclasses provide `dims`, `family`, `config`,
    `attention(i)`, `ffn(i)`, `embedding()`, `unembedding()` and `unembedding_is_tied()`."""

    family: Family
    dims: ModelDims

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def is_causal_lm(self) -> bool:
        return self.family.causal_lm and self.unembedding() is not None

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.dims.L:
            raise IndexError(f"layer {layer} is out of range: this model has layers 0..{self.dims.L - 1}")
        return layer

    def check_head(self, head: int) -> int:
        if not 0 <= head < self.dims.h:
            raise IndexError(f"head {head} is out of range: this model has heads 0..{self.dims.h - 1}")
        return head

    def _attention_weights(self, wq, wk, wv, wo, scale: float) -> AttentionWeights:
        """Per-head views of the full (out, in) matrices; wo is (d, h * d_head)."""
        _, d, _, h, n_kv, _, d_head = self.dims.as_dict().values()
        return AttentionWeights(
            q=wq.reshape(h, d_head, d),
            k=wk.reshape(n_kv, d_head, d),
            v=wv.reshape(n_kv, d_head, d),
            o=wo.reshape(d, h, d_head).permute(1, 0, 2),
            kv_head_of=torch.arange(h) // (h // n_kv),  # HF repeat_kv: query head i reads KV head i // group
            scale=float(scale),
        )

    def named_matrices(self):
        """Every stored matrix as it is stored (fused QKV unsplit, Conv1D untransposed), one at a
        time: yields (layer (-1 outside the blocks), weight type, tensor name, tensor)."""
        for layer in range(self.dims.L):
            for weight, (name, tensor) in self._stored_block(layer).items():
                yield layer, weight, name, tensor
        yield -1, "embed", self._stored_name(self.family.embed), self.embedding()
        if self.unembedding() is not None and not self.unembedding_is_tied():
            yield -1, "unembed", self._unembed_stored_name(), self.unembedding()

    def _unembed_stored_name(self) -> str:
        return self.family.lm_head + ".weight"

    def weight_matrices(self, layer: int) -> dict[str, torch.Tensor]:
        """Full matrices of one block, (out, in) convention, keyed q, k, v, o, ffn_gate, ffn_in, ffn_out."""
        a, f = self.attention(layer), self.ffn(layer)
        h, d_head, d = a.q.shape
        mats = {
            "q": a.q.reshape(h * d_head, d),
            "k": a.k.reshape(-1, d),
            "v": a.v.reshape(-1, d),
            "o": a.o.permute(1, 0, 2).reshape(d, h * d_head),
        }
        if f.w_gate is not None:
            mats["ffn_gate"] = f.w_gate
        mats["ffn_in"] = f.w_in
        mats["ffn_out"] = f.w_out
        return mats


class ModelAdapter(WeightAdapter):
    """Architecture-neutral access to a loaded HF model (see module docstring)."""

    def __init__(self, model: nn.Module, family: Family):
        self.model = model
        self.family = family
        self.config = getattr(model.config, "text_config", None) or model.config
        self.base = getattr(model, "base_model", model)
        self.blocks: nn.ModuleList = _get(self.base, family.blocks)
        d_ff = _linear(_get(self.blocks[0], family.ffn_out)).shape[1]
        self.dims = _dims(self.config, len(self.blocks), d_ff, V=self.embedding().shape[0])

    # --- weights --------------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.blocks[self.check_layer(layer)]

    def attention_module(self, layer: int) -> nn.Module:
        return _get(self.block(layer), self.family.attn_module)

    def attention(self, layer: int) -> AttentionWeights:
        dims = self.dims
        block = self.block(layer)
        wq, wk, wv = self.family.split_qkv(tuple(_linear(_get(block, p)) for p in self.family.qkv),
                                           dims.h, dims.h_kv, dims.d_head)
        scale = getattr(self.attention_module(layer), "scaling", None) or dims.d_head**-0.5
        return self._attention_weights(wq, wk, wv, _linear(_get(block, self.family.o_proj)), scale)

    def _stored_name(self, path: str) -> str:
        prefix = getattr(self.model, "base_model_prefix", "") if self.base is not self.model else ""
        return f"{prefix + '.' if prefix else ''}{path}.weight"

    def _stored_block(self, layer: int) -> dict[str, tuple[str, torch.Tensor]]:
        paths = self.family.block_paths(self.check_layer(layer))
        modules = {k: _get(self.base, p) for k, p in paths.items() if k != "ffn_gate"}
        if self._gate_module(layer) is not None:
            modules["ffn_gate"] = self._gate_module(layer)
        return {k: (self._stored_name(paths[k]), m.weight.detach()) for k, m in modules.items()}

    def _gate_module(self, layer: int) -> nn.Module | None:
        """The gate projection, or None for non-gated FFNs (also within a family, e.g. NanoGPT)."""
        path = self.family.ffn_gate
        if not path:
            return None
        parent, _, leaf = path.rpartition(".")
        return getattr(_get(self.block(layer), parent) if parent else self.block(layer), leaf, None)

    def ffn(self, layer: int) -> FFNWeights:
        block = self.block(layer)
        gate_module = self._gate_module(layer)
        gate = _linear(gate_module) if gate_module is not None else None
        return FFNWeights(
            w_in=_linear(_get(block, self.family.ffn_in)),
            w_gate=gate,
            w_out=_linear(_get(block, self.family.ffn_out)),
        )

    def embedding(self) -> torch.Tensor:
        """Token embedding matrix (V, d)."""
        return self.model.get_input_embeddings().weight.detach()

    def unembedding(self) -> torch.Tensor | None:
        """Unembedding (V, d), or None for encoders without an LM head."""
        if not self.family.causal_lm:
            return None
        head = self.model.get_output_embeddings()
        return None if head is None else head.weight.detach()

    def unembedding_is_tied(self) -> bool:
        u = self.unembedding()
        return u is not None and u.data_ptr() == self.embedding().data_ptr()

    # --- hook points ----------------------------------------------------------------------
    @property
    def final_norm(self) -> nn.Module | None:
        return _get(self.base, self.family.final_norm) if self.family.final_norm else None

    def ffn_pre_module(self, layer: int) -> nn.Module:
        """Module whose output is the FFN pre-activation (gate output if gated, else up output)."""
        gate = self._gate_module(layer)
        return gate if gate is not None else _get(self.block(layer), self.family.ffn_in)

    def ffn_pre_weight(self, layer: int) -> torch.Tensor:
        """Weight (D_ff, d) of `ffn_pre_module(layer)`: its output is input @ W^T (+ bias)."""
        return _linear(self.ffn_pre_module(layer))

    def ffn_post_module(self, layer: int) -> nn.Module:
        """Module whose input is the FFN post-activation (the down projection)."""
        return _get(self.block(layer), self.family.ffn_out)

    def logits(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of final-normed hidden states (..., d) -> (..., V), with Gemma's
        final logit soft-capping where the config sets it."""
        head = self.model.get_output_embeddings()
        if head is None or not self.family.causal_lm:
            raise ValueError(f"{self.family.name} models have no LM head")
        logits = head(normed_hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def apply_final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        norm = self.final_norm
        return hidden if norm is None else norm(hidden)


class CheckpointAdapter(WeightAdapter):
    """The weight part of `ModelAdapter`, read tensor by tensor from a checkpoint's safetensors
    (a `utils.models.tensor_store.TensorStore`) without instantiating the model.

    Tensor names come from the family's module paths (+ ".weight") behind the checkpoint's
    prefix, found from the first block's output projection. GPT-2's Conv1D tensors are
    transposed to (out, in); fused QKV projections are split as in the loaded model; a tied
    unembedding (config `tie_word_embeddings`, HF's default) is the embedding itself. Tensors
    keep their stored dtype unless `dtype` is narrower (then they are rounded to it, as the
    loaded model would be); every consumer works in float64. Nothing is cached: each call reads
    what it returns, so memory is bounded by one block (or the embedding). Tensors are moved to
    `device` as they are read (params `device: cuda`/`auto` with a GPU: the Gram products and
    eigensolvers of notebooks 01-03 then run there).
    """

    def __init__(self, store, config, family: Family, causal_lm: bool = True, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu"):
        self.store, self.family, self.dtype, self.device = store, family, dtype, torch.device(device)
        self.top_config = config
        self.config = getattr(config, "text_config", None) or config
        self.causal_lm = causal_lm and family.causal_lm
        self.prefix = self._find_prefix()
        L = self.config.num_hidden_layers
        d_ff = _config_d_ff(self.config) or self._shape(family.block_paths(0)["ffn_out"])[1]
        self.dims = _dims(self.config, L, d_ff, V=getattr(self.config, "vocab_size", None)
                          or store.shape(self.embedding_name)[0])
        self._check_shapes()

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint tensor name -> its stored shape as the config implies (headers only):
        q (h d_head, d), k and v (h_kv d_head, d), fused qkv (h d_head + 2 h_kv d_head, d),
        o (d, h d_head), gate and up (D_ff, d), down (d, D_ff), embedding and LM head (V, d);
        GPT-2's Conv1D stores them transposed."""
        _, d, d_ff, h, n_kv, V, d_head = self.dims.as_dict().values()
        rows = {"q": h * d_head, "k": n_kv * d_head, "v": n_kv * d_head, "qkv": (h + 2 * n_kv) * d_head}
        by_type = {**{k: (r, d) for k, r in rows.items()}, "o": (d, h * d_head), "ffn_gate": (d_ff, d),
                   "ffn_in": (d_ff, d), "ffn_out": (d, d_ff)}
        expected = {}
        for layer in range(self.dims.L):
            for weight, path in self.family.block_paths(layer).items():
                shape = by_type[weight]
                expected[self.tensor_name(path)] = shape[::-1] if self.family.conv1d else shape
        expected[self.embedding_name] = (V, d)
        if self.unembedding_name is not None:
            expected[self.unembedding_name] = (V, d)
        return expected

    def _check_shapes(self) -> None:
        """CheckpointShapeError naming every tensor whose stored shape is not the config's (a
        missing block tensor included; a gate projection may be absent, as in non-gated models)."""
        gate = self.family.ffn_gate
        problems = []
        for name, shape in self.expected_shapes().items():
            if name not in self.store:
                if not (gate and name.endswith(f"{gate}.weight")):
                    problems.append(f"{name}: missing, expected shape {shape}")
            elif tuple(self.store.shape(name)) != shape:
                problems.append(f"{name}: shape {tuple(self.store.shape(name))}, expected {shape}")
        if problems:
            d = self.dims
            raise CheckpointShapeError(
                f"{self.store.directory}: {len(problems)} tensor(s) disagree with config.json (L={d.L}, d={d.d}, "
                f"d_ff={d.d_ff}, h={d.h}, h_kv={d.h_kv}, d_head={d.d_head}, V={d.V}):\n  " + "\n  ".join(problems[:12])
                + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
                + "\nThe weights and config.json do not belong together: use the config.json saved with these weights."
            )

    def _find_prefix(self) -> str:
        suffix = f"{self.family.block_paths(0)['o']}.weight"
        prefixes = sorted((n[: -len(suffix)] for n in self.store.names if n == suffix or n.endswith("." + suffix)),
                          key=len)
        if not prefixes:
            raise UnsupportedArchitectureError(
                f"{self.store.directory}: no tensor named '{suffix}' (with any prefix): the checkpoint's tensor "
                f"names do not follow the {self.family.name} layout in utils/models/adapters.py"
            )
        return prefixes[0]

    # --- reading ----------------------------------------------------------------------------
    def tensor_name(self, path: str) -> str:
        """Checkpoint name of the weight of the module at `path` (relative to the base model)."""
        return f"{self.prefix}{path}.weight"

    def _shape(self, path: str) -> tuple[int, ...]:
        shape = tuple(self.store.shape(self.tensor_name(path)))
        return shape[::-1] if self.family.conv1d else shape

    def _read(self, name: str) -> torch.Tensor:
        """One tensor, on `device`, in `dtype` unless its stored dtype holds it exactly (bf16 stays bf16)."""
        t = self.store.get(name)
        dtype = t.dtype
        if self.dtype is not None and t.dtype != self.dtype and not _exact_in(t.dtype, self.dtype):
            dtype = self.dtype
        return t.to(self.device, dtype)

    def _matrix(self, path: str) -> torch.Tensor:
        """A block matrix as (out, in)."""
        t = self._read(self.tensor_name(path))
        return t.T if self.family.conv1d else t

    # --- weights ----------------------------------------------------------------------------
    def attention(self, layer: int) -> AttentionWeights:
        paths, dims = self.family.block_paths(self.check_layer(layer)), self.dims
        qkv = tuple(self._matrix(paths[k]) for k in (("qkv",) if "qkv" in paths else ("q", "k", "v")))
        wq, wk, wv = self.family.split_qkv(qkv, dims.h, dims.h_kv, dims.d_head)
        scale = self.family.query_scale(self.config, layer) or dims.d_head**-0.5
        return self._attention_weights(wq, wk, wv, self._matrix(paths["o"]), scale)

    def ffn(self, layer: int) -> FFNWeights:
        paths = self.family.block_paths(self.check_layer(layer))
        gate = paths.get("ffn_gate")
        has_gate = gate is not None and self.tensor_name(gate) in self.store
        return FFNWeights(w_in=self._matrix(paths["ffn_in"]), w_gate=self._matrix(gate) if has_gate else None,
                          w_out=self._matrix(paths["ffn_out"]))

    @property
    def embedding_name(self) -> str:
        return self.tensor_name(self.family.embed)

    @property
    def unembedding_name(self) -> str | None:
        """Checkpoint name of the untied LM head; None for encoders and tied heads."""
        if not self.causal_lm or self.unembedding_is_tied():
            return None
        leaf = f"{self.family.lm_head}.weight"
        names = sorted((n for n in self.store.names if n == leaf or n.endswith("." + leaf)), key=len)
        if not names:
            raise UnsupportedArchitectureError(
                f"{self.store.directory}: the config does not tie the unembedding to the embedding, but the "
                f"checkpoint has no tensor '{leaf}'"
            )
        return names[0]

    def embedding(self) -> torch.Tensor:
        """Token embedding matrix (V, d)."""
        return self._read(self.embedding_name)

    def unembedding(self) -> torch.Tensor | None:
        """Unembedding (V, d), or None for encoders."""
        if not self.causal_lm:
            return None
        name = self.unembedding_name
        return self.embedding() if name is None else self._read(name)

    def unembedding_is_tied(self) -> bool:
        return self.causal_lm and bool(getattr(self.top_config, "tie_word_embeddings", True))

    def _stored_name(self, path: str) -> str:
        return self.tensor_name(path)

    def _unembed_stored_name(self) -> str:
        return self.unembedding_name

    def _stored_block(self, layer: int) -> dict[str, tuple[str, torch.Tensor]]:
        names = {k: self.tensor_name(p) for k, p in self.family.block_paths(self.check_layer(layer)).items()}
        return {k: (n, self._read(n)) for k, n in names.items() if n in self.store}


def _exact_in(stored: torch.dtype, target: torch.dtype) -> bool:
    """Whether every value of `stored` is exactly representable in `target` (no rounding needed)."""
    return target in (torch.float32, torch.float64) and stored in (torch.float16, torch.bfloat16, torch.float32)


_LLAMA_LIKE = dict(
    blocks="layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_module="self_attn",
    o_proj="self_attn.o_proj",
    ffn_in="mlp.up_proj",
    ffn_gate="mlp.gate_proj",
    ffn_out="mlp.down_proj",
    embed="embed_tokens",
    final_norm="norm",
)

# The one table to extend for a new architecture: map its model_type(s) to attribute paths.
FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "qwen2", "mistral", "qwen3", "smollm3"), **_LLAMA_LIKE),
    Family("gemma3", ("gemma3_text", "gemma3", "gemma2", "gemma"), **_LLAMA_LIKE,
           query_scale=lambda c, layer: getattr(c, "query_pre_attn_scalar", None) and c.query_pre_attn_scalar**-0.5),
    Family(
        "gpt2", ("gpt2",), blocks="h", qkv=("attn.c_attn",), qkv_split=_gpt2_split, conv1d=True,
        attn_module="attn", o_proj="attn.c_proj", ffn_in="mlp.c_fc", ffn_gate=None, ffn_out="mlp.c_proj",
        embed="wte", final_norm="ln_f", query_scale=_gpt2_scale,
    ),
    Family(
        "gpt_neox", ("gpt_neox",), blocks="layers", qkv=("attention.query_key_value",), qkv_split=_neox_split,
        attn_module="attention", lm_head="embed_out",
        o_proj="attention.dense", ffn_in="mlp.dense_h_to_4h", ffn_gate=None, ffn_out="mlp.dense_4h_to_h",
        embed="embed_in", final_norm="final_layer_norm",
    ),
    Family(
        "bert", ("bert",), blocks="encoder.layer",
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
        attn_module="attention.self", o_proj="attention.output.dense", ffn_in="intermediate.dense",
        ffn_gate=None, ffn_out="output.dense", embed="embeddings.word_embeddings", final_norm=None,
        causal_lm=False,
    ),
    Family(
        "spectra_nanogpt", ("spectra_nanogpt",), blocks="layers",
        qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"), attn_module="attn",
        o_proj="attn.o_proj", ffn_in="mlp.up_proj", ffn_gate="mlp.gate_proj", ffn_out="mlp.down_proj",
        embed="wte", final_norm="ln_f",
    ),
)


def supported_model_types() -> list[str]:
    return sorted({t for f in FAMILIES for t in f.model_types})


def family_of(config) -> Family:
    """The family of a config's model_type; a clear error for an unsupported architecture."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} is not supported. Supported model types: "
        f"{', '.join(supported_model_types())}. To add one, add a Family entry to FAMILIES "
        f"in utils/models/adapters.py."
    )


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded HF model; a clear error for an unsupported architecture."""
    return ModelAdapter(model, family_of(model.config))


def get_model_dims(model_or_adapter) -> dict:
    """Seed-compatible dims dict: L, d, d_ff, h, GQA (number of KV heads), V, d_head."""
    adapter = model_or_adapter if isinstance(model_or_adapter, WeightAdapter) else get_adapter(model_or_adapter)
    return adapter.dims.as_dict()
