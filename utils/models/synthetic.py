"""Random-weight checkpoints at real model shapes, written shard by shard.

    python -m utils.models.synthetic llama-3.2-1b <dir> [--seed 0] [--shard-gb 1.0]

A checkpoint here is what the HF hub serves: `config.json`, bf16 safetensors shards
`model-0000i-of-0000N.safetensors`, `model.safetensors.index.json` and tokenizer files, with
HF tensor names so `AutoModelForCausalLM.from_pretrained` loads it. The shape (hidden size, FFN
width, layers, heads, KV heads, head dim, vocabulary, RoPE, tied embeddings) is the public
config of the named model; the weights are random.

Memory: one tensor. The shard layout follows from the config alone, so each shard's safetensors
header is written first and every tensor is generated (in row blocks), appended and dropped; the
model is never instantiated and no shard is ever held whole.

Initialisation is transformers' own `_init_weights` for these families (what a checkpoint trained
from it starts as): matrices and embeddings N(0, initializer_range^2 = 0.02^2), RMSNorm weights 1,
biases 0. Every tensor has its own generator seeded from (seed, tensor name), so a tensor's values
do not depend on the shard size or the order of writing.

The tokenizer is SmolLM2-135M's (bundled offline; vocabulary 49152), copied from the dequantized
cache `utils.models.gguf` builds. Its ids are all below every shape's vocabulary, so any text it
tokenizes is a valid input; the config's bos/eos ids are set to that tokenizer's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from utils.atomic_io import atomic_directory
from utils.models.gguf import dequantized_dir
from utils.models.params import load_params
from utils.models.shapes import SHAPES
from utils.models.sources import gguf_path
from utils.paths import cache_dir

# Families whose HF layout this writer knows: q/k/v biases or not.
_QKV_BIAS = {"llama": False, "qwen2": True, "mistral": False}
_BF16 = torch.bfloat16
_BLOCK_ELEMENTS = 1 << 24  # rows generated per step: ~64 MB of float32


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: str  # "normal" | "ones" | "zeros"

    @property
    def nbytes(self) -> int:
        return 2 * math.prod(self.shape)  # bf16


def shape_config(shape: str | dict) -> dict:
    """The config kwargs of a named shape (or a custom mapping with `model_type`)."""
    if isinstance(shape, dict):
        return dict(shape)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)} (or pass a config mapping)")
    return dict(SHAPES[shape])


def tensor_specs(config: dict) -> list[TensorSpec]:
    """Every tensor of the HF checkpoint for a Llama-layout config, in file order."""
    kind = config["model_type"]
    if kind not in _QKV_BIAS:
        raise ValueError(f"model_type {kind!r} is not supported by the writer; supported: {sorted(_QKV_BIAS)}")
    d, d_ff, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    h, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    d_head = config.get("head_dim") or d // h
    bias = _QKV_BIAS[kind] or bool(config.get("attention_bias", False))
    specs = [TensorSpec("model.embed_tokens.weight", (V, d), "normal")]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs += [
            TensorSpec(p + "input_layernorm.weight", (d,), "ones"),
            TensorSpec(p + "self_attn.q_proj.weight", (h * d_head, d), "normal"),
            TensorSpec(p + "self_attn.k_proj.weight", (kv * d_head, d), "normal"),
            TensorSpec(p + "self_attn.v_proj.weight", (kv * d_head, d), "normal"),
        ]
        if bias:
            specs += [TensorSpec(p + f"self_attn.{x}_proj.bias", (n * d_head,), "zeros")
                      for x, n in (("q", h), ("k", kv), ("v", kv))]
        specs += [
            TensorSpec(p + "self_attn.o_proj.weight", (d, h * d_head), "normal"),
            TensorSpec(p + "post_attention_layernorm.weight", (d,), "ones"),
            TensorSpec(p + "mlp.gate_proj.weight", (d_ff, d), "normal"),
            TensorSpec(p + "mlp.up_proj.weight", (d_ff, d), "normal"),
            TensorSpec(p + "mlp.down_proj.weight", (d, d_ff), "normal"),
        ]
    specs.append(TensorSpec("model.norm.weight", (d,), "ones"))
    if not config.get("tie_word_embeddings", False):
        specs.append(TensorSpec("lm_head.weight", (V, d), "normal"))
    return specs


def plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy split in file order, a new shard when the next tensor would pass `shard_bytes`."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generate(spec: TensorSpec, seed: int, std: float = 0.02, block_rows: int | None = None):
    """Yield the tensor as bf16 row blocks (concatenated: the whole tensor). Deterministic."""
    if spec.init != "normal":
        fill = 1.0 if spec.init == "ones" else 0.0
        yield torch.full(spec.shape, fill, dtype=_BF16)
        return
    gen = torch.Generator().manual_seed(_seed(seed, spec.name))
    rows, cols = spec.shape[0], math.prod(spec.shape[1:])
    step = block_rows or max(1, _BLOCK_ELEMENTS // cols)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        block = torch.randn((n, *spec.shape[1:]), generator=gen, dtype=torch.float32)
        yield (block * std).to(_BF16)


def _header(shard: list[TensorSpec]) -> bytes:
    """A safetensors header (8-byte little-endian length + JSON, space-padded to 8 bytes)."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for spec in shard:
        entries[spec.name] = {"dtype": "BF16", "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_shard(path: Path, shard: list[TensorSpec], seed: int, std: float, bar) -> None:
    with open(path, "wb") as fh:
        fh.write(_header(shard))
        for spec in shard:
            for block in generate(spec, seed, std):
                fh.write(block.contiguous().view(torch.int16).numpy().tobytes())
                bar.update(2 * block.numel())


def _smollm2_tokenizer_dir() -> Path:
    params = load_params("smollm2-135m")
    return dequantized_dir(gguf_path(params), params)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "chat_template.jinja")


def write_checkpoint(shape: str | dict, out_dir: str | Path, seed: int = 0, shard_gb: float = 1.0,
                     tokenizer_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Write a random bf16 checkpoint of `shape` into `out_dir` (created atomically); return it.

    `shape`: a name in SHAPES or a config mapping (`model_type` + config kwargs). Peak memory is
    one row block of one tensor (~64 MB float32), whatever the model size.
    """
    kwargs = shape_config(shape)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else _smollm2_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if len(tokenizer) > kwargs["vocab_size"]:
        raise ValueError(f"tokenizer in {tok_dir} has {len(tokenizer)} ids, more than the shape's vocabulary "
                         f"{kwargs['vocab_size']}: its ids would index past the embedding")
    model_type = kwargs.pop("model_type")
    ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = AutoConfig.for_model(model_type, **kwargs, **{k: v for k, v in ids.items() if v is not None})
    config.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                             "mistral": "MistralForCausalLM"}[model_type]]
    config.dtype = "bfloat16"
    specs = tensor_specs({"model_type": model_type, **config.to_dict()})
    shards = plan_shards(specs, int(shard_gb * 2**30))

    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        config.save_pretrained(tmp)
        for name in _TOKENIZER_FILES:
            if (tok_dir / name).exists():
                shutil.copy2(tok_dir / name, tmp / name)
        total = sum(s.nbytes for s in specs)
        weight_map, n = {}, len(shards)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {out.name}", disable=not progress) as bar:
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{n:05d}.safetensors"
                _write_shard(tmp / fname, shard, seed, kwargs.get("initializer_range", 0.02), bar)
                weight_map.update({s.name: fname for s in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "SOURCE").write_text(f"utils.models.synthetic shape={shape if isinstance(shape, str) else 'custom'} "
                                    f"seed={seed}\n")
    return out


def cached_checkpoint(shape: str, seed: int = 0, root: Path | None = None) -> Path:
    """The checkpoint of (shape, seed) in the model cache, written on first use."""
    key = hashlib.sha256(json.dumps([SHAPES.get(shape), seed, _WRITER_VERSION], sort_keys=True).encode())
    target = (root or cache_dir() / "synthetic") / f"{shape}-seed{seed}-{key.hexdigest()[:8]}"
    if not (target / "model.safetensors.index.json").exists():
        write_checkpoint(shape, target, seed=seed)
    return target


_WRITER_VERSION = 1  # bump when the written values change, so cached checkpoints are rewritten


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=1.0, help="shard size limit in GiB (default 1)")
    args = ap.parse_args(argv)
    path = write_checkpoint(args.shape, args.out_dir, seed=args.seed, shard_gb=args.shard_gb)
    print(path)


if __name__ == "__main__":
    main()
