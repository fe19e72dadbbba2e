"""Streaming mean and covariance of row vectors, merged exactly batch by batch.

Used by the activation engine (notebooks 04, 05) and the training callback (notebook 06):
activations arrive in batches of tokens and never need to be held together.

State: the count n, the mean mu (float64, D numbers) and the centred scatter
    M2 = sum_t (x_t - mu)(x_t - mu)^T            (D x D, in `dtype`: float64 or float32)
so the unbiased covariance (NerVE eq. 1) is Sigma = M2 / (n - 1). Each batch B is centred on its
own mean before its Gram matrix is formed, and folded in with the parallel update of Chan, Golub
& LeVeque (1979, "Updating formulae and a pairwise algorithm for computing sample variances"):
    delta = mu_B - mu_A,   n = n_A + n_B,   mu = mu_A + delta n_B / n,
    M2 = M2_A + M2_B + delta delta^T n_A n_B / n.
No term is ever a difference of two large second moments (the naive sum x x^T - n mu mu^T loses
all digits of a float32 covariance when |mu| >> sigma), so float32 storage keeps ~1e-6 relative
accuracy at half the memory of float64, and every update is in place (no D x D temporaries).

M2 is symmetric, so only its lower triangle is accumulated (BLAS's syrk idea, in row strips of
`block` rows: strip i gets X_i^T X_{:i}, about half the flops of the full X^T X once D >> block);
the strictly upper triangle of the stored matrix is not meaningful, and every reader
(`covariance`, `sum_outer`, `eigenvalues`) takes the lower one. A full symmetric M2 (older
cache files) is a valid state too.
"""

from __future__ import annotations

import torch

from utils.machine import lapack_threads

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
GRAM_BLOCK = 512  # rows per strip of the lower-triangular Gram update (bench/bench_ffn.py)


SOLVERS = {"float64": torch.float64, "float32": torch.float32}


def solver_dtype(solver: str) -> torch.dtype:
    """The dtype of an eigen-solver precision name, with a clear error."""
    if solver not in SOLVERS:
        raise ValueError(f"eigen solver precision must be one of {sorted(SOLVERS)}, got {solver!r}")
    return SOLVERS[solver]


def accumulator_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'float64' (or the torch dtype) -> torch dtype; anything else is refused."""
    dt = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"accumulator dtype must be float32 or float64, got {dtype!r}")
    return dt


class StreamingCovariance:
    """Accumulate mean and covariance of D-dimensional rows without storing them.

    >>> acc = StreamingCovariance(dim=4)
    >>> acc.update(torch.randn(100, 4)); acc.update(torch.randn(50, 4))
    >>> acc.covariance().shape
    torch.Size([4, 4])
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu", dtype: str | torch.dtype = torch.float64,
                 block: int = GRAM_BLOCK):
        self.dim = dim
        self.block = max(1, block)
        self.count = 0
        self.dtype = accumulator_dtype(dtype)
        self.mu = torch.zeros(dim, dtype=torch.float64, device=device)  # (D,)
        self.m2 = torch.zeros(dim, dim, dtype=self.dtype, device=device)  # (D, D) centred scatter, lower triangle

    @property
    def nbytes(self) -> int:
        return self.m2.numel() * self.m2.element_size() + self.mu.numel() * 8

    def update(self, rows: torch.Tensor) -> None:
        """Add rows of shape (n, D) (any leading shape is flattened to (-1, D))."""
        rows = rows.detach().reshape(-1, self.dim).to(self.m2.device)
        n_b = rows.shape[0]
        if n_b == 0:
            return
        # Centre on the batch mean rounded to `dtype`, then take the (tiny) residual mean exactly.
        shift = (rows.sum(0, dtype=torch.float64) / n_b).to(self.dtype)  # (D,)
        xc = rows.to(self.dtype) - shift  # (n_b, D)
        rest = xc.sum(0, dtype=torch.float64) / n_b  # mean of xc, ~rounding size
        self._add_lower_gram(xc)  # lower triangle += sum xc xc^T
        self.m2.addr_(rest.to(self.dtype), rest.to(self.dtype), alpha=-n_b)  # around the batch mean
        self._fold(n_b, shift.to(torch.float64) + rest)

    def _add_lower_gram(self, x: torch.Tensor) -> None:
        """m2[i, j] += sum_t x[t, i] x[t, j] for j <= i, strip by strip: rows r0:r1 get
        x[:, r0:r1]^T x[:, :r1] (a strided view of m2 as the output: no copy)."""
        for r0 in range(0, self.dim, self.block):
            r1 = min(r0 + self.block, self.dim)
            self.m2[r0:r1, :r1].addmm_(x[:, r0:r1].T, x[:, :r1])

    def _symmetric_m2(self) -> torch.Tensor:
        """M2 as a full symmetric float64 matrix, from its lower triangle."""
        m2 = self.m2.to(torch.float64, copy=True).tril_()  # (D, D), a copy (also of float64 storage)
        return m2.add_(m2.tril(-1).T)

    def _fold(self, n_b: int, mu_b: torch.Tensor) -> None:
        """Chan et al.'s merge of (n_b, mu_b) into (count, mu); M2_b is already added to m2."""
        n_a, n = self.count, self.count + n_b
        delta = mu_b - self.mu  # (D,) float64
        if n_a:
            d = delta.to(self.dtype)
            self.m2.addr_(d, d, alpha=n_a * n_b / n)
        self.mu += delta * (n_b / n)
        self.count = n

    def merge(self, other: "StreamingCovariance") -> None:
        """Fold another accumulator of the same dimension into this one (exact, Chan et al.)."""
        if other.dim != self.dim:
            raise ValueError(f"dimension mismatch: {self.dim} vs {other.dim}")
        if other.count == 0:
            return
        self.m2 += other.m2.to(self.m2.device, self.dtype)
        self._fold(other.count, other.mu.to(self.mu.device))

    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no rows accumulated")
        return self.mu.clone()

    @property
    def sum(self) -> torch.Tensor:
        """sum_t x_t (D,), float64."""
        return self.mu * self.count

    @property
    def sum_outer(self) -> torch.Tensor:
        """sum_t x_t x_t^T (D, D), float64: the uncentred second moment, M2 + n mu mu^T."""
        return self._symmetric_m2() + self.count * torch.outer(self.mu, self.mu)

    def covariance(self) -> torch.Tensor:
        """Unbiased sample covariance (D, D), float64."""
        if self.count < 2:
            raise ValueError(f"need at least 2 rows for a covariance, have {self.count}")
        return self._symmetric_m2().div_(self.count - 1)

    def eigenvalues(self, solver: str = "float64") -> torch.Tensor:
        """Eigenvalues of the covariance (float64, on the CPU), descending, clipped at 0
        (eigvalsh, values only, on the accumulator's device); `solver` is the precision the
        eigenproblem is solved in ("float32": about 2x faster at D = 8192, eigenvalues within
        ~5e-5 of lambda_max, SE/PR/EEE within ~1e-6 relative: docs/benchmarks.md)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 rows for a covariance, have {self.count}")
        cov = self.m2.to(solver_dtype(solver), copy=True).div_(self.count - 1)  # eigvalsh reads the lower triangle only
        if cov.is_cuda:
            return torch.linalg.eigvalsh(cov, UPLO="L").flip(0).clamp_min(0.0).cpu().double()
        with lapack_threads(self.dim):
            return torch.linalg.eigvalsh(cov, UPLO="L").flip(0).clamp_min(0.0).double()

    def state_dict(self) -> dict:
        return {"dim": self.dim, "count": self.count, "mean": self.mu.cpu(), "m2": self.m2.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StreamingCovariance":
        m2 = state["m2"]
        acc = cls(int(state["dim"]), dtype=m2.dtype)
        acc.count = int(state["count"])
        acc.mu = state["mean"].to(torch.float64)
        acc.m2 = m2
        return acc
