"""Linear CKA between representations (notebook 04).

CKA (Kornblith et al. 2019, "Similarity of neural network representations revisited"): for
centred X (n, d1), Y (n, d2) the linear CKA is
    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),
computed in feature space. It is biased upwards when n is not much larger than the widths.
The debiased estimator replaces each HSIC by the unbiased U-statistic of Song et al. (2012)
(used for CKA by Nguyen, Raghu & Kornblith 2021), with K~, L~ the Gram matrices with zeroed
diagonals:
    HSIC_u = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).
For centred linear features, with r_x = row norms ||x_i||^2 (so K~ 1 = -r_x):
    tr(K~ L~) = ||Y^T X||_F^2 - r_x . r_y,   1^T K~ 1 = -sum r_x,   1^T K~ L~ 1 = r_x . r_y,
which gives the same estimator in feature space, O(n d1 d2) instead of O(n^2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# --- CKA --------------------------------------------------------------------------------------

def _centred(X: torch.Tensor) -> torch.Tensor:
    X = torch.as_tensor(X).to(torch.float64)
    return X - X.mean(0, keepdim=True)


def _hsic_terms(cross: torch.Tensor, r_x: torch.Tensor, r_y: torch.Tensor, n: int, debiased: bool) -> torch.Tensor:
    """HSIC numerators from cross = ||Y^T X||_F^2 and row norms r (see module doc); biased: cross."""
    if not debiased:
        return cross
    rr = r_x @ r_y.T if r_x.ndim == 2 else (r_x * r_y).sum()
    sx, sy = r_x.sum(-1), r_y.sum(-1)
    s = torch.outer(sx, sy) if r_x.ndim == 2 else sx * sy
    return (cross - rr + s / ((n - 1) * (n - 2)) - 2.0 * rr / (n - 2)) / (n * (n - 3))


def linear_cka(X, Y, debiased: bool = False) -> float:
    """Linear CKA of X (n, d1) and Y (n, d2), rows = the same n examples; see module doc."""
    X, Y = _centred(X), _centred(Y)
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"X and Y need the same number of rows, got {n} and {Y.shape[0]}")
    if debiased and n < 4:
        raise ValueError("the debiased estimator needs n >= 4")
    rx, ry = (X * X).sum(1), (Y * Y).sum(1)
    xy = _hsic_terms((Y.T @ X).square().sum(), rx, ry, n, debiased)
    xx = _hsic_terms((X.T @ X).square().sum(), rx, rx, n, debiased)
    yy = _hsic_terms((Y.T @ Y).square().sum(), ry, ry, n, debiased)
    denom = math.sqrt(max(float(xx), 0.0) * max(float(yy), 0.0))
    return float(xy) / denom if denom > 0 else float("nan")


def cka_matrix(samples: torch.Tensor, debiased: bool = False) -> np.ndarray:
    """CKA between all pairs of layers: samples (k, n, d), the same n tokens in every layer.

    Each layer centred on its own mean, then the cross terms ||X_j^T X_i||_F^2 for j >= i from one
    (d, n) @ (n, d) float32 product per pair (float64 sums); returns a symmetric (k, k) float64
    array. Memory beyond `samples`: two centred layers and one d x d product (a 70B model's
    d = 8192: 0.8 GB), never a copy of all k layers.
    """
    samples = torch.as_tensor(samples)
    k, n, d = samples.shape
    if debiased and n < 4:
        raise ValueError("the debiased estimator needs n >= 4")
    means = [samples[i].float().mean(0) for i in range(k)]  # (d,) per layer

    def centred(i: int) -> torch.Tensor:  # (n, d) float32
        return samples[i].float() - means[i]

    cross = torch.zeros(k, k, dtype=torch.float64)
    r = torch.zeros(k, n, dtype=torch.float64)  # row norms of the centred layers
    for i in range(k):
        x_i = centred(i)
        r[i] = x_i.square().sum(1, dtype=torch.float64)
        for j in range(i, k):
            x_j = x_i if j == i else centred(j)
            cross[i, j] = cross[j, i] = (x_i.T @ x_j).double().square().sum()  # ||X_i^T X_j||_F^2
    hsic = _hsic_terms(cross, r, r, n, debiased)
    diag = hsic.diagonal().clamp_min(0.0)
    return (hsic / torch.sqrt(torch.outer(diag, diag))).numpy()


def cka_sample_warning(n: int, width: int, debiased: bool) -> str | None:
    """Biased CKA between unrelated representations is about width/n, not 0, when n is not >> width."""
    if not debiased and n < 10 * width:
        return (f"only {n} tokens for width {width}: biased linear CKA is inflated "
                f"(unrelated representations score ~{min(1.0, width / n):.2f}); prefer the debiased estimator "
                f"or more tokens (>= {10 * width}).")
    return None


def cka_blocks(cka: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Maximal runs [a, b] of consecutive layers whose adjacent CKA (a..b) all stay >= threshold."""
    adjacent = np.diagonal(cka, offset=1)
    blocks, start = [], 0
    for i, value in enumerate(adjacent):
        if value < threshold:
            blocks.append((start, i))
            start = i + 1
    blocks.append((start, cka.shape[0] - 1))
    return blocks
