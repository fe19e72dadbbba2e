"""Covariance eigenvalues through the smaller of the two Gram matrices (issue 16, item 3).

For N rows X (N, D) with column means mu and centred rows Xc = X - 1 mu^T, the covariance is
Sigma = Xc^T Xc / (N - 1) (D x D) and the centred Gram is G = Xc Xc^T / (N - 1) (N x N). Both are
products of the same factor in the two orders, so (SVD of Xc = U S V^T) Sigma = V S^2 V^T / (N - 1)
and G = U S^2 U^T / (N - 1): their nonzero eigenvalues are the same s_k^2 / (N - 1), k <= rank(Xc)
<= min(N - 1, D). When N < D the N x N problem is smaller: O(N^2 D) to form and O(N^3) to solve
instead of O(N D^2) and O(D^3) (Golub & Van Loan, Matrix Computations, 4th ed., section 8.6; the
"snapshot" method of Sirovich 1987). The remaining D - N eigenvalues of Sigma are zero, and
`gram_eigenvalues` returns them as zeros so that the result has the covariance's length D (the
metrics that divide by D, e.g. NerVE's EEE, see the same vector).

Precision: G is formed in float64 from the rows in row blocks (never a float64 copy of X) and
solved in float64, as `StreamingCovariance.eigenvalues` does for Sigma.
"""

from __future__ import annotations

import torch

from utils.machine import lapack_threads
from utils.metrics.covariance import solver_dtype

ROW_BLOCK_BYTES = 64 << 20  # float64 bytes of one row block while G is formed


def centred_gram(rows: torch.Tensor) -> torch.Tensor:
    """G = Xc Xc^T (N, N) float64 of rows X (N, D), Xc = X - mean over rows (no 1/(N - 1)).

    Column blocks of X are upcast to float64 one at a time (each ~ROW_BLOCK_BYTES), so memory is
    X in its dtype + G + one block."""
    n, dim = rows.shape
    mean = rows.sum(0, dtype=torch.float64) / n  # (D,)
    gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    step = max(1, ROW_BLOCK_BYTES // (8 * max(n, 1)))
    for c0 in range(0, dim, step):
        block = rows[:, c0 : c0 + step].to(torch.float64) - mean[c0 : c0 + step]  # (N, b)
        gram.addmm_(block, block.T)
    return gram


def gram_eigenvalues(rows: torch.Tensor, solver: str = "float64") -> torch.Tensor:
    """Eigenvalues of the covariance of rows X (N, D), float64 on the CPU, descending, clipped at 0,
    length D, computed from the N x N centred Gram (exact algebra: see the module doc). Use it
    when N < D; for N >= D the D x D covariance (`StreamingCovariance`) is the smaller problem."""
    if rows.ndim != 2:
        raise ValueError(f"rows must be (N, D), got shape {tuple(rows.shape)}")
    n, dim = rows.shape
    if n < 2:
        raise ValueError(f"need at least 2 rows for a covariance, have {n}")
    gram = centred_gram(rows).div_(n - 1).to(solver_dtype(solver))  # `solver`: as StreamingCovariance.eigenvalues
    if gram.is_cuda:
        eig = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0).cpu().double()
    else:
        with lapack_threads(n):
            eig = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0).double()
    out = torch.zeros(dim, dtype=torch.float64)
    k = min(n, dim)
    out[:k] = eig[:k]
    return out


def prefer_gram(n_rows: int, dim: int) -> bool:
    """Whether the Gram route is the smaller eigenproblem (N < D)."""
    return n_rows < dim
