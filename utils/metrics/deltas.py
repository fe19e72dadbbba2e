"""Weight deltas: W - W_base between two checkpoints, and PEFT LoRA updates through their factors.

- `delta_matrices(adapter, base)`: every matrix of notebook 01 as W - W_base (float32), one pair
  of tensors in memory at a time (both adapters stream from their checkpoints). WeightWatcher's
  `analyze(base_model=...)` analyses the same differences.
- LoRA (Hu et al. 2021): a PEFT adapter directory (`adapter_config.json` +
  `adapter_model.safetensors`) holds, per adapted module, A (r, in) and B (out, r); the update is
  Delta W = s B A with s = lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`, Kalajdzievski
  2023). Its spectrum comes from the factors alone, never the out x in product: thin QR
  B = U_B R_B and A^T = U_A R_A (U_* orthonormal, R_* r x r) give
  Delta W = U_B (s R_B R_A^T) U_A^T, so the singular values of Delta W are those of the r x r
  matrix s R_B R_A^T, and the other min(out, in) - r are exactly zero (the pattern of
  `utils.metrics.kernels`). Its entry standard deviation follows from
  sum_ij (BA)_ij = (1^T B)(A 1) and sum_ij (BA)_ij^2 = sum s_k^2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from utils.machine import single_threaded_lapack
from utils.models.adapters import WeightAdapter


class DeltaError(ValueError):
    """Two checkpoints or an adapter that cannot be compared matrix by matrix; says why."""


def block_matrices(adapter: WeightAdapter):
    """(layer, weight, matrix) for every block matrix, then the embedding and an untied unembedding
    (layer -1): notebook 01's matrices, read one at a time."""
    for layer in range(adapter.dims.L):
        for name, W in adapter.weight_matrices(layer).items():
            yield layer, name, W
    yield -1, "embed", adapter.embedding()
    unembed = adapter.unembedding()
    if unembed is not None and not adapter.unembedding_is_tied():
        yield -1, "unembed", unembed


def check_same_shapes(adapter: WeightAdapter, base: WeightAdapter) -> None:
    """Clear error before any tensor is read when the two models do not have the same matrices."""
    a, b = adapter.dims, base.dims
    if (a.L, a.d, a.d_ff, a.V) != (b.L, b.d, b.d_ff, b.V) or adapter.family.name != base.family.name:
        raise DeltaError(f"base model differs in shape: {adapter.family.name} L={a.L} d={a.d} d_ff={a.d_ff} V={a.V} "
                         f"against {base.family.name} L={b.L} d={b.d} d_ff={b.d_ff} V={b.V}; `base` must name a "
                         "checkpoint of the same architecture (e.g. the first checkpoint of a training run)")


def delta_matrices(adapter: WeightAdapter, base: WeightAdapter):
    """(layer, weight, W - W_base) in float32 for every matrix of `block_matrices`; matrices equal
    to the base's (frozen in a fine-tune) are left out (their spectrum is empty)."""
    check_same_shapes(adapter, base)
    for (layer, name, W), (_, _, W0) in zip(block_matrices(adapter), block_matrices(base)):
        if W.shape != W0.shape:
            raise DeltaError(f"layer {layer} {name}: shape {tuple(W.shape)} against the base's {tuple(W0.shape)}")
        delta = W.to(torch.float32) - W0.to(W.device, torch.float32)
        if bool(delta.any()):
            yield layer, name, delta


@dataclass(frozen=True)
class LoraUpdate:
    layer: int
    weight: str  # notebook 01's weight type (q, k, v, o, ffn_gate, ffn_in, ffn_out; qkv when fused)
    module: str  # the adapted module's path in the adapter file
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float  # lora_alpha / r (or / sqrt(r) with use_rslora)

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]

    def singular_values(self) -> np.ndarray:
        """All min(out, in) singular values of scale * B A (descending), from r x r factors."""
        A, B = self.A.to(torch.float64), self.B.to(torch.float64)
        with single_threaded_lapack():
            _, r_b = torch.linalg.qr(B)
            _, r_a = torch.linalg.qr(A.T)
            s = torch.linalg.svdvals(r_b @ r_a.T).numpy() * abs(self.scale)
        return np.concatenate([np.sort(s)[::-1], np.zeros(min(self.shape) - s.size)])

    def entry_std(self, s: np.ndarray) -> float:
        """Bessel-corrected std of the entries of scale * B A from the factors and its singular values."""
        A, B = self.A.to(torch.float64), self.B.to(torch.float64)
        n = self.shape[0] * self.shape[1]
        mean = float(self.scale * (B.sum(0) @ A.sum(1))) / n
        return math.sqrt(max(float((s**2).sum()) - n * mean**2, 0.0) / max(n - 1, 1))


def _module_names(adapter: WeightAdapter) -> dict[str, tuple[int, str]]:
    """Module path (relative to the base model) -> (layer, weight type) of every block matrix."""
    out = {}
    for layer in range(adapter.dims.L):
        for weight, path in adapter.family.block_paths(layer).items():
            out[path] = (layer, weight)
    return out


def _lora_scale(config: dict, rank: int) -> float:
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise DeltaError("adapter_config.json sets alpha_pattern/rank_pattern, which are not supported: "
                         "use one rank and lora_alpha for every module")
    alpha = float(config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def lora_updates(directory: str | Path, adapter: WeightAdapter) -> list[LoraUpdate]:
    """The LoRA updates of a PEFT adapter directory, matched to the base model's block matrices,
    ordered by layer and weight type. Clear errors for a missing file, a non-LoRA adapter or a
    module the base model does not have."""
    directory = Path(directory)
    config_path, weights_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DeltaError(f"{path} not found: a PEFT LoRA adapter directory holds adapter_config.json and "
                             "adapter_model.safetensors (`model.save_pretrained(dir)` of a peft model)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA").upper() != "LORA":
        raise DeltaError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters are supported")
    modules = _module_names(adapter)
    updates = []
    with safe_open(str(weights_path), framework="pt") as f:
        names = set(f.keys())
        for name in sorted(n for n in names if n.endswith(".lora_A.weight")):
            module = name[: -len(".lora_A.weight")]
            b_name = module + ".lora_B.weight"
            if b_name not in names:
                raise DeltaError(f"{weights_path}: {name} has no {b_name}")
            match = [v for p, v in modules.items() if module == p or module.endswith("." + p)]
            if not match:
                raise DeltaError(f"{weights_path}: module {module} is not a block matrix of the base model "
                                 f"({adapter.family.name}); LoRA on embeddings or heads is not supported")
            A, B = f.get_tensor(name), f.get_tensor(b_name)
            updates.append(LoraUpdate(*match[0], module, A, B, _lora_scale(config, A.shape[0])))
    if not updates:
        raise DeltaError(f"{weights_path}: no lora_A/lora_B tensors")
    order = {w: i for i, w in enumerate(["qkv", "q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out"])}
    return sorted(updates, key=lambda u: (u.layer, order.get(u.weight, 99), u.module))

