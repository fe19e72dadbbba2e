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

Supported families and the one place to extend: the `FAMILIES` table at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class ModelDims:
    L: int  # blocks
    d: int  # residual width
    d_ff: int  # FFN hidden width
    h: int  # query heads
    GQA: int  # KV heads (the seeds' name)
    V: int  # vocabulary size
    d_head: int

    def as_dict(self) -> dict:
        return dict(L=self.L, d=self.d, d_ff=self.d_ff, h=self.h, GQA=self.GQA, V=self.V, d_head=self.d_head)


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
    """Attribute paths of one architecture family, relative to `model.base_model`."""

    name: str
    model_types: tuple[str, ...]
    blocks: str
    qkv: Callable[[nn.Module, int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attn_module: str  # inside a block
    o_proj: str
    ffn_in: str
    ffn_gate: str | None
    ffn_out: str
    embed: str
    final_norm: str | None
    causal_lm: bool = True


def _separate_qkv(q: str, k: str, v: str):
    def split(block: nn.Module, h: int, n_kv: int, d_head: int):
        return _linear(_get(block, q)), _linear(_get(block, k)), _linear(_get(block, v))

    return split


def _gpt2_qkv(block: nn.Module, h: int, n_kv: int, d_head: int):
    w = _linear(block.attn.c_attn)  # (3d, d): rows [q; k; v]
    return w.chunk(3, dim=0)


def _neox_qkv(block: nn.Module, h: int, n_kv: int, d_head: int):
    w = _linear(block.attention.query_key_value)  # (3d, d), per head interleaved [q_h; k_h; v_h]
    per_head = w.reshape(h, 3, d_head, -1)
    return tuple(per_head[:, i].reshape(h * d_head, -1) for i in range(3))


class ModelAdapter:
    """Architecture-neutral access to a loaded HF model (see module docstring)."""

    def __init__(self, model: nn.Module, family: Family):
        self.model = model
        self.family = family
        self.config = getattr(model.config, "text_config", None) or model.config
        self.base = getattr(model, "base_model", model)
        self.blocks: nn.ModuleList = _get(self.base, family.blocks)
        c = self.config
        h = c.num_attention_heads
        d = c.hidden_size
        d_head = getattr(c, "head_dim", None) or d // h
        n_kv = getattr(c, "num_key_value_heads", None) or h
        d_ff = _linear(_get(self.blocks[0], family.ffn_out)).shape[1]
        V = self.embedding().shape[0]
        self.dims = ModelDims(L=len(self.blocks), d=d, d_ff=d_ff, h=h, GQA=n_kv, V=V, d_head=d_head)

    # --- identity -------------------------------------------------------------------------
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

    # --- weights --------------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.blocks[self.check_layer(layer)]

    def attention_module(self, layer: int) -> nn.Module:
        return _get(self.block(layer), self.family.attn_module)

    def attention(self, layer: int) -> AttentionWeights:
        L_, d, _, h, n_kv, _, d_head = self.dims.as_dict().values()
        block = self.block(layer)
        wq, wk, wv = self.family.qkv(block, h, n_kv, d_head)
        wo = _linear(_get(block, self.family.o_proj))  # (d, h * d_head)
        group = h // n_kv
        scale = getattr(self.attention_module(layer), "scaling", None) or d_head**-0.5
        return AttentionWeights(
            q=wq.reshape(h, d_head, d),
            k=wk.reshape(n_kv, d_head, d),
            v=wv.reshape(n_kv, d_head, d),
            o=wo.reshape(d, h, d_head).permute(1, 0, 2),
            kv_head_of=torch.arange(h) // group,  # HF repeat_kv: query head i reads KV head i // group
            scale=float(scale),
        )

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


_LLAMA_LIKE = dict(
    blocks="layers",
    qkv=_separate_qkv("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
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
    Family("gemma3", ("gemma3_text", "gemma3", "gemma2", "gemma"), **_LLAMA_LIKE),
    Family(
        "gpt2", ("gpt2",), blocks="h", qkv=_gpt2_qkv, attn_module="attn", o_proj="attn.c_proj",
        ffn_in="mlp.c_fc", ffn_gate=None, ffn_out="mlp.c_proj", embed="wte", final_norm="ln_f",
    ),
    Family(
        "gpt_neox", ("gpt_neox",), blocks="layers", qkv=_neox_qkv, attn_module="attention",
        o_proj="attention.dense", ffn_in="mlp.dense_h_to_4h", ffn_gate=None, ffn_out="mlp.dense_4h_to_h",
        embed="embed_in", final_norm="final_layer_norm",
    ),
    Family(
        "bert", ("bert",), blocks="encoder.layer",
        qkv=_separate_qkv("attention.self.query", "attention.self.key", "attention.self.value"),
        attn_module="attention.self", o_proj="attention.output.dense", ffn_in="intermediate.dense",
        ffn_gate=None, ffn_out="output.dense", embed="embeddings.word_embeddings", final_norm=None,
        causal_lm=False,
    ),
    Family(
        "spectra_nanogpt", ("spectra_nanogpt",), blocks="layers",
        qkv=_separate_qkv("attn.q_proj", "attn.k_proj", "attn.v_proj"), attn_module="attn",
        o_proj="attn.o_proj", ffn_in="mlp.up_proj", ffn_gate="mlp.gate_proj", ffn_out="mlp.down_proj",
        embed="wte", final_norm="ln_f",
    ),
)


def supported_model_types() -> list[str]:
    return sorted({t for f in FAMILIES for t in f.model_types})


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded HF model; a clear error for an unsupported architecture."""
    model_type = getattr(model.config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return ModelAdapter(model, family)
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} is not supported. Supported model types: "
        f"{', '.join(supported_model_types())}. To add one, add a Family entry to FAMILIES "
        f"in utils/adapters.py."
    )


def get_model_dims(model_or_adapter) -> dict:
    """Seed-compatible dims dict: L, d, d_ff, h, GQA (number of KV heads), V, d_head."""
    adapter = model_or_adapter if isinstance(model_or_adapter, ModelAdapter) else get_adapter(model_or_adapter)
    return adapter.dims.as_dict()
