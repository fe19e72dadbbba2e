"""CKA, logit lens, drift and activation spectra: invariances and independent references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils import load_model
from utils.engine.activations import collect_activations
from utils.engine.corpus import TokenSample
from utils.engine.representations import Drift, LogitLens, activation_spectra, residual_eigenvalues
from utils.metrics.cka import cka_blocks, cka_matrix, cka_sample_warning, linear_cka

from .conftest import tiny_causal_models, tiny_model_ids, tiny_models


def _gram_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    """Reference straight from the definitions, with n x n Gram matrices."""
    n = X.shape[0]
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        if not debiased:
            H = np.eye(n) - 1.0 / n
            return np.trace(A @ H @ B @ H)
        A, B = A - np.diag(np.diag(A)), B - np.diag(np.diag(B))
        one = np.ones(n)
        return (np.trace(A @ B) + one @ A @ one * (one @ B @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ A @ B @ one) / (n * (n - 3))

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)) + 3.0  # non-centred on purpose
    Y = X @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(60, 7))
    return X, Y


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariances_and_gram_reference(data, debiased):
    X, Y = data
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    value = linear_cka(X, Y, debiased)
    assert linear_cka(X, X, debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X @ Q, Y, debiased) == pytest.approx(value, abs=1e-10)
    assert linear_cka(7.5 * X, 0.01 * Y, debiased) == pytest.approx(value, abs=1e-10)
    assert linear_cka(Y, X, debiased) == pytest.approx(value, abs=1e-12)
    assert value == pytest.approx(_gram_cka(X - X.mean(0), Y - Y.mean(0), debiased), abs=1e-10)
    if debiased:  # the U-statistic is translation invariant even without centring
        assert value == pytest.approx(_gram_cka(X, Y, True), abs=1e-8)


def test_debiased_cka_near_zero_for_independent_data_where_biased_is_inflated():
    rng = np.random.default_rng(2)
    n, d = 200, 100
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    biased, unbiased = linear_cka(X, Y), linear_cka(X, Y, debiased=True)
    assert abs(unbiased) < 0.03
    assert biased > 0.3  # ~ d / n for independent Gaussians
    assert cka_sample_warning(n, d, debiased=False) and cka_sample_warning(n, d, debiased=True) is None


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_matches_pairwise(debiased):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(80, 10))
    layers = np.stack([base @ rng.normal(size=(10, 10)) + k * rng.normal(size=(80, 10)) for k in range(4)])
    M = cka_matrix(torch.tensor(layers, dtype=torch.float32), debiased)
    assert M.shape == (4, 4) and np.allclose(M, M.T)
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-6)
    for i in range(4):
        for j in range(4):
            assert M[i, j] == pytest.approx(linear_cka(layers[i], layers[j], debiased), abs=1e-5)


def test_cka_blocks():
    M = np.ones((6, 6))
    adjacent = [0.95, 0.92, 0.3, 0.99, 0.5]
    for i, v in enumerate(adjacent):
        M[i, i + 1] = M[i + 1, i] = v
    assert cka_blocks(M, 0.9) == [(0, 2), (3, 4), (5, 5)]
    assert cka_blocks(M, 0.2) == [(0, 5)]


def _tokens(n=4, S=16) -> TokenSample:
    g = torch.Generator().manual_seed(0)
    return TokenSample(input_ids=torch.randint(3, 256, (n, S), generator=g), corpus="random", seed=0)


@pytest.mark.parametrize("params", tiny_causal_models, ids=[i for i in tiny_model_ids if i != "tiny-bert"])
def test_logit_lens_final_layer_is_the_model(params):
    loaded = load_model(params)
    tokens = _tokens()
    lens = LogitLens(loaded.adapter, tuple(tokens.input_ids.shape), max_logit_elements=256 * 7)
    assert lens.chunk == 7  # logits are built 7 tokens at a time
    collect_activations(loaded, tokens, batch_size=3, cache=False, consumers=[lens])
    df = lens.result()
    L = loaded.dims.L
    assert list(df.layer) == list(range(L + 1)) and (df.n_tokens == 4 * 15).all()
    with torch.no_grad():
        out = loaded.model(tokens.input_ids, labels=tokens.input_ids, output_hidden_states=True)
    last = df.iloc[-1]
    assert last.agreement == 1.0 and last.kl_to_final == pytest.approx(0.0, abs=1e-9)
    assert last.cross_entropy == pytest.approx(float(out.loss), rel=1e-5)
    # Layer 0 against a direct full-logits computation from HF hidden_states[0].
    with torch.no_grad():
        z = loaded.adapter.logits(loaded.adapter.apply_final_norm(out.hidden_states[0]))[:, :-1].reshape(-1, 256)
    zf = out.logits[:, :-1].reshape(-1, 256)
    tgt = tokens.input_ids[:, 1:].reshape(-1)
    logp, logp_f = z.log_softmax(-1).double(), zf.log_softmax(-1).double()
    p = logp.exp()
    ranks = (z > z.gather(1, tgt[:, None])).sum(1) + 1
    first = df.iloc[0]
    assert first.entropy == pytest.approx(float(-(p * logp).sum(1).mean()), rel=1e-5)
    assert first.top1_prob == pytest.approx(float(p.max(1).values.mean()), rel=1e-5)
    assert first.cross_entropy == pytest.approx(float(-logp.gather(1, tgt[:, None]).mean()), rel=1e-5)
    assert first.kl_to_final == pytest.approx(float((logp_f.exp() * (logp_f - logp)).sum(1).mean()), rel=1e-4)
    assert first.agreement == pytest.approx(float((z.argmax(1) == zf.argmax(1)).double().mean()))
    assert first.median_rank == float(np.median(ranks.numpy()))
    assert ((df.top1_prob > 0) & (df.top1_prob <= 1)).all() and (df.entropy >= 0).all()
    assert (df.entropy <= np.log(256) + 1e-6).all() and ((df.agreement >= 0) & (df.agreement <= 1)).all()


def test_logit_lens_subsample_and_encoder():
    loaded = load_model(tiny_causal_models[0])
    lens = LogitLens(loaded.adapter, (4, 16), n_positions=10, seed=1)
    assert lens.positions.numel() == 10 and bool((lens.positions % 16 != 15).all())
    bert = load_model(tiny_models[tiny_model_ids.index("tiny-bert")])
    with pytest.raises(ValueError, match="no LM head"):
        LogitLens(bert.adapter, (4, 16))


@pytest.mark.parametrize("params", tiny_models, ids=tiny_model_ids)
def test_drift_and_spectra_against_hidden_states(params):
    loaded = load_model(params)
    tokens = _tokens()
    adapter = loaded.adapter
    drift = Drift(has_final_norm=adapter.final_norm is not None)
    stats = collect_activations(loaded, tokens, batch_size=3, cache=False, consumers=[drift])
    df = drift.result()
    L = loaded.dims.L
    with torch.no_grad():
        hs = loaded.model(tokens.input_ids, output_hidden_states=True).hidden_states
    pre_norm_last = hs[L] if adapter.final_norm is None else None
    if pre_norm_last is None:  # the last block output, pre-norm: the only state HF does not return
        got = {}
        h = adapter.block(L - 1).register_forward_hook(lambda m, i, o: got.__setitem__("x", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            loaded.model(tokens.input_ids)
        h.remove()
        pre_norm_last = got["x"]
    states = [hs[j] for j in range(L)] + [pre_norm_last] + ([hs[L]] if adapter.final_norm is not None else [])
    flat = [s.reshape(-1, s.shape[-1]).double() for s in states]
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()) for a, b in zip(flat, flat[1:])]
    l2 = [float((b - a).norm(dim=-1).mean()) for a, b in zip(flat, flat[1:])]
    assert len(df) == len(cos) and list(df.layer) == list(range(1, len(cos) + 1))
    np.testing.assert_allclose(df.cosine, cos, rtol=1e-6)
    np.testing.assert_allclose(df.l2, l2, rtol=1e-6)
    assert (df.step.iloc[-1] == "final_norm") == (adapter.final_norm is not None)
    spectra, eigs = activation_spectra(residual_eigenvalues(stats))
    assert list(spectra.layer) == list(range(L + 1)) and len(eigs) == L + 1
    d = loaded.dims.d
    assert ((spectra.eff_rank >= 1) & (spectra.eff_rank <= d)).all()
    assert ((spectra.n90 >= 1) & (spectra.n90 <= d)).all()
    lam = np.linalg.eigvalsh(np.cov(flat[0].numpy(), rowvar=False))[::-1].clip(0)
    p = lam / lam.sum()
    assert spectra.eff_rank[0] == pytest.approx(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-6)
    assert spectra.participation_ratio[0] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-6)
    assert isinstance(spectra, pd.DataFrame)
