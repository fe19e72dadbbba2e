"""Streaming covariance equals the direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.covariance import StreamingCovariance


def test_streaming_matches_direct():
    X = torch.randn(1000, 12, dtype=torch.float64) * torch.linspace(0.1, 3, 12) + 5.0
    acc = StreamingCovariance(12)
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
    a.update(X[:100]); b.update(X[100:]); whole.update(X)
    a.merge(b)
    assert torch.allclose(a.covariance(), whole.covariance())
    restored = StreamingCovariance.from_state_dict(whole.state_dict())
    assert torch.equal(restored.covariance(), whole.covariance())


def test_too_few_rows():
    acc = StreamingCovariance(3)
    acc.update(torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        acc.covariance()
