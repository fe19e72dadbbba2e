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
