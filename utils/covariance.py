"""Streaming mean and covariance of row vectors, accumulated in float64.

Used by the activation engine (notebooks 04, 05) and the training callback (notebook 06):
activations arrive in batches of tokens and never need to be held together.

Accumulates n, sum x and sum x x^T; the unbiased covariance (NerVE eq. 1) is
    Sigma = (sum x x^T - n mu mu^T) / (n - 1).
Float64 accumulation keeps the cancellation in that difference harmless at the token counts
used here (up to ~10^7 tokens of float32 activations).
"""

from __future__ import annotations

import torch

from .spectra import single_threaded_lapack


class StreamingCovariance:
    """Accumulate mean and covariance of D-dimensional rows without storing them.

    >>> acc = StreamingCovariance(dim=4)
    >>> acc.update(torch.randn(100, 4)); acc.update(torch.randn(50, 4))
    >>> acc.covariance().shape
    torch.Size([4, 4])
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, rows: torch.Tensor) -> None:
        """Add rows of shape (n, D) (any leading shape is flattened to (-1, D))."""
        rows = rows.detach().reshape(-1, self.dim).to(self.sum.device, torch.float64)
        self.count += rows.shape[0]
        self.sum += rows.sum(0)
        self.sum_outer += rows.T @ rows

    def merge(self, other: "StreamingCovariance") -> None:
        """Fold another accumulator of the same dimension into this one."""
        if other.dim != self.dim:
            raise ValueError(f"dimension mismatch: {self.dim} vs {other.dim}")
        self.count += other.count
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum.device)

    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no rows accumulated")
        return self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Unbiased sample covariance (D, D), float64."""
        if self.count < 2:
            raise ValueError(f"need at least 2 rows for a covariance, have {self.count}")
        mu = self.mean()
        cov = (self.sum_outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return 0.5 * (cov + cov.T)

    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of the covariance, descending, clipped at 0 (eigvalsh: values only)."""
        cov = self.covariance()
        if cov.is_cuda:
            return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)
        with single_threaded_lapack():
            return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)

    def state_dict(self) -> dict:
        return {"dim": self.dim, "count": self.count, "sum": self.sum.cpu(), "sum_outer": self.sum_outer.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StreamingCovariance":
        acc = cls(int(state["dim"]))
        acc.count = int(state["count"])
        acc.sum = state["sum"].to(torch.float64)
        acc.sum_outer = state["sum_outer"].to(torch.float64)
        return acc
