"""utils.models.synthetic: random checkpoints at real shapes, written tensor by tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from utils.models import synthetic
from utils.models.params import ParamsError, load_params

TINY = dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=49408, max_position_embeddings=256,
            rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.02)


@pytest.fixture(scope="module")
def tokenizer_dir():
    """A byte-level BPE tokenizer saved to disk (no model download): SmolLM2's from the cache."""
    return synthetic._smollm2_tokenizer_dir()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    # shard limit of 40 kB forces many shards (each layer's matrices are ~20-40 kB in bf16)
    return synthetic.write_checkpoint(TINY, out, seed=3, shard_gb=40e3 / 2**30, tokenizer_dir=tokenizer_dir,
                                      progress=False)


def test_real_shapes_match_public_configs():
    """Parameter counts of the named shapes equal the published model sizes."""
    counts = {name: sum(s.nbytes for s in synthetic.tensor_specs(synthetic.shape_config(name))) // 2
              for name in synthetic.SHAPES}
    assert counts["llama-3.2-1b"] == 1_235_814_400  # Llama-3.2-1B: 1.24 B parameters (tied embeddings)
    assert counts["qwen2.5-3b"] == 3_085_938_688  # Qwen2.5-3B: 3.09 B
    assert counts["qwen2.5-7b"] == 7_615_616_512  # Qwen2.5-7B: 7.62 B


def test_index_and_shards_are_consistent(tiny_checkpoint):
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    seen, total = {}, 0
    for fname in files:
        with safe_open(tiny_checkpoint / fname, "pt") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                assert t.dtype == torch.bfloat16
                seen[key] = fname
                total += t.numel() * 2
    assert seen == index["weight_map"]
    assert total == index["metadata"]["total_size"]
    assert set(seen) == {s.name for s in synthetic.tensor_specs(TINY)}


def test_values_deterministic_and_initialised_like_transformers(tiny_checkpoint):
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.down_proj.weight"
    with safe_open(tiny_checkpoint / index[name], "pt") as fh:
        w = fh.get_tensor(name).float()
    spec = next(s for s in synthetic.tensor_specs(TINY) if s.name == name)
    # regenerated in other block sizes: same values (per-tensor generator, order-independent)
    again = torch.cat(list(synthetic.generate(spec, seed=3, block_rows=7))).float()
    assert torch.equal(w, again)
    other_seed = torch.cat(list(synthetic.generate(spec, seed=4))).float()
    assert not torch.equal(w, other_seed)
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    with safe_open(tiny_checkpoint / index["model.norm.weight"], "pt") as fh:
        assert torch.equal(fh.get_tensor("model.norm.weight").float(), torch.ones(64))
    with safe_open(tiny_checkpoint / index["model.layers.0.self_attn.q_proj.bias"], "pt") as fh:
        assert torch.equal(fh.get_tensor("model.layers.0.self_attn.q_proj.bias").float(), torch.zeros(64))


def test_transformers_loads_it_and_runs(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint), use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    assert model.config.hidden_size == 64 and model.config.num_key_value_heads == 2
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(tiny_checkpoint / index["lm_head.weight"], "pt") as fh:
        assert torch.equal(model.lm_head.weight.to(torch.bfloat16), fh.get_tensor("lm_head.weight"))
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    assert int(ids.max()) < TINY["vocab_size"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], TINY["vocab_size"]) and torch.isfinite(logits).all()


def test_writer_never_builds_a_model(tmp_path, tokenizer_dir, monkeypatch):
    """The writer path must not instantiate a model (memory: one tensor block, not the model)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the writer instantiated a model")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)
    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    synthetic.write_checkpoint(TINY, tmp_path / "ck", tokenizer_dir=tokenizer_dir, progress=False)
    assert (tmp_path / "ck" / "model.safetensors.index.json").exists()


def test_block_size_bounds_memory():
    """A 128k x 2048 embedding is generated in blocks of at most 2^24 float32 elements."""
    spec = synthetic.TensorSpec("model.embed_tokens.weight", (128256, 2048), "normal")
    first = next(synthetic.generate(spec, seed=0))
    assert first.numel() <= synthetic._BLOCK_ELEMENTS and first.shape[1] == 2048


def test_params_kind_synthetic(tmp_path):
    p = load_params("llama-3.2-1b-synthetic")
    assert p.source == {"kind": "synthetic", "shape": "llama-3.2-1b", "seed": 0}
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {kind: synthetic, shape: llama-9b}\n")
    with pytest.raises(ParamsError, match="llama-9b"):
        load_params(bad)


def test_unknown_shape_and_family_are_refused():
    with pytest.raises(ValueError, match="known shapes"):
        synthetic.shape_config("gpt-5")
    with pytest.raises(ValueError, match="not supported"):
        synthetic.tensor_specs({**TINY, "model_type": "gpt2"})


def test_load_model_builds_a_synthetic_source_once(tmp_path, monkeypatch, tokenizer_dir):
    """`kind: synthetic` writes the checkpoint into the cache on first use, then reuses it."""
    from utils.models.loading import load_model

    monkeypatch.setitem(synthetic.SHAPES, "tiny-test", {**TINY, "tie_word_embeddings": True})
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "_smollm2_tokenizer_dir", lambda: tokenizer_dir)
    p = tmp_path / "tiny-synthetic.yaml"
    p.write_text("source: {kind: synthetic, shape: tiny-test, seed: 5}\ndtype: float32\n")
    loaded = load_model(str(p))
    assert "tiny-test" in loaded.origin and loaded.dims.d_ff == 160 and loaded.dims.L == 3
    written = list((tmp_path / "cache" / "synthetic").glob("tiny-test-seed5-*/model.safetensors.index.json"))
    assert len(written) == 1
    mtime = written[0].stat().st_mtime_ns
    load_model(str(p))
    assert written[0].stat().st_mtime_ns == mtime  # not rewritten
    assert "lm_head.weight" not in json.loads(written[0].read_text())["weight_map"]  # tied
