"""The FFN hook set: one implementation for the activation engine and for training (NerVE appendix A).

For FFN layer i of any model the adapters support:
- pre-activation  = output of `adapter.ffn_pre_module(i)` (gate projection of a gated FFN, input
  projection otherwise), taken by a forward hook;
- post-activation = input of `adapter.ffn_post_module(i)` (the output projection), taken by a
  forward pre-hook.

`FFNCovariances` streams those rows, (B, S, D_ff) -> (n, D_ff), into one `StreamingCovariance`
per layer and side (NerVE eq. 1). Which rows enter is set per batch with `set_batch(rows,
skipped)`: `rows` (B*S,) bool selects the rows of the statistics (None: every row), `skipped`
(B*S,) bool the rows kept aside on the CPU in float32 (`keep_skipped`, for an exact all-token merge
later). Masks move to each activation's device (with accelerate's device_map later blocks may sit
on another GPU; `.to` is a no-op on one device). `hooked(adapter)` places the hooks and removes
them on exit, also on error. With `pre_from_input`, the pre side is the image of the pre module's
input under its weight W (D_ff, d): when d < D_ff its accumulator is d wide (rows X R^T, W = QR,
`utils.metrics.linear_image`; R from the weights as they are when `hooked` is entered) and
`spectrum("pre", i)` appends the D_ff - d exact zeros.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from utils.metrics.covariance import StreamingCovariance
from utils.metrics.linear_image import factor_pays, input_projection, padded
from utils.models.adapters import get_adapter

SIDES = ("pre", "post")


class FFNCovariances:
    """Pre/post-activation covariance accumulators of FFN layers, fed by the FFN hooks.

    layers: FFN layers to hook; dim: D_ff (None: taken from the first rows, accumulators created
    on first use on the rows' device); device: accumulators' device (None: the rows' device);
    dtype: accumulator storage ("float64" or "float32"); pre_from_input: the pre side from the
    pre module's input (module doc; its accumulators d wide where d < D_ff).
    """

    def __init__(self, layers: Sequence[int], dim: int | None = None, device: torch.device | str | None = None,
                 dtype: str = "float64", keep_skipped: bool = False, pre_from_input: bool = False):
        self.layers = list(layers)
        self.device, self.dtype, self.keep_skipped, self.pre_from_input = device, dtype, keep_skipped, pre_from_input
        self._projection: dict[int, torch.Tensor] = {}  # pre_from_input: layer -> R^T (d, d), float32
        self._width: dict[int, int] = {}  # pre_from_input: layer -> D_ff
        self.pre: dict[int, StreamingCovariance] = {}
        self.post: dict[int, StreamingCovariance] = {}
        self._skipped: dict[str, dict[int, list[torch.Tensor]]] = {s: {i: [] for i in self.layers} for s in SIDES}
        self.rows: torch.Tensor | None = None  # (B*S,) bool: rows of the current batch entering the statistics
        self.skipped: torch.Tensor | None = None  # (B*S,) bool: rows of the current batch kept aside
        if dim is not None:
            for i in self.layers:
                if not pre_from_input:  # else created on first rows, at the projected width
                    self.pre[i] = StreamingCovariance(dim, device, dtype)
                self.post[i] = StreamingCovariance(dim, device, dtype)

    def set_batch(self, rows: torch.Tensor | None, skipped: torch.Tensor | None = None) -> None:
        """Masks (B*S,) of the next forward pass: rows of the statistics, rows kept aside."""
        self.rows, self.skipped = rows, skipped

    def side(self, side: str) -> dict[int, StreamingCovariance]:
        return self.pre if side == "pre" else self.post

    def add(self, side: str, layer: int, x: torch.Tensor) -> None:
        """Rows x (..., D_ff) of one side of one layer: the masked ones into its accumulator."""
        flat = x.detach().reshape(-1, x.shape[-1])  # (B*S, D_ff)
        accumulators = self.side(side)
        if layer not in accumulators:
            accumulators[layer] = StreamingCovariance(flat.shape[-1], self.device or flat.device, self.dtype)
        accumulators[layer].update(flat if self.rows is None else flat[self.rows.to(flat.device)])
        if self.keep_skipped:
            self._skipped[side][layer].append(flat[self.skipped.to(flat.device)].float().cpu())

    def spectrum(self, side: str, layer: int) -> torch.Tensor:
        """Eigenvalues (D_ff,) of one side of one layer, float64 descending; its accumulator is freed."""
        eig = self.side(side).pop(layer).eigenvalues()
        return padded(eig, self._width[layer]) if side == "pre" and layer in self._projection else eig

    def _pre_rows(self, layer: int, args: tuple, out: torch.Tensor) -> torch.Tensor:
        projection = self._projection.get(layer)
        return out if projection is None else args[0].detach().float() @ projection.to(args[0].device)

    def skipped_rows(self, side: str, dim: int) -> dict[int, torch.Tensor]:
        """layer -> (n_skipped, D_ff) float32 rows kept aside (empty dict without keep_skipped)."""
        if not self.keep_skipped:
            return {}
        return {i: torch.cat(rows) if rows else torch.zeros(0, dim) for i, rows in self._skipped[side].items()}

    @contextlib.contextmanager
    def hooked(self, adapter) -> Iterator["FFNCovariances"]:
        """Place the FFN hooks of `self.layers` on the adapter's model for the duration of the block."""
        handles = []
        try:
            for i in self.layers:
                weight = adapter.ffn_pre_weight(i)  # (D_ff, d)
                if self.pre_from_input and factor_pays(weight):
                    self._projection[i], self._width[i] = input_projection(weight.detach()), weight.shape[0]
                handles.append(adapter.ffn_pre_module(i).register_forward_hook(
                    lambda module, args, out, i=i: self.add("pre", i, self._pre_rows(i, args, out))))
                handles.append(adapter.ffn_post_module(i).register_forward_pre_hook(
                    lambda module, args, i=i: self.add("post", i, args[0])))
            yield self
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def ffn_covariances(model: torch.nn.Module, attention_mask: torch.Tensor | None = None,
                    pre_from_input: bool = False) -> Iterator[FFNCovariances]:
    """Stream pre/post-activation rows of every FFN of `model` into float64 accumulators.

    Works on any model the adapters support (NanoGPT, Llama, GPT-2, ...), so a training loop of
    one's own can use it. Yields the `FFNCovariances` (`.pre[i]`, `.post[i]`); when batches change,
    call `.set_batch(mask.reshape(-1).bool())` before each forward. Rows of padded positions
    (attention_mask == 0) are dropped; hooks are removed on exit, also on error. pre_from_input:
    `.pre[i]` d wide where d < D_ff (module doc); `.spectrum(side, i)` gives D_ff eigenvalues either way.
    """
    adapter = get_adapter(model)
    acc = FFNCovariances(range(adapter.dims.L), pre_from_input=pre_from_input)
    acc.set_batch(None if attention_mask is None else attention_mask.reshape(-1).bool())
    with acc.hooked(adapter):
        yield acc
