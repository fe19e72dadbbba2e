"""Streaming covariance equals the direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.metrics.covariance import StreamingCovariance


@pytest.mark.parametrize("block", [512, 5, 1], ids=["one-strip", "strips", "rows"])
def test_streaming_matches_direct(block):
    X = torch.randn(1000, 12, dtype=torch.float64) * torch.linspace(0.1, 3, 12) + 5.0
    acc = StreamingCovariance(12, block=block)
    for chunk in X.split(137):
        acc.update(chunk.float())
    direct = np.cov(X.float().double().numpy(), rowvar=False)  # unbiased, NerVE eq. (1)
    assert acc.count == 1000
    assert np.allclose(acc.covariance().numpy(), direct, atol=1e-9)
    assert np.allclose(acc.mean().numpy(), X.float().double().mean(0).numpy())
    eigs = acc.eigenvalues().numpy()
    assert np.all(np.diff(eigs) <= 0) and np.allclose(eigs, np.sort(np.linalg.eigvalsh(direct))[::-1])


def test_merge_and_state_round_trip():
    X = torch.randn(300, 5)
    a, b, whole = StreamingCovariance(5), StreamingCovariance(5), StreamingCovariance(5)
    a.update(X[:100])
    b.update(X[100:])
    whole.update(X)
    a.merge(b)
    assert torch.allclose(a.covariance(), whole.covariance())
    restored = StreamingCovariance.from_state_dict(whole.state_dict())
    assert torch.equal(restored.covariance(), whole.covariance())


def test_too_few_rows():
    acc = StreamingCovariance(3)
    acc.update(torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        acc.covariance()


@pytest.mark.parametrize("dtype,block", [("float32", 512), ("float32", 6), ("float64", 512), ("float64", 6)])
def test_large_mean_against_float64_numpy(dtype, block):
    """|mu| = 1e4 sigma: per-batch centring with Chan's merge keeps the covariance; the naive
    float32 sum x x^T - n mu mu^T loses every digit (shown, as the reason for the algorithm).
    Bound in float32: the recursive-summation bound (n_b + K) u_32 = (135 + 37) 6e-8 = 1e-5
    relative; MKL's kernel for the whole 16 x 16 product happens to reach 4e-7, its small-strip
    kernel (block 6) 3.9e-6 (at D = 1024 both give 2.2e-7)."""
    g = np.random.default_rng(0)
    A = g.standard_normal((16, 16)) / 4
    X = (g.standard_normal((5000, 16)) @ A + 1e4).astype(np.float32)  # data as a model would give it
    ref = np.cov(X.astype(np.float64), rowvar=False)  # independent reference, float64 numpy
    acc = StreamingCovariance(16, dtype=dtype, block=block)  # 6: strips of 6, 6 and 4 rows
    for chunk in np.array_split(X, 37):  # uneven batches
        acc.update(torch.from_numpy(chunk))
    rel = np.abs(acc.covariance().numpy() - ref).max() / np.abs(ref).max()
    assert rel < ((135 + 37) * np.finfo(np.float32).eps / 2 if dtype == "float32" else 1e-12)  # unit roundoff
    np.testing.assert_allclose(acc.mean().numpy(), X.astype(np.float64).mean(0), rtol=1e-12)
    eig_ref = np.sort(np.linalg.eigvalsh(ref))[::-1]
    assert np.abs(acc.eigenvalues().numpy() - eig_ref).max() < 1e-5 * eig_ref[0]
    # the naive float32 formula on the same data: relative error of order 1 or worse
    Xt = torch.from_numpy(X)
    naive = (Xt.T @ Xt - len(X) * torch.outer(Xt.mean(0), Xt.mean(0))) / (len(X) - 1)
    assert np.abs(naive.double().numpy() - ref).max() / np.abs(ref).max() > 1e-1


def test_closed_form_two_point_batches():
    """Rows +-s around m, batched so that every batch has a different mean: covariance s^2 n/(n-1) I
    per coordinate pair (closed form), whatever the batching."""
    m, s, n = 3e3, 0.5, 400
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)
    X = torch.stack([m + s * signs, -m + s * signs.roll(1)], 1)  # (n, 2), zero cross-covariance
    acc = StreamingCovariance(2, dtype="float32")
    for chunk in X.split(3):  # odd batch size: batch means alternate around m
        acc.update(chunk)
    expected = np.diag([s * s * n / (n - 1)] * 2)
    cross = -(s * s) * n / (n - 1)  # second column's signs are the first's shifted by one: anti-correlated
    expected[0, 1] = expected[1, 0] = cross
    # float32 storage: each of the K = 134 in-place adds rounds once, so the error is below K eps_32
    np.testing.assert_allclose(acc.covariance().numpy(), expected, rtol=134 * np.finfo(np.float32).eps)


def test_merge_equals_direct_in_both_dtypes_and_old_api():
    X = torch.randn(700, 6, dtype=torch.float64) * 2 + 50
    for dtype in ("float32", "float64"):
        a, b = StreamingCovariance(6, dtype=dtype), StreamingCovariance(6, dtype=dtype)
        a.update(X[:650].float())
        b.update(X[650:].float())
        a.merge(b)
        ref = np.cov(X.float().double().numpy(), rowvar=False)
        err = np.abs(a.covariance().numpy() - ref).max() / np.abs(ref).max()
        assert err < (1e-6 if dtype == "float32" else 1e-12)
        # sum / sum_outer (uncentred moments, as notebook 04 reads them)
        Xf = X.float().double()
        np.testing.assert_allclose(a.sum.numpy(), Xf.sum(0).numpy(), rtol=1e-12)
        np.testing.assert_allclose(a.sum_outer.numpy(), (Xf.T @ Xf).numpy(), rtol=1e-6)
        restored = StreamingCovariance.from_state_dict(a.state_dict())
        assert restored.dtype == a.dtype and torch.equal(restored.covariance(), a.covariance())
    with pytest.raises(ValueError, match="float32 or float64"):
        StreamingCovariance(3, dtype="bfloat16")


def test_lower_triangle_only_and_full_state_compatible():
    """The Gram update writes the lower triangle only (half the flops of X^T X); a full symmetric
    M2 (the format of older cache files) reads back to the same covariance."""
    X = torch.randn(50, 10, dtype=torch.float64)
    acc = StreamingCovariance(10, block=3)
    acc._add_lower_gram(X)
    full = X.T @ X
    assert torch.allclose(acc.m2.tril(), full.tril())
    for r0 in range(0, 10, 3):  # above the diagonal blocks of the strips: never computed
        assert torch.count_nonzero(acc.m2[r0 : r0 + 3, r0 + 3 :]) == 0
    acc = StreamingCovariance(10, block=3)
    acc.update(X)
    state = acc.state_dict()
    sym = acc._symmetric_m2()
    assert torch.equal(sym, sym.T)
    state["m2"] = sym.clone()  # full symmetric, as stored before
    old = StreamingCovariance.from_state_dict(state)
    assert torch.allclose(old.covariance(), acc.covariance(), rtol=1e-14)
    assert torch.allclose(old.eigenvalues(), acc.eigenvalues(), rtol=1e-12)
    np.testing.assert_allclose(acc.covariance().numpy(), np.cov(X.numpy(), rowvar=False), rtol=1e-12)
    # float64 storage: reading never alters the accumulator
    before = acc.m2.clone()
    acc.covariance(), acc.eigenvalues(), acc.sum_outer
    assert torch.equal(acc.m2, before)
