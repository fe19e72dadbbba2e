"""utils.metrics.linear_image: the covariance spectrum of X W^T + b from the d-wide rows X R^T.

Closed forms (W = [I; 0] gives cov(X) itself), the reference (the D x D covariance of the outputs,
eigenvalues by numpy in float64), invariances (bias, a rotation of W's output space) and
rank-deficient weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.metrics.linear_image import factor_pays, input_projection, padded


def _cov_eigenvalues(rows: torch.Tensor) -> np.ndarray:
    """Reference: descending eigenvalues of the covariance of rows (N, D), numpy float64."""
    x = rows.double().numpy()
    x = x - x.mean(0)
    return np.sort(np.linalg.eigvalsh(x.T @ x / (len(x) - 1)))[::-1]


def _factored(rows: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
    z = rows @ input_projection(weight, torch.float64)
    return padded(torch.from_numpy(_cov_eigenvalues(z).copy()), weight.shape[0]).numpy()


def _data(n: int = 200, d: int = 12, D: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return x, torch.randn(D, d, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)


def test_equals_the_output_covariance_with_exact_zeros_beyond_d():
    x, w, b = _data()
    direct = _cov_eigenvalues(x @ w.T + b)  # (40,): 12 nonzero, 28 at rounding level
    ours = _factored(x, w)
    assert ours.shape == (40,) and np.all(ours[12:] == 0)
    np.testing.assert_allclose(ours, np.clip(direct, 0, None), rtol=0, atol=1e-12 * direct[0])
    assert np.abs(direct[12:]).max() < 1e-12 * direct[0]  # the reference's rank is d too


def test_closed_form_identity_embedding_gives_the_input_covariance():
    x, _, _ = _data()
    w = torch.cat([torch.eye(12, dtype=torch.float64), torch.zeros(28, 12, dtype=torch.float64)])  # Y = [X, 0]
    expected = np.concatenate([_cov_eigenvalues(x), np.zeros(28)])
    np.testing.assert_allclose(_factored(x, w), expected, rtol=1e-12, atol=0)


def test_invariant_to_bias_and_to_a_rotation_of_the_output_space():
    x, w, b = _data()
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = _factored(x, w)
    np.testing.assert_allclose(_factored(x, q @ w), base, rtol=0, atol=1e-12 * base[0])
    np.testing.assert_allclose(_cov_eigenvalues(x @ w.T + 5 * b)[:12], base[:12], rtol=1e-10)  # any bias


def test_rank_deficient_weight():
    x, w, _ = _data()
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 12, generator=g, dtype=torch.float64)
    direct, ours = _cov_eigenvalues(x @ w.T), _factored(x, w)
    np.testing.assert_allclose(ours, np.clip(direct, 0, None), rtol=0, atol=1e-12 * direct[0])
    assert (ours > 1e-9 * ours[0]).sum() == 5


def test_float32_rows_stay_within_float32_rounding():
    x, w, b = _data()
    direct = _cov_eigenvalues(x @ w.T + b)
    ours32 = padded(torch.from_numpy(_cov_eigenvalues((x.float() @ input_projection(w)).double()).copy()), 40).numpy()
    np.testing.assert_allclose(ours32, np.clip(direct, 0, None), rtol=0, atol=1e-5 * direct[0])


def test_refuses_what_it_cannot_shrink():
    assert factor_pays(torch.zeros(8, 4)) and not factor_pays(torch.zeros(4, 4)) and not factor_pays(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="D > d"):
        input_projection(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="at most 3"):
        padded(torch.ones(4), 3)
