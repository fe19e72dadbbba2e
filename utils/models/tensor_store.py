"""Lazy, one-tensor-at-a-time access to a checkpoint's safetensors.

A checkpoint directory holds `model.safetensors`, or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> shard file), or other
`*.safetensors` files. `TensorStore` reads only the shards' headers when it opens, then one
tensor per `get` through `safetensors.safe_open`; the file is closed (its memory map released)
after each read, so resident memory stays bounded by the tensor being read.

Safe by construction: only safetensors are read. Pickle checkpoints (`pytorch_model.bin`,
`*.pt`, `*.ckpt`) can run code when loaded and are refused with the conversion to run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

INDEX = "model.safetensors.index.json"
_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """The directory holds only pickle weights (pytorch_model.bin), which are never loaded."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file that is truncated or not a safetensors file."""


def safetensors_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (the index's shards when there is one)."""
    directory = Path(directory)
    index = directory / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as err:
            raise CorruptCheckpointError(f"{index} is not a valid safetensors index ({err}); "
                                         "re-download or re-save the checkpoint") from err
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CorruptCheckpointError(f"{index} lists shard(s) {missing} that are not in {directory}: "
                                         "the download is incomplete; fetch the missing shards")
        return files
    return sorted(directory.glob("*.safetensors"))


def check_checkpoint_dir(directory: str | Path) -> list[Path]:
    """The safetensors files of `directory`; a clear error when there are none (naming pickle
    weights and how to convert them) or when one is truncated or corrupt."""
    directory = Path(directory)
    files = safetensors_files(directory)
    if not files:
        pickles = sorted({p.name for pattern in _PICKLE_PATTERNS for p in directory.glob(pattern)})
        if pickles:
            raise UnsafeCheckpointError(
                f"{directory} holds only pickle weights ({', '.join(pickles)}). Only safetensors are loaded: "
                f"unpickling a checkpoint can run arbitrary code. Convert it once, in a trusted environment, with\n"
                f"  python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{directory}', "
                f"use_safetensors=False).save_pretrained('{directory}', safe_serialization=True)\"\n"
                f"(use AutoModelForCausalLM for a language model), then run again."
            )
        raise CheckpointError(f"{directory} holds no *.safetensors weights (and no {INDEX})")
    for f in files:
        _header(f)
    return files


def _header(path: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from a safetensors header, checking that the file holds
    every byte the header promises (a truncated download fails here, before any heavy work)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("the header is longer than the file")
            header = json.loads(fh.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"the header describes {8 + n + end:,} bytes but the file has {size:,}")
        return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(
            f"{path} is incomplete or corrupt ({err}); re-download or re-save the checkpoint"
        ) from err


class TensorStore:
    """Tensor names, shapes and lazily read tensors of a checkpoint directory's safetensors."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.files = check_checkpoint_dir(self.directory)
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[list[int], str]] = {}
        for f in self.files:
            for name, meta in _header(f).items():
                self._where[name] = f
                self._meta[name] = meta

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _check(self, name: str) -> None:
        if name not in self._where:
            raise KeyError(f"{self.directory}: no tensor named {name!r}")

    def shape(self, name: str) -> tuple[int, ...]:
        self._check(name)
        return tuple(self._meta[name][0])

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor in its stored dtype."""
        shape, dtype = self.shape(name), self._meta[name][1]
        return int(torch.Size(shape).numel()) * _DTYPE_BYTES.get(dtype, 4)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (stored dtype); the file is closed again afterwards."""
        self._check(name)
        path = self._where[name]
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(name)
        except SafetensorError as err:
            raise CorruptCheckpointError(f"{path} is incomplete or corrupt ({err}); re-download or re-save it") from err


_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


class NonFiniteWeightError(CheckpointError):
    """A weight matrix holds NaN or infinite entries."""


def count_nonfinite(tensor: torch.Tensor, block_elements: int = 1 << 22) -> int:
    """Number of NaN/Inf entries, in row blocks (torch.isfinite on a whole bf16 tensor makes
    float32 temporaries several times its size)."""
    flat = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 1 else tensor.reshape(-1, 1)
    step = max(1, block_elements // max(flat.shape[1], 1))
    return sum(int(block.numel() - torch.isfinite(block).sum()) for block in flat.split(step))


def check_finite(adapter) -> None:
    """Raise NonFiniteWeightError naming every matrix (layer, weight type, tensor name) with NaN
    or Inf entries and their count. One cheap pass, one tensor at a time, before heavy work."""
    problems = []
    for layer, weight, name, tensor in adapter.named_matrices():
        bad = count_nonfinite(tensor)
        if bad:
            where = f"layer {layer}" if layer >= 0 else "outside the blocks"
            problems.append(f"{where}, weight {weight} (tensor {name!r}): {bad:,} non-finite entries "
                            f"(NaN/Inf) of {tensor.numel():,}")
    if problems:
        raise NonFiniteWeightError(
            f"{len(problems)} weight matrix(es) contain NaN or Inf, so their spectra are undefined:\n  "
            + "\n  ".join(problems) + "\nThe checkpoint is damaged (or training diverged): use an earlier or "
            "re-downloaded checkpoint."
        )
