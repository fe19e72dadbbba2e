"""utils.metrics.kernels: every factored quantity against the dense d x d kernel, on random and on real weights."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from utils.metrics.kernels import COMPLEX_RTOL, components_for_energy, cumulative_energy, head_kernels, kernel_table, layer_metrics
from utils.metrics.spectra import effective_rank
from utils.models.adapters import AttentionWeights


def random_attention(h=6, n_kv=2, d_head=8, d=40, seed=0) -> AttentionWeights:
    g = torch.Generator().manual_seed(seed)
    return AttentionWeights(
        q=torch.randn(h, d_head, d, generator=g), k=torch.randn(n_kv, d_head, d, generator=g),
        v=torch.randn(n_kv, d_head, d, generator=g), o=torch.randn(h, d, d_head, generator=g),
        kv_head_of=torch.arange(h) // (h // n_kv), scale=d_head**-0.5,
    )



REAL_HEADS = (0, 4, 8)  # one query head on each of SmolLM2's 3 KV heads (dense d x d checks are slow)


@pytest.fixture(scope="module")
def smollm_layer() -> AttentionWeights:
    """One real layer of SmolLM2-135M (GQA 9 query heads on 3 KV heads, d = 576, d_head = 64)."""
    from utils import load_model

    return load_model("smollm2-135m").adapter.attention(7)


def dense(attn: AttentionWeights, head: int) -> torch.Tensor:
    """The seed's kernel W_Q_h^T W_K_h, d x d, float64."""
    return attn.q[head].double().T @ attn.key_of(head).double()


def match_multisets(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance between two complex multisets under the optimal one-to-one matching."""
    cost = np.abs(a[:, None] - b[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def projector(vectors: torch.Tensor) -> torch.Tensor:
    return vectors @ vectors.T


def check_against_dense(attn: AttentionWeights, rtol: float, heads):
    kern = head_kernels(attn)
    lam, (U, S, V) = kern.eigenvalues(), kern.svd()
    m = kern.d_head
    for head in heads:
        A = dense(attn, head)
        scale = torch.linalg.matrix_norm(A, ord=2).item()
        lam_dense = torch.linalg.eigvals(A).numpy()
        top = np.argsort(-np.abs(lam_dense))
        # eigenvalues: the m largest dense ones equal the factored ones as multisets, the rest vanish
        assert match_multisets(lam[head].numpy(), lam_dense[top[:m]]) < rtol * scale
        assert np.abs(lam_dense[top[m:]]).max() < rtol * scale
        # singular values
        Ud, s_dense, Vdh = torch.linalg.svd(A)
        torch.testing.assert_close(S[head], s_dense[:m], rtol=0, atol=rtol * scale)
        assert s_dense[m:].max() < rtol * scale
        # the factorisation reconstructs A, with orthonormal singular vectors
        torch.testing.assert_close(U[head] @ torch.diag(S[head]) @ V[head].T, A, rtol=0, atol=rtol * scale)
        torch.testing.assert_close(U[head].T @ U[head], torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-10)
        torch.testing.assert_close(V[head].T @ V[head], torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-10)
        # top-k singular subspaces (k where the spectrum has a gap) against the dense SVD's projectors
        gaps = (S[head][:-1] - S[head][1:]) / S[head][0]
        k = int(torch.argmax(gaps[: m // 2])) + 1
        for ours, theirs in ((U[head][:, :k], Ud[:, :k]), (V[head][:, :k], Vdh[:k].T)):
            assert (projector(ours) - projector(theirs)).abs().max() < 1e3 * rtol
        # norms and asymmetry
        fro = torch.linalg.matrix_norm(A).item()
        assert math.isclose(kern.frobenius_sq()[head].item(), fro**2, rel_tol=1e-9)
        assert math.isclose(kern.trace_square()[head].item(), torch.trace(A @ A).item(), rel_tol=1e-9, abs_tol=1e-9 * fro**2)
        asym = (torch.linalg.matrix_norm(A - A.T) / fro).item()
        assert math.isclose(kern.asymmetry()[head].item(), asym, rel_tol=1e-7)
        # cumulative energy of |lambda|^2 over all d eigenvalues equals the factored one (padded with 1)
        dense_energy = cumulative_energy(lam_dense)
        np.testing.assert_allclose(cumulative_energy(lam[head].numpy()), dense_energy[:m], atol=1e-8)


def test_random_weights_match_dense():
    check_against_dense(random_attention(), rtol=1e-9, heads=range(6))


def test_real_weights_match_dense(smollm_layer):
    check_against_dense(smollm_layer, rtol=1e-9, heads=REAL_HEADS)


def test_layer_metrics_match_dense_reference(smollm_layer):
    attn = smollm_layer
    df = layer_metrics(attn, scaled=False)
    assert len(df) == attn.q.shape[0]
    for head in REAL_HEADS:
        row = df.iloc[head]
        A = dense(attn, head)
        lam = torch.linalg.eigvals(A)
        s = torch.linalg.svdvals(A)
        # the seed's effective rank of all d singular values (zeros contribute 0 log 0 = 0)
        assert math.isclose(row.eff_rank, effective_rank(s[: attn.q.shape[1]]), rel_tol=1e-9)
        assert math.isclose(row.eff_rank, effective_rank(s), rel_tol=1e-6)
        n_complex = int((lam.imag.abs() > COMPLEX_RTOL * lam.abs().max()).sum())
        assert row.n_complex == n_complex
        assert math.isclose(row.frac_complex, n_complex / attn.q.shape[1])
        assert math.isclose(row.top_eig_abs, lam.abs().max().item(), rel_tol=1e-9)
        assert math.isclose(row.top_sv, s[0].item(), rel_tol=1e-9)
        assert row.n99_energy == components_for_energy(lam.numpy())
        assert row.kv_head == int(attn.kv_head_of[head])


def test_scale_changes_magnitudes_only(smollm_layer):
    raw, scaled = layer_metrics(smollm_layer, scaled=False), layer_metrics(smollm_layer, scaled=True)
    c = smollm_layer.scale
    for col in ("top_eig_abs", "top_sv", "fro_norm"):
        np.testing.assert_allclose(scaled[col], c * raw[col], rtol=1e-12)
    for col in ("eff_rank", "asymmetry", "frac_complex", "n99_energy"):
        np.testing.assert_allclose(scaled[col], raw[col], rtol=1e-9)


def test_asymmetry_closed_forms():
    g = torch.Generator().manual_seed(1)
    d, m = 30, 6
    Q = torch.randn(1, m, d, generator=g, dtype=torch.float64)
    sym = head_kernels_of(Q, Q)  # A = Q^T Q, symmetric
    assert sym.asymmetry().item() < 1e-7
    J = torch.zeros(m, m, dtype=torch.float64)
    J[0::2, 1::2] = torch.eye(m // 2, dtype=torch.float64)
    J = J - J.T  # antisymmetric: A = Q^T J Q is antisymmetric
    anti = head_kernels_of(Q, (J @ Q[0]).unsqueeze(0))
    assert math.isclose(anti.asymmetry().item(), 2.0, rel_tol=1e-9)
    # independent Gaussian factors: E tr(A A) = sum_i E (k_i . q_i)^2 = m d and E ||A||_F^2 = m d^2,
    # so tr(A A) / ||A||_F^2 ~ 1/d and asymmetry ~ sqrt(2 (1 - 1/d)); always within [0, 2]
    n = 400
    rand = head_kernels_of(torch.randn(n, m, d, generator=g, dtype=torch.float64),
                           torch.randn(n, m, d, generator=g, dtype=torch.float64))
    asym = rand.asymmetry()
    assert asym.min() >= 0 and asym.max() <= 2
    ratio = 1 - asym.square() / 2  # tr(A A) / ||A||_F^2
    assert abs(ratio.mean().item() - 1 / d) < 4 * ratio.std().item() / math.sqrt(n)


def head_kernels_of(q: torch.Tensor, k: torch.Tensor):
    from utils.metrics.kernels import HeadKernels

    return HeadKernels(q=q, k=k)


def test_rank_and_energy_closed_forms():
    # rank-one kernel: effective rank 1, all energy in one eigenvalue
    u = torch.randn(1, 1, 20, dtype=torch.float64)
    attn = AttentionWeights(q=torch.cat([u, torch.zeros(1, 3, 20, dtype=torch.float64)], 1),
                            k=torch.cat([2 * u, torch.zeros(1, 3, 20, dtype=torch.float64)], 1),
                            v=None, o=None, kv_head_of=torch.zeros(1, dtype=torch.long), scale=1.0)
    row = layer_metrics(attn, scaled=False).iloc[0]
    assert math.isclose(row.eff_rank, 1.0)
    assert row.n99_energy == 1 and row.n_complex == 0
    assert math.isclose(row.top_eig_abs, 2 * u.square().sum().item(), rel_tol=1e-12)
    # an isometry-like kernel (Q = K orthonormal rows): effective rank d_head, symmetric
    basis = torch.linalg.qr(torch.randn(20, 4, dtype=torch.float64)).Q.T.unsqueeze(0)  # (1, 4, 20)
    attn = AttentionWeights(q=basis, k=basis, v=None, o=None, kv_head_of=torch.zeros(1, dtype=torch.long), scale=1.0)
    row = layer_metrics(attn, scaled=False).iloc[0]
    assert math.isclose(row.eff_rank, 4.0, rel_tol=1e-9)
    assert row.asymmetry < 1e-7 and row.n99_energy == 4


def test_gqa_map_is_used():
    attn = random_attention(h=6, n_kv=2)
    kern = head_kernels(attn)
    for head in range(6):
        torch.testing.assert_close(kern.k[head], attn.k[head // 3].double())


def test_kernel_table_shape_and_bounds():
    from utils import load_model

    adapter = load_model(str(Path(__file__).parent / "params" / "tiny-llama.yaml")).adapter
    df = kernel_table(adapter, progress=False)
    L, h, d_head = adapter.dims.L, adapter.dims.h, adapter.dims.d_head
    assert len(df) == L * h
    assert list(df.columns[:3]) == ["layer", "head", "kv_head"]
    assert df.eff_rank.between(1, d_head).all()
    assert df.asymmetry.between(0, 2).all()
    assert df.frac_complex.between(0, 1).all()
    last = df[df.layer == L - 1].reset_index(drop=True)
    np.testing.assert_allclose(last.eff_rank, layer_metrics(adapter.attention(L - 1)).eff_rank)


def test_key_query_product_is_wk_wq_transposed():
    attn = random_attention()
    kern = head_kernels(attn)
    B = kern.key_query_product()  # (h, d_head, d_head)
    assert B.shape == (6, 8, 8)
    for head in range(6):
        expected = attn.key_of(head).double() @ attn.q[head].double().T
        torch.testing.assert_close(B[head], expected, rtol=1e-12, atol=1e-12)
        nonzero = torch.linalg.eigvals(dense(attn, head)).abs().sort(descending=True).values[:8]
        torch.testing.assert_close(torch.linalg.eigvals(B[head]).abs().sort(descending=True).values, nonzero,
                                   rtol=1e-6, atol=1e-9)
