"""GGUF checkpoints dequantized once into a safetensors directory in the model cache.

transformers reads GGUF with `gguf_file=` (the `gguf` package) and dequantizes to float32; that
takes ~15 s for SmolLM2-135M, so the result is kept as safetensors (reloads in < 1 s), keyed by
the file's path, size and mtime, the transformers version and the task.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from utils.atomic_io import atomic_directory
from utils.models.params import Params
from utils.paths import cache_dir


def auto_class(task: str):
    """The Auto class that builds a model for `task` ("encoder" or "causal_lm"). Imports
    `utils.models.nanogpt` first, so its model class is registered whenever a model is built
    (importing `transformers`' modelling code is paid here, never by a path that builds none)."""
    import utils.models.nanogpt  # noqa: F401  (registers NanoGPTForCausalLM with AutoModelForCausalLM)

    return AutoModel if task == "encoder" else AutoModelForCausalLM


def _gguf_cache_key(gguf: Path, params: Params) -> str:
    st = gguf.stat()
    raw = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}|{transformers.__version__}|{params.task}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def dequantized_dir(gguf: Path, params: Params) -> Path:
    """Dequantize a GGUF once (slow, ~15 s) and keep it as safetensors (reloads in < 1 s)."""
    target = cache_dir() / "models" / f"{params.name}-{_gguf_cache_key(gguf, params)}"
    if (target / "config.json").exists():
        return target
    model = auto_class(params.task).from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float tensors now; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")
    return target
