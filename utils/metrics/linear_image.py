"""Covariance eigenvalues of a linear layer's outputs from its inputs (issue 16, item 3).

A linear layer maps rows X (N, d) to Y = X W^T + 1 b^T (N, D), W (D, d). When D > d (an FFN's
up or gate projection, D = D_ff), the thin QR factorisation W = Q R (Q (D, d) with Q^T Q = I_d,
R (d, d) upper triangular; Golub & Van Loan, Matrix Computations, 4th ed., section 5.2) gives the
centred outputs Yc = Xc W^T = (Xc R^T) Q^T, so (the bias cancels in the centring)

    cov(Y) = Q cov(X R^T) Q^T,

and because Q has orthonormal columns the nonzero eigenvalues of the D x D covariance cov(Y) are
exactly the eigenvalues of the d x d covariance of the projected rows Z = X R^T; the other D - d
are zero (cov(Y) has rank <= d). Notebook 05's pre-activation spectra at Llama-3.2-1B (d = 2048,
D_ff = 8192) thus become problems of 2048 instead of 8192: a quarter of the accumulator width,
1/16 of its memory and update cost, 1/64 of the solve. `padded` returns the D - d zeros so that the
result has cov(Y)'s length D (NerVE's EEE divides by D; SE, PR and JS see the same vector).

Only R is needed, from `torch.linalg.qr(W, mode="r")` in float64 (robust when W is rank
deficient: R then has zero rows, and Z's covariance the matching zeros).
"""

from __future__ import annotations

import torch


def factor_pays(weight: torch.Tensor) -> bool:
    """Whether W (D, d) maps to a wider space (D > d): only then is the d x d problem smaller."""
    return weight.ndim == 2 and weight.shape[0] > weight.shape[1]


def input_projection(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """R^T (d, d) of W = Q R (W (D, d), D > d): rows X (N, d) give Z = X @ R^T (N, d), whose covariance
    eigenvalues are the nonzero eigenvalues of cov(X W^T + b) (module doc). Computed in float64,
    returned in `dtype` on W's device."""
    if not factor_pays(weight):
        raise ValueError(f"W must be (D, d) with D > d, got shape {tuple(weight.shape)}")
    r = torch.linalg.qr(weight.to(torch.float64).contiguous(), mode="r").R  # (d, d) upper triangular; one layout, one result
    return r.T.contiguous().to(dtype)


def padded(eigenvalues: torch.Tensor, dim: int) -> torch.Tensor:
    """Descending eigenvalues (k,) of the d x d problem followed by dim - k zeros: cov(Y)'s (dim,)."""
    if eigenvalues.ndim != 1 or eigenvalues.numel() > dim:
        raise ValueError(f"need at most {dim} eigenvalues in one dimension, got shape {tuple(eigenvalues.shape)}")
    out = torch.zeros(dim, dtype=eigenvalues.dtype)
    out[: eigenvalues.numel()] = eigenvalues.cpu()
    return out
