"""Subspace geometry of attention kernels (seed `2.py`): top-k singular subspaces, their overlap
across layers, and how much of the FFN's input weights lies inside them.

Subspaces are k x d matrices with orthonormal rows U (U U^T = I_k); the projector U^T U is never
formed.

- similarity of two k-dim subspaces U, V: the mean squared cosine of their principal angles
  theta_i (Bjorck & Golub 1973), sum_i cos^2 theta_i / k = ||U V^T||_F^2 / k, because the
  singular values of U V^T are the cos theta_i. 1 for equal subspaces, 0 for orthogonal ones,
  and k/d in expectation for independent uniformly random ones
  (E ||U V^T||_F^2 = sum_{ij} E (u_i . v_j)^2 = k^2 / d).
- energy of W (n x d) inside span(U): ||W U^T U||_F^2 / ||W||_F^2 = ||W U^T||_F^2 / ||W||_F^2,
  since U^T U is an orthogonal projector (||W P||^2 = tr(W P W^T) = ||W U^T||^2); k/d for a W
  with isotropic rows.
"""

from __future__ import annotations

import torch

from utils.metrics.kernels import head_kernels
from utils.models.adapters import FFNWeights, WeightAdapter, get_adapter

SIDES = ("key", "query")


def _adapter(model_or_adapter) -> WeightAdapter:
    return model_or_adapter if isinstance(model_or_adapter, WeightAdapter) else get_adapter(model_or_adapter)


def layer_subspaces(model_or_adapter, layer: int, k: int = 20, side: str = "key") -> torch.Tensor:
    """Top-k singular subspaces of every head's kernel in one layer: (h, k, d) float64, orthonormal rows.

    side "key": right singular vectors (row space of W_K, what the attended-to token is read along;
    the seed's default); "query": left singular vectors (row space of W_Q)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    adapter = _adapter(model_or_adapter)
    adapter.check_layer(layer)
    d_head = adapter.dims.d_head
    if not 1 <= k <= d_head:
        raise ValueError(f"k must be in 1..d_head = {d_head} (the kernel has rank <= d_head), got {k}")
    u, _, v = head_kernels(adapter.attention(layer)).svd()  # (h, d, m) each
    vectors = v if side == "key" else u
    return vectors[:, :, :k].transpose(-1, -2).contiguous()  # (h, k, d)


def get_attn_subspace(model_or_adapter, layer: int, head: int, k: int = 20, side: str = "key") -> torch.Tensor:
    """Top-k singular subspace of head `head`'s kernel W_Q_h^T W_K_h in `layer`: (k, d) orthonormal rows.

    side "key" (default, as in the seed): right singular vectors, the key-side input subspace;
    side "query": left singular vectors, the query-side one."""
    adapter = _adapter(model_or_adapter)
    adapter.check_head(head)
    return layer_subspaces(adapter, layer, k, side)[head]


def subspace_similarity(U, V) -> float:
    """Mean squared cosine of the principal angles of two k-dim subspaces (orthonormal rows, k x d):
    ||U V^T||_F^2 / k. 1 equal, 0 orthogonal, k/d expected by chance."""
    U, V = torch.as_tensor(U, dtype=torch.float64), torch.as_tensor(V, dtype=torch.float64)
    if U.shape != V.shape or U.ndim != 2:
        raise ValueError(f"expected two k x d matrices of equal shape, got {tuple(U.shape)} and {tuple(V.shape)}")
    return float((U @ V.T).square().sum() / U.shape[0])


def similarity_matrix(subspaces: torch.Tensor) -> torch.Tensor:
    """Pairwise `subspace_similarity` of n subspaces (n, k, d) -> (n, n), symmetric, unit diagonal.
    A leading batch axis (b, n, k, d) gives (b, n, n)."""
    k = subspaces.shape[-2]
    gram = torch.einsum("...ikd,...jld->...ijkl", subspaces, subspaces)  # (..., n, n, k, k)
    return gram.square().sum(dim=(-1, -2)) / k


def chance_similarity(k: int, d: int) -> float:
    """Expected similarity of two independent uniformly random k-dim subspaces of R^d: k/d."""
    return k / d


def energy_in_subspace(W: torch.Tensor, subspaces: torch.Tensor) -> torch.Tensor:
    """Fraction of ||W||_F^2 (W: n x d) inside each subspace (..., k, d): ||W U^T||_F^2 / ||W||_F^2."""
    W = W.detach().to(torch.float64)
    inside = (W @ subspaces.transpose(-1, -2)).square().sum(dim=(-1, -2))  # (...,)
    return inside / W.square().sum()


def ffn_input_weights(ffn: FFNWeights) -> dict[str, torch.Tensor]:
    """The FFN matrices that read the residual stream: {"in": w_in, "gate": w_gate (if gated),
    "all": both stacked}."""
    mats = {"in": ffn.w_in}
    if ffn.w_gate is not None:
        mats["gate"] = ffn.w_gate
    mats["all"] = torch.cat(list(mats.values()), dim=0)
    return mats


def ffn_alignment(ffn: FFNWeights, subspaces: torch.Tensor) -> dict[str, torch.Tensor]:
    """Energy of each FFN input matrix inside each head's subspace (h, k, d) -> {name: (h,)}."""
    return {name: energy_in_subspace(W, subspaces) for name, W in ffn_input_weights(ffn).items()}
