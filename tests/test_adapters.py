"""The adapters' split weights reproduce each family's own forward computation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.activations import ACT2FN

from utils.models.adapters import UnsupportedArchitectureError, get_adapter, get_model_dims
from utils.models.loading import load_model

from .conftest import tiny_model_ids, tiny_models

SEQ = 8


@pytest.fixture(scope="module", params=tiny_models, ids=tiny_model_ids)
def loaded(request):
    return load_model(request.param)


def _inputs(loaded, seq=SEQ):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, loaded.dims.V, (2, seq), generator=g)
    return ids


def _act(config):
    name = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
    name = name or getattr(config, "activation_function", None)
    return ACT2FN[name]


def test_dims_match_config(loaded):
    d = get_model_dims(loaded.model)
    assert set(d) == {"L", "d", "d_ff", "h", "GQA", "V", "d_head"}
    a = loaded.adapter.attention(0)
    assert a.q.shape == (d["h"], d["d_head"], d["d"])
    assert a.k.shape == (d["GQA"], d["d_head"], d["d"])
    assert a.o.shape == (d["h"], d["d"], d["d_head"])
    assert d["h"] % d["GQA"] == 0
    f = loaded.adapter.ffn(0)
    assert f.w_in.shape == (d["d_ff"], d["d"]) and f.w_out.shape == (d["d"], d["d_ff"])
    mats = loaded.adapter.weight_matrices(d["L"] - 1)
    assert mats["q"].shape == (d["h"] * d["d_head"], d["d"])
    assert ("ffn_gate" in mats) == f.gated


def test_attention_scores_from_split_heads(loaded):
    """softmax(scale * (x Wq_h^T)(x Wk_g^T)^T + mask) equals the model's attention weights.

    position_ids are all 0, so rotary embeddings are the identity and the kernel is exact."""
    adapter, model = loaded.adapter, loaded.model
    ids = _inputs(loaded)
    layer = adapter.dims.L - 1
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = adapter.attention_module(layer).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(ids, position_ids=torch.zeros_like(ids), output_attentions=True)
    finally:
        handle.remove()
    x = captured["x"]  # (batch, seq, d)
    a = adapter.attention(layer)
    attn_module = adapter.attention_module(layer)
    q = torch.einsum("bsd,hed->bhse", x, a.q)  # (batch, h, seq, d_head)
    k = torch.einsum("bsd,ged->bgse", x, a.k)[:, a.kv_head_of]  # GQA: (batch, h, seq, d_head)
    for name in ("q_proj", "k_proj", "query", "key"):
        bias = getattr(getattr(attn_module, name, None), "bias", None)
        if bias is not None:
            shaped = bias.reshape(-1, a.q.shape[1])
            if name in ("q_proj", "query"):
                q = q + shaped[None, :, None, :]
            else:
                k = k + shaped[a.kv_head_of][None, :, None, :]
    if loaded.model.config.model_type == "gpt2":
        b = attn_module.c_attn.bias.reshape(3, a.q.shape[0], -1)
        q, k = q + b[0][None, :, None], k + b[1][None, :, None]
    if loaded.model.config.model_type == "gpt_neox":
        b = attn_module.query_key_value.bias.reshape(a.q.shape[0], 3, -1)
        q, k = q + b[:, 0][None, :, None], k + b[:, 1][None, :, None]
    if hasattr(attn_module, "q_norm"):  # Gemma 3 normalises per-head queries and keys
        q, k = attn_module.q_norm(q), attn_module.k_norm(k)
    scores = a.scale * q @ k.transpose(-1, -2)
    if adapter.is_causal_lm:
        mask = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    expected = out.attentions[layer]
    assert torch.allclose(scores.softmax(-1), expected, atol=1e-5), adapter.name


def test_ffn_hooks_and_weights(loaded):
    """pre = x W^T + b at the pre module; post = act(gate) * up (gated) or act(pre); out = post W_out^T + b."""
    adapter, model = loaded.adapter, loaded.model
    layer = 0
    seen = {}
    pre_mod, post_mod = adapter.ffn_pre_module(layer), adapter.ffn_post_module(layer)
    h1 = pre_mod.register_forward_hook(lambda m, i, o: seen.update(x=i[0], pre=o))
    h2 = post_mod.register_forward_hook(lambda m, i, o: seen.update(post=i[0], out=o))
    try:
        with torch.no_grad():
            model(_inputs(loaded))
    finally:
        h1.remove()
        h2.remove()
    f = adapter.ffn(layer)
    first = f.w_gate if f.gated else f.w_in
    bias = getattr(pre_mod, "bias", None)
    pre = seen["x"] @ first.T + (0 if bias is None else bias)
    assert torch.allclose(pre, seen["pre"], atol=1e-5)
    act = _act(adapter.config)
    if f.gated:
        expected_post = act(seen["x"] @ f.w_gate.T) * (seen["x"] @ f.w_in.T)
    else:
        expected_post = act(seen["pre"])
    assert torch.allclose(expected_post, seen["post"], atol=1e-5)
    bias = getattr(post_mod, "bias", None)
    assert torch.allclose(seen["post"] @ f.w_out.T + (0 if bias is None else bias), seen["out"], atol=1e-5)


def test_logits_and_final_norm(loaded):
    adapter, model = loaded.adapter, loaded.model
    ids = _inputs(loaded)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == adapter.dims.L + 1
    if not adapter.is_causal_lm:
        assert adapter.unembedding() is None
        with pytest.raises(ValueError, match="no LM head"):
            adapter.logits(out.hidden_states[-1])
        return
    # HF applies the final norm before appending the last hidden state.
    assert torch.allclose(adapter.logits(out.hidden_states[-1]), out.logits, atol=1e-4)
    # The pre-norm output of the last block, normed by the adapter, gives the same logits.
    seen = {}
    handle = adapter.block(adapter.dims.L - 1).register_forward_hook(
        lambda m, i, o: seen.update(h=o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    assert torch.allclose(adapter.logits(adapter.apply_final_norm(seen["h"])), out.logits, atol=1e-4)
    assert adapter.unembedding().shape == (adapter.dims.V, adapter.dims.d)


def test_nanogpt_checkpoints_use_the_same_vocabulary():
    """Models trained by notebook 06 (model_type spectra_nanogpt) are analysed like any other."""
    from pathlib import Path

    nano = load_model(str(Path(__file__).parent / "params" / "nanogpt-tiny.yaml"))
    assert nano.adapter.family.name == "spectra_nanogpt"
    assert not nano.adapter.ffn(0).gated and nano.adapter.dims.h_kv == nano.adapter.dims.h
    test_ffn_hooks_and_weights(nano)
    test_logits_and_final_norm(nano)


def test_mistral_maps_to_llama_family():
    config = AutoConfig.for_model("mistral", hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    adapter = get_adapter(AutoModelForCausalLM.from_config(config))
    assert adapter.family.name == "llama" and adapter.dims.h_kv == 2
    assert adapter.attention(0).kv_head_of.tolist() == [0, 0, 1, 1]


def test_unsupported_architecture_names_the_fix():
    config = AutoConfig.for_model("opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  ffn_dim=64, vocab_size=64, word_embed_proj_dim=32)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match=r"utils/models/adapters.py.*|gpt2"):
        get_adapter(model)


def test_layer_and_head_out_of_range_are_clear(loaded):
    with pytest.raises(IndexError, match="out of range"):
        loaded.adapter.attention(loaded.dims.L)
    with pytest.raises(IndexError, match="heads 0.."):
        loaded.adapter.check_head(loaded.dims.h)
