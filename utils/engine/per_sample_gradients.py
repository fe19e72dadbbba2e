"""Per-sample gradients of one weight matrix (Spectral Lens's gradient spectrum, notebook 06).

`per_sample_grads(model, name, input_ids)` -> (n, numel): row i = d L_i / d W flattened, L_i the
mean next-token loss of sequence i alone, from torch.func (functional_call + vmap(grad)).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel


def per_sample_grads(model: nn.Module, param_name: str, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(n, numel) per-sample gradients of one parameter, one row per sequence of input_ids (n, S).

    Row i = d L_i / d W flattened, L_i the mean next-token loss of sequence i alone. Computed as
    vmap(grad(L)) over the batch with torch.func.functional_call, differentiating only W (the
    other parameters enter as constants). Attention runs on the math SDPA kernel, which vmap
    batches natively (the fused CPU kernel has no batching rule).
    """
    weight = dict(model.named_parameters())[param_name].detach()
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask if padded else torch.ones_like(input_ids)

    def loss_one(w: torch.Tensor, ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ids, m = ids[None], m[None]  # (1, S)
        labels = ids.masked_fill(m == 0, -100)
        kwargs = {"attention_mask": m if padded else None, "labels": labels}
        return functional_call(model, {param_name: w}, (ids,), kwargs).loss

    with sdpa_kernel(SDPBackend.MATH):
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(weight, input_ids, mask)  # (n, *W.shape)
    return grads.detach().reshape(len(input_ids), -1)
