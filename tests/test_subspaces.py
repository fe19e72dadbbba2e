"""utils.metrics.subspaces: closed forms of subspace similarity and energy fractions, and the factored
singular subspaces against the dense kernel's SVD."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from utils import load_model
from utils.metrics.subspaces import (
    chance_similarity,
    energy_in_subspace,
    ffn_alignment,
    get_attn_subspace,
    layer_subspaces,
    similarity_matrix,
    subspace_similarity,
)
from utils.models.adapters import FFNWeights

PARAMS = Path(__file__).parent / "params"


def random_subspace(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64)).Q.T  # (k, d)



@pytest.fixture(scope="module")
def tiny_llama():
    return load_model(str(PARAMS / "tiny-llama.yaml")).adapter


def test_similarity_closed_forms():
    g = torch.Generator().manual_seed(0)
    k, d = 4, 32
    U = random_subspace(k, d, g)
    assert math.isclose(subspace_similarity(U, U), 1.0, rel_tol=1e-12)
    R = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64)).Q
    assert math.isclose(subspace_similarity(U, R @ U), 1.0, rel_tol=1e-12)  # basis-independent
    E = torch.eye(d, dtype=torch.float64)
    assert subspace_similarity(E[:k], E[k : 2 * k]) == 0.0
    # chance: the average over independent random subspaces is k/d
    n = 3000
    U, V = torch.linalg.qr(torch.randn(2, n, d, k, generator=g, dtype=torch.float64)).Q.transpose(-1, -2)
    sims = (U @ V.transpose(-1, -2)).square().sum(dim=(-1, -2)).numpy() / k  # n similarities, batched
    assert math.isclose(sims[0], subspace_similarity(U[0], V[0]), rel_tol=1e-12)
    assert abs(sims.mean() - chance_similarity(k, d)) < 4 * sims.std() / math.sqrt(sims.size)


def test_similarity_is_mean_squared_cosine_of_principal_angles():
    g = torch.Generator().manual_seed(1)
    U, V = random_subspace(5, 12, g), random_subspace(5, 12, g)
    theta = subspace_angles(U.T.numpy(), V.T.numpy())
    assert math.isclose(subspace_similarity(U, V), float(np.mean(np.cos(theta) ** 2)), rel_tol=1e-10)
    with pytest.raises(ValueError):
        subspace_similarity(U, V[:3])


def test_similarity_matrix_matches_pairwise():
    g = torch.Generator().manual_seed(2)
    subs = torch.stack([random_subspace(3, 10, g) for _ in range(5)])  # (5, 3, 10)
    S = similarity_matrix(subs)
    for i in range(5):
        for j in range(5):
            assert math.isclose(S[i, j].item(), subspace_similarity(subs[i], subs[j]), rel_tol=1e-12)
    torch.testing.assert_close(torch.diagonal(S), torch.ones(5, dtype=torch.float64))
    batched = similarity_matrix(torch.stack([subs, subs.flip(0)]))  # (2, 5, 5)
    torch.testing.assert_close(batched[0], S)
    torch.testing.assert_close(batched[1], S.flip(0, 1))


def test_energy_in_subspace_against_projector():
    g = torch.Generator().manual_seed(3)
    k, d = 4, 24
    subs = torch.stack([random_subspace(k, d, g) for _ in range(3)])  # (3, k, d)
    W = torch.randn(50, d, generator=g)
    got = energy_in_subspace(W, subs)
    W64 = W.double()
    for i in range(3):
        P = subs[i].T @ subs[i]  # the d x d projector, formed only in this reference
        assert math.isclose(got[i].item(), ((W64 @ P).square().sum() / W64.square().sum()).item(), rel_tol=1e-10)
    # closed forms: W inside the subspace -> 1, orthogonal to it -> 0, isotropic rows -> k/d
    E = torch.eye(d, dtype=torch.float64)
    assert math.isclose(energy_in_subspace(torch.randn(7, k, generator=g, dtype=torch.float64) @ E[:k], E[:k]).item(), 1.0)
    assert energy_in_subspace(E[k:], E[:k]).item() == 0.0
    fractions = energy_in_subspace(torch.randn(20000, d, generator=g), subs)
    np.testing.assert_allclose(fractions.numpy(), k / d, atol=0.01)


def test_ffn_alignment_names():
    g = torch.Generator().manual_seed(4)
    subs = random_subspace(2, 8, g).unsqueeze(0)
    w_in, w_gate = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    gated = ffn_alignment(FFNWeights(w_in=w_in, w_gate=w_gate, w_out=w_in.T), subs)
    assert set(gated) == {"in", "gate", "all"}
    total = w_in.double().square().sum() + w_gate.double().square().sum()
    mixed = (gated["in"] * w_in.double().square().sum() + gated["gate"] * w_gate.double().square().sum()) / total
    torch.testing.assert_close(gated["all"], mixed)  # "all" is the energy-weighted mean
    plain = ffn_alignment(FFNWeights(w_in=w_in, w_gate=None, w_out=w_in.T), subs)
    assert set(plain) == {"in", "all"}
    torch.testing.assert_close(plain["in"], plain["all"])


@pytest.mark.parametrize("side", ["key", "query"])
def test_attn_subspace_matches_dense_svd(tiny_llama, side):
    k, layer = 4, 1
    attn = tiny_llama.attention(layer)
    subs = layer_subspaces(tiny_llama, layer, k=k, side=side)
    h, d = tiny_llama.dims.h, tiny_llama.dims.d
    assert subs.shape == (h, k, d)
    for head in range(h):
        U = get_attn_subspace(tiny_llama, layer, head, k=k, side=side)
        torch.testing.assert_close(U, subs[head])
        torch.testing.assert_close(U @ U.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
        A = attn.q[head].double().T @ attn.key_of(head).double()  # dense d x d reference
        Ud, s, Vdh = torch.linalg.svd(A)
        dense = Vdh[:k] if side == "key" else Ud[:, :k].T
        assert (s[k - 1] - s[k]) / s[0] > 1e-3  # a spectral gap, so the top-k subspace is defined
        torch.testing.assert_close(U.T @ U, dense.T @ dense, rtol=0, atol=1e-8)
        # key side lies in the row space of W_K, query side in that of W_Q
        W = attn.key_of(head) if side == "key" else attn.q[head]
        row_space = torch.linalg.qr(W.double().T).Q.T  # (d_head, d)
        assert math.isclose(energy_in_subspace(U, row_space).item(), 1.0, rel_tol=1e-9)


def test_attn_subspace_validation(tiny_llama):
    with pytest.raises(ValueError, match="side"):
        get_attn_subspace(tiny_llama, 0, 0, k=2, side="value")
    with pytest.raises(ValueError, match="d_head"):
        get_attn_subspace(tiny_llama, 0, 0, k=tiny_llama.dims.d_head + 1)
    with pytest.raises(IndexError):
        get_attn_subspace(tiny_llama, 0, tiny_llama.dims.h)
    with pytest.raises(IndexError):
        get_attn_subspace(tiny_llama, tiny_llama.dims.L, 0, k=2)
    # accepts the HF model as well as the adapter
    torch.testing.assert_close(get_attn_subspace(tiny_llama.model, 0, 1, k=2), get_attn_subspace(tiny_llama, 0, 1, k=2))


def test_overlap_statistics_closed_form():
    from utils.metrics.subspaces import overlap_statistics

    L = 6
    i, j = np.indices((L, L))
    S = np.exp(-np.abs(i - j))  # similarity decays with layer distance
    stats = overlap_statistics(S, distant_gap=2)
    assert stats["adjacent mean"] == pytest.approx(np.exp(-1))
    assert stats["distant (> 2 apart) mean"] == pytest.approx(np.mean(np.exp(-np.abs(i - j)[np.abs(i - j) > 2])))
    assert stats["off-diagonal max"] == pytest.approx(np.exp(-1))
    assert stats["adjacent - distant"] > 0


def test_index_trend_and_reference_choice():
    import pandas as pd

    from utils.metrics.subspaces import choose_reference_layer, index_trend, reference_candidates

    assert index_trend([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert index_trend([3.0, 1.0]) == pytest.approx(-1.0)  # two points, as the seed computes them
    assert np.isnan(index_trend([1.0, 1.0, 1.0])) and np.isnan(index_trend([2.0]))
    x = np.array([0.3, 0.1, 0.4, 0.2, 0.9])
    assert index_trend(x) == pytest.approx(np.corrcoef(np.arange(5), x)[0, 1])
    assert reference_candidates(10).tolist() == [2, 3, 4, 5, 6, 7] and reference_candidates(4).tolist() == [0, 1, 2, 3]
    assert 33 in reference_candidates(36) and 34 not in reference_candidates(36)  # the seed's layer 33 of 36
    kernel = np.array([1.0, 9, 9, 9, 5, 9, 9, 9, 9, 9])  # layer 0 is lowest but has no layers before it
    ref, rule = choose_reference_layer(kernel)
    assert ref == 4 and "kernel effective rank" in rule
    kernel[7] = 2.0  # two layers after it: allowed
    assert choose_reference_layer(kernel)[0] == 7
    kernel[8] = 1.5  # one layer after it: not a candidate
    assert choose_reference_layer(kernel)[0] == 7
    acts = pd.DataFrame({"layer": range(11), "eff_rank": [50, 40, 40, 40, 40, 40, 40, 3, 40, 40, 40]})
    ref, rule = choose_reference_layer(kernel, acts)
    assert ref == 6 and "activation effective rank" in rule  # row 7 = after block 6
    ref, rule = choose_reference_layer(kernel, acts.iloc[:5])  # does not cover every block: fall back
    assert ref == 7


def test_phase_boundaries_are_the_largest_drops():
    from utils.metrics.subspaces import phase_boundaries

    S = np.eye(6)
    adjacent = [0.9, 0.8, 0.3, 0.7, 0.2]  # a_i = S[i, i + 1]
    S[np.arange(5), np.arange(1, 6)] = adjacent
    table = phase_boundaries(S, n=2)
    # drops a_{i+1} - a_i: -0.1, -0.5, +0.4, -0.5: the first two -0.5 (i = 1, 3) -> boundaries 2->3, 4->5
    assert table.boundary.tolist() == ["2->3", "4->5"]
    np.testing.assert_allclose(table["change from previous pair"], [-0.5, -0.5])
    np.testing.assert_allclose(table["adjacent similarity"], [0.3, 0.2])


def test_seed_verdict_thresholds():
    from utils.metrics.subspaces import alignment_verdict, convergence_verdict, overlap_statistics, overlap_verdict

    L = 9
    i, j = np.indices((L, L))
    assert overlap_verdict(overlap_statistics(np.exp(-np.abs(i - j)), 3), 0.1)[0] == "phase structure"
    assert overlap_verdict(overlap_statistics(np.full((L, L), 0.8), 3), 0.1)[0] == "uniformly high"
    assert overlap_verdict(overlap_statistics(np.full((L, L), 0.3), 3), 0.1)[0] == "moderate"
    assert convergence_verdict(0.5, -0.5)[0] == "convergence point"
    assert convergence_verdict(0.5, 0.1)[0] == "partial"
    assert convergence_verdict(0.2, -0.9)[0] == "no clear pattern"
    assert convergence_verdict(np.nan, -0.9)[0] == "not testable"
    assert [alignment_verdict(r)[0] for r in (1.6, 1.5, 0.7, 0.69)] == ["coupled", "near chance", "near chance", "avoidance"]
