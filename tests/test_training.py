"""Tests of utils.engine.training / utils.models.nanogpt: FFN hooks, per-sample gradients, determinism,
HF round-trip, the Trainer wrapper and the bounds of the recorded NerVE metrics."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from utils.engine.training import (
    NanoGPTConfig,
    NanoGPTForCausalLM,
    SpectralCallback,
    SpectralTrainerCallback,
    TokenData,
    TrainConfig,
    byte_tokenizer,
    ffn_covariances,
    per_sample_grads,
    train,
)

TEXT = ("The quick brown fox jumps over the lazy dog. Return the value of x, raising KeyError if absent. "
        "Übergrößenträger naïve café — 漢字 \t tabs\nnew lines. ") * 40


def tiny(act: str = "gelu", **kw) -> NanoGPTForCausalLM:
    torch.manual_seed(0)
    cfg = NanoGPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                        hidden_act=act, max_position_embeddings=32, **kw)
    return NanoGPTForCausalLM(cfg).eval()


def tiny_data() -> TokenData:
    ids = torch.tensor(byte_tokenizer()(TEXT, add_special_tokens=False)["input_ids"])
    return TokenData(train_ids=ids[:-800], eval_ids=ids[-800:])


def right_padded(n: int = 4, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (n, seq))
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[1, 10:] = 0
    mask[3, 5:] = 0
    return ids, mask


def _recomputed_ffn_rows(model, ids, mask, act) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (pre, post) rows of the unpadded tokens (n, D_ff) float64, from the weights."""
    hidden = model(ids, output_hidden_states=True).hidden_states  # block inputs: hidden[l], l < L
    keep = mask.reshape(-1).bool()
    rows = []
    for layer, block in enumerate(model.transformer.layers):
        h = hidden[layer]
        x = h + block.attn(block.ln_attn(h), None)
        z = block.ln_mlp(x)  # FFN input (B, S, d)
        mlp = block.mlp
        if act == "swiglu":
            pre = z @ mlp.gate_proj.weight.T
            post = F.silu(pre) * (z @ mlp.up_proj.weight.T)
        else:
            pre = z @ mlp.up_proj.weight.T
            post = F.gelu(pre) if act == "gelu" else F.relu(pre)
        rows.append(tuple(r.reshape(-1, r.shape[-1])[keep].double() for r in (pre, post)))
    return rows


@pytest.mark.parametrize("act", ["gelu", "swiglu", "relu"])
def test_ffn_hooks_match_direct_covariance(act):
    """Hooked pre/post covariances equal torch.cov of activations recomputed from the weights,
    over the unpadded tokens only (right padding leaves real tokens' activations unchanged)."""
    model = tiny(act)
    ids, mask = right_padded()
    with torch.no_grad():
        with ffn_covariances(model, attention_mask=mask) as acc:
            model(ids, attention_mask=mask)
        for layer, (pre, post) in enumerate(_recomputed_ffn_rows(model, ids, mask, act)):
            for kind, rows in (("pre", pre), ("post", post)):
                assert acc.side(kind)[layer].count == int(mask.sum())
                torch.testing.assert_close(acc.side(kind)[layer].covariance(), torch.cov(rows.T), rtol=1e-4, atol=1e-9)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


@pytest.mark.parametrize("act", ["gelu", "swiglu", "relu"])
def test_ffn_hooks_pre_from_input_match_direct_spectra(act):
    """pre_from_input: the pre accumulator is d wide, and its spectrum, padded with D_ff - d zeros,
    equals the eigenvalues of torch.cov of the recomputed pre-activations (the training callback's route)."""
    model = tiny(act)
    ids, mask = right_padded()
    d, d_ff = model.config.hidden_size, model.config.intermediate_size
    with torch.no_grad():
        with ffn_covariances(model, attention_mask=mask, pre_from_input=True) as acc:
            model(ids, attention_mask=mask)
        for layer, (pre, post) in enumerate(_recomputed_ffn_rows(model, ids, mask, act)):
            assert acc.pre[layer].dim == d < d_ff
            for kind, rows in (("pre", pre), ("post", post)):
                ours = acc.spectrum(kind, layer)
                ref = torch.linalg.eigvalsh(torch.cov(rows.T)).flip(0).clamp_min(0)
                assert ours.shape == (d_ff,) and (kind == "post" or bool((ours[d:] == 0).all()))
                torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * float(ref[0]))
            assert layer not in acc.pre and layer not in acc.post  # spectrum() frees both


@pytest.mark.parametrize("padded", [False, True])
def test_per_sample_grads_match_single_backward(padded):
    model = tiny("swiglu", position_embedding="rope")
    ids, mask = right_padded()
    mask = mask if padded else None
    name = "transformer.layers.1.mlp.down_proj.weight"
    fast = per_sample_grads(model, name, ids, mask)
    rows = []
    for i in range(len(ids)):
        model.zero_grad()
        m = None if mask is None else mask[i: i + 1]
        labels = ids[i: i + 1] if m is None else ids[i: i + 1].masked_fill(m == 0, -100)
        model(ids[i: i + 1], attention_mask=m, labels=labels).loss.backward()
        rows.append(model.get_parameter(name).grad.reshape(-1).clone())
    torch.testing.assert_close(fast, torch.stack(rows), rtol=1e-4, atol=1e-7)


def test_training_is_deterministic():
    data = tiny_data()
    cfg = NanoGPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32)
    tc = TrainConfig(steps=6, batch_size=4, seq_len=16, warmup=2)
    a = train(cfg, data, tc, progress=False).train_losses
    b = train(cfg, data, tc, progress=False).train_losses
    c = train(cfg, data, TrainConfig(steps=6, batch_size=4, seq_len=16, warmup=2, seed=1), progress=False).train_losses
    assert a == b
    assert a != c
    assert a[-1] < a[0]


@pytest.mark.parametrize("act,norm,pos", [("gelu", "preln", "learned"), ("swiglu", "postln", "rope"),
                                          ("relu", "none", "none")])
def test_save_pretrained_round_trip(tmp_path, act, norm, pos):
    model, tok = tiny(act, norm_placement=norm, position_embedding=pos), byte_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert isinstance(loaded, NanoGPTForCausalLM)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    ids, _ = right_padded()
    with torch.no_grad():
        out_a = model(ids, output_hidden_states=True)
        out_b = loaded(ids, output_hidden_states=True)
    assert torch.equal(out_a.logits, out_b.logits)
    assert len(out_b.hidden_states) == model.config.num_hidden_layers + 1
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2.decode(tok2(TEXT, add_special_tokens=False)["input_ids"]) == TEXT
    # A params file pointing at the checkpoint loads it like any other model (notebooks 01-05).
    from utils.models.loading import load_model

    params = tmp_path / "checkpoint.yaml"
    params.write_text(f"source: {{kind: local, path: '{tmp_path}'}}\n")
    analysed = load_model(str(params))
    assert analysed.adapter.family.name == "spectra_nanogpt"
    assert analysed.adapter.ffn(0).gated == (act == "swiglu")


def test_byte_tokenizer_is_bytes():
    tok = byte_tokenizer()
    assert len(tok) == 256
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == list(TEXT.encode("utf-8"))
    assert tok.decode(list(TEXT.encode("utf-8"))) == TEXT


def test_metrics_in_bounds_and_trainer_wrapper():
    model = tiny("gelu")
    data = tiny_data()
    ids, mask = right_padded(n=6, seq=24)
    cb = SpectralCallback(ids, eval_mask=mask, every=2, batch_size=4, grad_samples=4, tail_window=(2, 16), grad_top_k=2)
    wrapper = SpectralTrainerCallback(cb)
    assert isinstance(wrapper, TrainerCallback)
    state = SimpleNamespace(global_step=2, log_history=[{"loss": 5.0}])
    wrapper.on_step_end(args=None, state=state, control=None, model=model)
    assert cb(model, 3) is None  # not a multiple of every
    result = train(model.config, data, TrainConfig(steps=4, batch_size=4, seq_len=16, warmup=1), callback=cb,
                   progress=False)
    assert [r["step"] for r in result.records] == [2, 0, 2, 4]
    D = model.config.intermediate_size
    for record in result.records:
        assert math.isfinite(record["eval_loss"]) and 1.0 <= record["grad_eff_rank"] <= 4.0 + 1e-9
        for layer in range(model.config.num_hidden_layers):
            for side in ("pre", "post"):
                assert 1.0 - 1e-9 <= record[f"pr_{side}_l{layer}"] <= D + 1e-9
                assert 0.0 <= record[f"se_{side}_l{layer}"] <= math.log(D) + 1e-9
                assert 0.0 <= record[f"eee_{side}_l{layer}"] <= 1.0 + 1e-9
            assert 0.0 <= record[f"js_l{layer}"] <= math.log(2) + 1e-12
    assert cb.spectra[4]["act"].shape == (model.config.hidden_size,)
    for record in result.records[1:]:  # against the stored spectra (the wrapper's step-2 record was overwritten)
        s2 = np.sort(cb.spectra[record["step"]]["grad"])[::-1] ** 2
        assert record["grad_stable_rank"] == pytest.approx(s2.sum() / s2[0])
        assert record["grad_topk_share"] == pytest.approx(s2[:2].sum() / s2.sum())
    eig = np.sort(cb.spectra[4]["act"])[::-1]
    assert result.records[-1]["act_head_share"] == pytest.approx(eig[:2].sum() / eig.sum())


def test_head_gradient_movement_closed_forms():
    from utils.engine.training import head_gradient_movement

    steps = np.arange(6)
    head = np.array([0.5, 0.6, 0.55, 0.8, 0.7, 0.75])
    frame = pd.DataFrame({"step": steps, "act_head_share": head, "grad_eff_rank": 3.0, "grad_topk_share": 0.9,
                          "grad_stable_rank": 2.0 + 10 * head})  # moves with the head
    m = head_gradient_movement(frame.iloc[::-1])  # order of the records does not matter
    assert m["rho"] == pytest.approx(1.0)
    assert m["final_act_head_share"] == pytest.approx(0.75) and m["jitter_act_head_share"] == pytest.approx(0.1)
    assert m["final_grad_stable_rank"] == pytest.approx(9.5) and m["jitter_grad_eff_rank"] == 0.0
    frame["grad_stable_rank"] = 5.0 - head**3  # monotone decreasing in the head: rank correlation -1
    assert head_gradient_movement(frame)["rho"] == pytest.approx(-1.0)
    frame["grad_stable_rank"] = 2.0  # constant: no correlation defined
    assert np.isnan(head_gradient_movement(frame)["rho"])


def test_callback_runs_in_a_foreign_hf_model():
    """The spectral callback finds FFNs through the adapters, so any supported HF model works."""
    from pathlib import Path

    from utils.models.loading import load_model

    loaded = load_model(str(Path(__file__).parent / "params" / "tiny-gpt2.yaml"))
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    callback = SpectralCallback(eval_ids=ids, every=1, grad_samples=2, tail_window=(1, 16))
    record = callback(loaded.model, 0, train_loss=None, tokens=0)
    n_layers = loaded.dims.L
    assert {f"pr_post_l{n_layers - 1}", "grad_eff_rank", "act_eff_rank"} <= set(record)
    assert 1 <= record["pr_pre_l0"] <= loaded.dims.d_ff
    assert 1 <= record["grad_eff_rank"] <= 2
