"""Loading checks that fail before heavy work with the problem named."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from utils.models.loading import TokenizerMismatchError, load_model
from utils.models.nanogpt import byte_tokenizer

LLAMA = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             max_position_embeddings=64)


def _checkpoint(tmp_path, vocab_size: int):
    """A local safetensors checkpoint with a byte tokenizer (ids 0-255) copied beside the weights."""
    directory = tmp_path / f"ckpt-{vocab_size}"
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", vocab_size=vocab_size, **LLAMA))
    model.save_pretrained(directory, safe_serialization=True)
    byte_tokenizer().save_pretrained(directory)
    params = tmp_path / f"ckpt-{vocab_size}.yaml"
    params.write_text(f"source: {{kind: local, path: '{directory}'}}\n")
    return params


def test_tokenizer_beyond_the_embedding_fails_before_loading(tmp_path):
    with pytest.raises(TokenizerMismatchError, match=r"ckpt-64.*token ids up to 255.*only 64 rows.*tokenizer files"):
        load_model(_checkpoint(tmp_path, 64))


def test_matching_tokenizer_loads_and_embeds(tmp_path):
    loaded = load_model(_checkpoint(tmp_path, 256))
    ids = loaded.tokenizer("any text, \u00e9", return_tensors="pt")["input_ids"]
    assert int(ids.max()) < loaded.dims.V == 256
    with torch.no_grad():
        assert loaded.model(ids).logits.shape == (1, ids.shape[1], 256)


def test_random_model_with_a_smaller_vocabulary_than_its_tokenizer(tmp_path):
    path = tmp_path / "small-vocab.yaml"
    path.write_text("source: {kind: random, model_type: llama, config: {hidden_size: 32, intermediate_size: 48, "
                    "num_hidden_layers: 1, num_attention_heads: 2, vocab_size: 100}}\n")
    with pytest.raises(TokenizerMismatchError, match="byte tokenizer has token ids up to 255.*only 100 rows"):
        load_model(path)
