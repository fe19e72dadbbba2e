"""A small NanoGPT-style decoder as a real `transformers` model, and a byte-level tokenizer.

Registered as model_type "spectra_nanogpt" with AutoConfig / AutoModelForCausalLM at import,
so checkpoints written with `save_pretrained` load with `AutoModelForCausalLM.from_pretrained`
(trust_remote_code=False) once `utils.models.nanogpt` (or `utils.engine.training`) has been imported.

Module layout (names carry the role):
    model.transformer.wte                       token embedding (vocab, d), tied to model.lm_head
    model.transformer.wpe                       learned positions (max_pos, d), only if position_embedding="learned"
    model.transformer.layers[i].ln_attn         LayerNorm before (PreLN) / after (PostLN) attention; Identity if norm="none"
    model.transformer.layers[i].attn.{q_proj,k_proj,v_proj,o_proj}   (d, d) each
    model.transformer.layers[i].ln_mlp          as ln_attn, around the FFN
    model.transformer.layers[i].mlp.gate_proj   (D, d), SwiGLU only
    model.transformer.layers[i].mlp.up_proj     (D, d)
    model.transformer.layers[i].mlp.down_proj   (d, D)
    model.transformer.ln_f                      final LayerNorm (PreLN only; Identity for PostLN and norm-free)
    model.lm_head                               (vocab, d), weight tied to wte

Architecture references: nanoGPT (Karpathy), GPT-2 (Radford et al. 2019) for PreLN and the
1/sqrt(2L) residual init, the original Transformer (Vaswani et al. 2017) for PostLN,
RoPE (Su et al. 2024), SwiGLU (Shazeer 2020). The NerVE sweeps (activation, LayerNorm
placement, FFN width, RoPE vs NoPE) are each one config field.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from utils.models.nanogpt_config import ACTIVATIONS, MODEL_TYPE, NORMS, POSITIONS, NanoGPTConfig, byte_tokenizer

__all__ = ["ACTIVATIONS", "MODEL_TYPE", "NORMS", "POSITIONS", "NanoGPTConfig", "NanoGPTForCausalLM", "byte_tokenizer"]

def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq, head_dim) for angles m * theta^(-2i/head_dim) (Su et al. 2024, eq. 34),
    each frequency repeated for the two halves used by `rotate_half`."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)  # (hd/2,)
    angles = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (seq, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (seq, hd)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) by the position angle: x cos + rotate_half(x) sin. x: (B, H, S, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Causal multi-head self-attention, softmax(q k^T / sqrt(hd) + mask) v."""

    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        d = config.hidden_size
        self.n_head = config.num_attention_heads
        self.head_dim = d // self.n_head
        self.rope = config.position_embedding == "rope"
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.k_proj = nn.Linear(d, d, bias=config.bias)
        self.v_proj = nn.Linear(d, d, bias=config.bias)
        self.o_proj = nn.Linear(d, d, bias=config.bias)
        self.o_proj.writes_residual = True  # scaled init, see NanoGPTForCausalLM._init_weights

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, S, d = x.shape
        q, k, v = (p(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope:
            cos, sin = rope_cos_sin(S, self.head_dim, self.rope_theta, x.device, x.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if attn_bias is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, S, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.o_proj(y.transpose(1, 2).reshape(B, S, d))


class MLP(nn.Module):
    """FFN(x) = W_down act(W_up x) or, for SwiGLU, W_down (silu(W_gate x) * W_up x) (Shazeer 2020).

    NerVE (sec. 2) pre-activation = gate_proj output (gated) or up_proj output (otherwise);
    post-activation = the input of down_proj.
    """

    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        d, D = config.hidden_size, config.intermediate_size
        self.act = config.hidden_act
        if self.act == "swiglu":
            self.gate_proj = nn.Linear(d, D, bias=config.bias)
        self.up_proj = nn.Linear(d, D, bias=config.bias)
        self.down_proj = nn.Linear(D, d, bias=config.bias)
        self.down_proj.writes_residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, S, D)
        elif self.act == "relu":
            h = F.relu(self.up_proj(x))
        else:
            h = F.gelu(self.up_proj(x))
        return self.down_proj(h)


def make_norm(config: NanoGPTConfig) -> nn.Module:
    if config.norm_placement == "none":
        return nn.Identity()
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon, bias=config.bias)


class Block(nn.Module):
    """PreLN: x + f(LN(x)); PostLN: LN(x + f(x)); none: x + f(x). f = attention, then FFN."""

    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.post_ln = config.norm_placement == "postln"
        self.ln_attn = make_norm(config)
        self.attn = Attention(config)
        self.ln_mlp = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        if self.post_ln:
            x = self.ln_attn(x + self.attn(x, attn_bias))
            return self.ln_mlp(x + self.mlp(x))
        x = x + self.attn(self.ln_attn(x), attn_bias)
        return x + self.mlp(self.ln_mlp(x))


class NanoGPTModel(nn.Module):
    """Embeddings and the stack of blocks (the `transformer` of NanoGPTForCausalLM)."""

    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding == "learned":
            self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.ln_f = make_norm(config) if config.norm_placement == "preln" else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False,
                use_cache: bool | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """use_cache is accepted for the HF base-model call convention (the activation engine
        passes it); NanoGPT keeps no KV cache."""
        B, S = input_ids.shape
        x = self.wte(input_ids)  # (B, S, d)
        if hasattr(self, "wpe"):
            x = x + self.wpe(torch.arange(S, device=input_ids.device))
        attn_bias = None
        if attention_mask is not None:
            # additive bias (B, 1, S, S): causal and key padding; a padded query attends to itself only.
            # No data-dependent shortcut here, so the forward stays vmap-able; pass None for no padding.
            causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
            allowed = causal[None] & attention_mask.bool()[:, None, :]
            allowed = allowed | torch.eye(S, dtype=torch.bool, device=x.device)[None]
            attn_bias = torch.zeros(B, 1, S, S, dtype=x.dtype, device=x.device)
            attn_bias = attn_bias.masked_fill(~allowed[:, None], float("-inf"))
        hidden = [x] if output_hidden_states else None
        for block in self.layers:
            x = block(x, attn_bias)
            if output_hidden_states:
                hidden.append(x)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden[-1] = x  # HF convention: the last hidden state is taken after the final norm
        return x, tuple(hidden) if output_hidden_states else None


class NanoGPTForCausalLM(PreTrainedModel):
    """Causal LM: logits = ln_f(blocks(embed(ids))) W_wte^T; loss = next-token cross-entropy
    over positions whose label is not -100 (labels are shifted inside, as in HF)."""

    config_class = NanoGPTConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        self.transformer = NanoGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, 0.02) weights, zero biases, unit LayerNorms; the residual-writing projections
        o_proj and down_proj get std 0.02 / sqrt(2L) (GPT-2 scheme)."""
        if isinstance(module, nn.Linear) and getattr(module, "writes_residual", False):
            init.normal_(module.weight, mean=0.0,
                         std=self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers))
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        x, hidden = self.transformer(input_ids, attention_mask, bool(output_hidden_states))
        logits = self.lm_head(x)  # (B, S, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden)


AutoModelForCausalLM.register(NanoGPTConfig, NanoGPTForCausalLM, exist_ok=True)
