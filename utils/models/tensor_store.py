"""Lazy, one-tensor-at-a-time access to a checkpoint's safetensors.

A checkpoint directory holds `model.safetensors`, or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> shard file), or other
`*.safetensors` files. `TensorStore` reads only the shards' headers when it opens, then one
tensor per `get` through `safetensors.safe_open`; the file is closed (its memory map released)
after each read, so resident memory stays bounded by the tensor being read.

Safe by construction: only safetensors are read. Pickle checkpoints (`pytorch_model.bin`,
`*.pt`, `*.ckpt`) can run code when loaded and are refused with the conversion to run.

Quantized weights are never analysed as if they were weights. A `*.weight` tensor stored as
float8 (F8_E4M3, F8_E5M2) or int8/uint8 with its scales beside it (`<name>_scale_inv`, HF's
fine-grained FP8 as DeepSeek-V3 saves it; or `<name>_scale`, compressed-tensors and FBGEMM FP8,
with an optional `<name>_zero_point`) is dequantized when read: W = (codes - zero point) * scale,
the scale per tensor, per output row, per group of inputs, or per block of
`quantization_config.weight_block_size` from config.json. Any other integer or float8 weight
(quantization codes without their scales, GPTQ/AWQ packed `qweight`, bitsandbytes) is refused
when the checkpoint opens (`QuantizedCheckpointError`, naming the tensors and their dtypes).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


class QuantizedCheckpointError(CheckpointError):
    """Quantized weights whose dequantization is unknown (codes without scales, packed formats)."""


_INTEGER = {"I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL"}
_FLOAT8 = {"F8_E4M3", "F8_E5M2"}
_PACKED = (".qweight", ".weight_packed", ".qzeros", ".SCB")  # GPTQ/AWQ, compressed-tensors int4, bitsandbytes


@dataclass(frozen=True)
class Quantized:
    """How one weight tensor is stored quantized: its codes' dtype and the tensors that dequantize it."""

    dtype: str
    scale: str
    zero_point: str | None = None


def quantization_schemes(meta: dict[str, tuple[list[int], str]], where: Path) -> dict[str, Quantized]:
    """Weight name -> its `Quantized` scheme for the float8/int8 weights with scales (module doc);
    QuantizedCheckpointError naming every quantized tensor that cannot be dequantized."""
    schemes, refused = {}, []
    for name, (shape, dtype) in meta.items():
        if name.endswith(_PACKED):
            refused.append(f"{name} {dtype} {tuple(shape)} (packed quantization)")
            continue
        if not name.endswith(".weight") or dtype not in _INTEGER | _FLOAT8:
            continue
        scale = next((name + s for s in ("_scale_inv", "_scale") if name + s in meta), None)
        if scale is None or (dtype in _INTEGER and dtype not in ("I8", "U8")):
            refused.append(f"{name} {dtype} {tuple(shape)}")
            continue
        zero = name + "_zero_point" if name + "_zero_point" in meta else None
        schemes[name] = Quantized(dtype, scale, zero)
    if refused:
        shown = "\n  ".join(refused[:12]) + (f"\n  ... and {len(refused) - 12} more" if len(refused) > 12 else "")
        raise QuantizedCheckpointError(
            f"{where} holds {len(refused)} quantized weight tensor(s) that cannot be dequantized here:\n  {shown}\n"
            "Their values are quantization codes, not weights, and there is no <name>_scale / <name>_scale_inv beside "
            "them (or the format is packed). Use the full-precision checkpoint, or dequantize it first "
            "(e.g. transformers: from_pretrained(...).dequantize().save_pretrained(...))."
        )
    return schemes


def _block_size(directory: Path) -> tuple[int, int] | None:
    """config.json's quantization_config.weight_block_size, when given."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        block = (config.get("quantization_config") or {}).get("weight_block_size")
        return (int(block[0]), int(block[1])) if block else None
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return None


def expand_scale(scale: torch.Tensor, shape: tuple[int, ...], block: tuple[int, int] | None, name: str) -> torch.Tensor:
    """A scale tensor broadcast to a weight of `shape` (out, in): per tensor (one value), per row
    (out,) or (out, 1), per group (out, g) with g dividing in, or per block (ceil(out/b0), ceil(in/b1))."""
    if scale.numel() == 1:
        return scale.reshape(())
    if len(shape) == 2:
        out, inp = shape
        s = scale.reshape(out, 1) if scale.ndim == 1 and scale.numel() == out else scale
        if s.ndim == 2 and s.shape[0] == out and inp % s.shape[1] == 0:
            return s.repeat_interleave(inp // s.shape[1], dim=1)  # per row, per group of inputs
        if block is not None and tuple(s.shape) == (math.ceil(out / block[0]), math.ceil(inp / block[1])):
            return s.repeat_interleave(block[0], dim=0)[:out].repeat_interleave(block[1], dim=1)[:, :inp]
    raise QuantizedCheckpointError(
        f"the scale of {name} has shape {tuple(scale.shape)}, which is neither per tensor, per row, per group of "
        f"{tuple(shape)} nor per block of config.json's quantization_config.weight_block_size ({block})"
    )


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
    meta = {}
    for f in files:
        meta.update(_header(f))
    quantization_schemes(meta, directory)
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
        self.quantized = quantization_schemes(self._meta, self.directory)
        self._block = _block_size(self.directory)

    @property
    def quantization(self) -> str:
        """What the weights were stored as when quantized ("" when not): dtypes, scales, dequantized on read."""
        if not self.quantized:
            return ""
        dtypes = sorted({q.dtype for q in self.quantized.values()})
        kinds = sorted({q.scale.rsplit(".", 1)[-1] for q in self.quantized.values()})
        return (f"{'/'.join(dtypes)} codes with {'/'.join(kinds)} scales in {len(self.quantized)} tensors "
                "(dequantized when read)")

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

    def dtype(self, name: str) -> str:
        """The stored dtype as safetensors names it ("F32", "BF16", ...; a quantized weight: "F32", what it is
        read as)."""
        self._check(name)
        return "F32" if name in self.quantized else self._meta[name][1]

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor in its stored dtype."""
        shape, dtype = self.shape(name), self._meta[name][1]
        return int(torch.Size(shape).numel()) * _DTYPE_BYTES.get(dtype, 4)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (stored dtype; a quantized weight dequantized to float32, module doc); the
        file is closed again afterwards."""
        if name in self.quantized:
            q = self.quantized[name]
            codes = self._get(name).to(torch.float32)
            if q.zero_point is not None:
                codes = codes - expand_scale(self._get(q.zero_point).to(torch.float32), tuple(codes.shape), self._block, name)
            return codes * expand_scale(self._get(q.scale).to(torch.float32), tuple(codes.shape), self._block, name)
        return self._get(name)

    def _get(self, name: str) -> torch.Tensor:
        self._check(name)
        path = self._where[name]
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(name)
        except SafetensorError as err:
            raise CorruptCheckpointError(f"{path} is incomplete or corrupt ({err}); re-download or re-save it") from err


_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "U64": 8, "I32": 4,
                "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}


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


_SAMPLE_BLOCKS, _SAMPLE_BYTES = 16, 1 << 16
_CONFIG_FILES = ("config.json", "model.safetensors.index.json")  # besides the weights, what results depend on


def file_fingerprint(path: Path) -> str:
    """name|size|mtime_ns|SHA-256 of 17 evenly spaced 64 KiB blocks, the first (a safetensors header) to the last."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for offset in np.linspace(0, max(st.st_size - _SAMPLE_BYTES, 0), _SAMPLE_BLOCKS + 1).astype(np.int64):
            fh.seek(int(offset))
            h.update(fh.read(_SAMPLE_BYTES))
    return f"{path.name}|{st.st_size}|{st.st_mtime_ns}|{h.hexdigest()}"


def content_fingerprint(store: "TensorStore") -> str:
    """Identity of a checkpoint's content without reading its tensors: `file_fingerprint` of every
    safetensors file, config.json and the shard index."""
    directory = store.directory
    h = hashlib.sha256()
    for path in sorted({*store.files, *(directory / n for n in _CONFIG_FILES if (directory / n).exists())}):
        h.update(file_fingerprint(path).encode())
    return h.hexdigest()[:24]
