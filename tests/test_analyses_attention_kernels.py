"""utils.analyses.attention_kernels (notebook 02): each result's fields against the dense d x d kernel
and dense SVDs, closed forms for symmetric and antisymmetric kernels, and the parameter checks."""

from pathlib import Path

import numpy as np
import pytest
import torch

from utils import load_model
from utils.analyses.attention_kernels import check_parameters, down_projection, head_spectrum, kernel_survey, random_asymmetry
from utils.metrics.spectra import effective_rank
from utils.models.adapters import AttentionWeights

PARAMS = Path(__file__).parent / "params"


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model(str(PARAMS / "tiny-llama.yaml"))


def attention(q: torch.Tensor, k: torch.Tensor, scale: float = 1.0) -> AttentionWeights:
    h, d_head, d = q.shape
    return AttentionWeights(q=q, k=k, v=k, o=torch.zeros(h, d, d_head), kv_head_of=torch.arange(h), scale=scale)


def test_check_parameters(tiny_llama):
    dims = tiny_llama.dims
    assert check_parameters("m", dims, -1, 0, 1e-6) == dims.L // 2
    assert check_parameters("m", dims, dims.L - 1, dims.h - 1, 0.5) == dims.L - 1
    with pytest.raises(ValueError, match=f"parameter layer={dims.L} is out of range: m has layers 0..{dims.L - 1}"):
        check_parameters("m", dims, dims.L, 0, 1e-6)
    with pytest.raises(ValueError, match=f"parameter head={dims.h} is out of range"):
        check_parameters("m", dims, 0, dims.h, 1e-6)
    for rtol in (0.0, 1.0):
        with pytest.raises(ValueError, match="complex_rtol"):
            check_parameters("m", dims, 0, 0, rtol)


def test_head_spectrum_against_the_dense_kernel(tiny_llama):
    layer, head = 1, 3
    attn = tiny_llama.adapter.attention(layer)
    spec = head_spectrum(attn, layer, head, 1e-6)
    A = (attn.scale * attn.q[head].double().T @ attn.key_of(head).double()).numpy()  # d x d
    d, d_head = A.shape[0], attn.q.shape[1]
    assert (spec.d, spec.d_head, spec.kv_head) == (d, d_head, int(attn.kv_head_of[head]))
    lam = np.linalg.eigvals(A)
    lam = lam[np.argsort(-np.abs(lam))][:d_head]  # the other d - d_head are zero
    np.testing.assert_allclose(np.sort(np.abs(spec.eigenvalues)), np.sort(np.abs(lam)), rtol=1e-8)
    np.testing.assert_allclose(np.sort(spec.eigenvalues.real), np.sort(lam.real), atol=1e-9 * np.abs(lam).max())
    s = np.linalg.svd(A, compute_uv=False)[:d_head]
    np.testing.assert_allclose(spec.singular_values, s, rtol=1e-8)
    assert spec.asymmetry == pytest.approx(np.linalg.norm(A - A.T) / np.linalg.norm(A), rel=1e-9)
    assert spec.n_complex == int((np.abs(spec.eigenvalues.imag) > 1e-6 * np.abs(spec.eigenvalues).max()).sum())
    assert spec.n_complex % 2 == 0  # complex eigenvalues of a real matrix come in conjugate pairs
    energy = np.cumsum(np.sort(np.abs(lam) ** 2)[::-1]) / (np.abs(lam) ** 2).sum()
    np.testing.assert_allclose(spec.energy, energy, rtol=1e-9)
    assert spec.top_energy == pytest.approx(1.0) and spec.n99 == int((energy < 0.99 - 1e-12).sum()) + 1
    assert spec.eff_rank_sv == pytest.approx(effective_rank(s))
    assert spec.n_nonzero == d_head  # random weights: every possibly-nonzero eigenvalue is nonzero
    milestones = spec.milestones()
    assert milestones.components.is_monotonic_increasing and milestones.components.iloc[-1] == spec.n99
    np.testing.assert_allclose(milestones["share of d"], milestones.components / d)
    assert len(spec.top_eigenvalues(20)) == min(20, d_head)
    assert f"asymmetry {spec.asymmetry:.3f}" in spec.sentences()[0]


def test_symmetric_and_antisymmetric_kernels():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 12, generator=g, dtype=torch.float64)
    sym = head_spectrum(attention(q, q.clone()), 0, 0, 1e-6)  # A = Q^T Q: symmetric, PSD
    assert sym.asymmetry == pytest.approx(0.0, abs=1e-7) and sym.n_complex == 0
    assert (sym.eigenvalues.real > 0).all()
    J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    anti = head_spectrum(attention(q, (J @ q[0])[None]), 0, 0, 1e-6)  # A = Q^T J Q: antisymmetric
    assert anti.asymmetry == pytest.approx(2.0, rel=1e-9) and anti.n_complex == 2
    np.testing.assert_allclose(anti.eigenvalues.real, 0.0, atol=1e-9)


def test_kernel_survey_summaries(tiny_llama):
    dims, survey = tiny_llama.dims, kernel_survey(tiny_llama.adapter, 1e-6)
    t = survey.table
    assert len(t) == dims.L * dims.h and survey.eff_rank.shape == (dims.L, dims.h)
    for col in ("eff_rank", "asymmetry", "frac_complex"):
        grid = getattr(survey, col)
        for layer, head in ((0, 0), (dims.L - 1, dims.h - 1)):
            assert grid[layer, head] == t[(t.layer == layer) & (t["head"] == head)][col].item()
    means = survey.eff_rank.mean(axis=0)
    np.testing.assert_allclose(survey.per_head["mean"], means)
    assert survey.low_threshold == pytest.approx(np.percentile(means, 25))
    assert survey.heads_in("low-rank") == [i for i in range(dims.h) if means[i] <= np.percentile(means, 25)]
    assert survey.heads_in("high-rank") == [i for i in range(dims.h) if means[i] >= np.percentile(means, 75)]
    np.testing.assert_allclose(survey.per_layer["mean"], survey.eff_rank.mean(axis=1))
    assert survey.above_random == pytest.approx(np.mean(t.asymmetry > np.sqrt(2 * (1 - 1 / dims.d))))
    assert random_asymmetry(dims.d) == pytest.approx(np.sqrt(2 * (1 - 1 / dims.d)))
    assert survey.global_stats["mean"] == pytest.approx(t.eff_rank.mean())
    assert len(survey.sentences()) == 4


def test_down_projection_against_dense_svd(tiny_llama):
    layer = 2
    down = down_projection(tiny_llama.adapter, layer)
    W = tiny_llama.adapter.ffn(layer).w_out.double().numpy()  # (d, D_ff)
    s = np.linalg.svd(W, compute_uv=False)
    assert down.shape == W.shape
    np.testing.assert_allclose(down.singular_values, s, rtol=1e-8)
    np.testing.assert_allclose(down.variance.sum(), 1.0)
    assert down.n99 == int((np.cumsum(s**2) / (s**2).sum() < 0.99 - 1e-12).sum()) + 1
    assert down.condition == pytest.approx(s[0] / s[-1], rel=1e-6)
    assert down.milestones().components.iloc[-1] == down.n99
    assert down.summary()["99% variance at"] == f"{down.n99}/{s.size}"
