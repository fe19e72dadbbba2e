"""Spectral metrics against closed forms, invariances and straightforward references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.metrics.spectra import (
    components_for_variance,
    early_eigenvalue_enrichment,
    effective_rank,
    fit_power_law,
    js_divergence,
    marchenko_pastur_edge,
    mp_signal_ratio,
    participation_ratio,
    power_law_slope,
    rank_slope,
    singular_values,
    spectral_entropy,
    stable_rank,
    weight_metrics,
)

rng = np.random.default_rng(0)


def _orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# --- singular values and effective rank ---------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 40), (120, 30), (30, 120), (2000, 16)])
def test_singular_values_match_svd(shape):
    W = torch.randn(*shape, dtype=torch.float64)
    assert torch.allclose(singular_values(W), torch.linalg.svdvals(W), rtol=1e-8, atol=1e-10)


def test_effective_rank_closed_forms():
    assert effective_rank(torch.eye(50)) == pytest.approx(50.0)
    assert effective_rank(3.7 * torch.eye(50)) == pytest.approx(50.0)
    u, v = torch.randn(40, 1), torch.randn(1, 30)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-5)
    # Two equal singular values and the rest zero: exp(ln 2) = 2.
    assert effective_rank(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)


def test_effective_rank_invariances_and_reference():
    W = torch.randn(60, 40, dtype=torch.float64)
    ref_s = np.linalg.svd(W.numpy(), compute_uv=False)
    p = ref_s / ref_s.sum()
    reference = math.exp(-(p * np.log(p)).sum())  # seed 1.py formula, numpy
    assert effective_rank(W) == pytest.approx(reference, rel=1e-9)
    assert effective_rank(5.0 * W) == pytest.approx(reference, rel=1e-9)
    rotated = _orthogonal(60, 1) @ W @ _orthogonal(40, 2)
    assert effective_rank(rotated) == pytest.approx(reference, rel=1e-8)
    assert 1.0 <= reference <= 40.0


def test_stable_rank():
    assert stable_rank(np.ones(10)) == pytest.approx(10.0)
    assert stable_rank(np.array([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    W = torch.randn(30, 20, dtype=torch.float64)
    ref = (torch.linalg.matrix_norm(W) ** 2 / torch.linalg.matrix_norm(W, 2) ** 2).item()
    assert stable_rank(singular_values(W)) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError):
        stable_rank(np.zeros(4))


def test_metrics_reject_bad_spectra():
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="zero"):
        spectral_entropy(np.zeros(5))


# --- power law ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1.8, 2.5, 4.0])
def test_power_law_recovers_pareto_exponent(alpha):
    """Pareto samples with p(x) ~ x^-alpha above xmin = 1 (inverse-CDF sampling)."""
    u = np.random.default_rng(1).random(4000)
    x = (1 - u) ** (-1.0 / (alpha - 1.0))
    fit = fit_power_law(x)
    assert fit.alpha == pytest.approx(alpha, rel=0.08)
    assert fit.ks_distance < 0.05


def _one_sided_reference(x: np.ndarray) -> tuple[float, float]:
    """Straightforward loop over WeightWatcher's candidates (every eigenvalue but the largest) with
    its one-sided KS distance; returns (alpha, D) of the first minimal D."""
    x = np.sort(x)
    best = (np.inf, None)
    for i in range(x.size - 1):
        tail = x[i:]
        a = 1 + tail.size / np.log(tail / x[i]).sum()
        ks = np.abs(1 - (tail / x[i]) ** (1 - a) - np.arange(tail.size) / tail.size).max()
        if ks < best[0]:
            best = (ks, a)
    return best[1], best[0]


def test_power_law_matches_brute_force_reference():
    x = np.random.default_rng(2).lognormal(size=300)
    alpha, ks = _one_sided_reference(x)
    fit = fit_power_law(x)
    assert fit.ks_distance == pytest.approx(ks, rel=1e-10)
    assert fit.alpha == pytest.approx(alpha, rel=1e-10)
    assert fit_power_law(7.0 * x).alpha == pytest.approx(fit.alpha)  # scale invariant
    assert fit_power_law(rng.permutation(x)).alpha == fit.alpha  # order of the input is irrelevant


@pytest.mark.parametrize("n, seed", [(12, 0), (19, 1), (20, 2), (64, 3), (600, 4), (3000, 5)])
def test_power_law_equals_weightwatcher_wwfit(n, seed):
    """The fit itself against weightwatcher's WWFit (small-N path below 20 eigenvalues)."""
    ww_powerlaw = pytest.importorskip("weightwatcher.WW_powerlaw")
    g = np.random.default_rng(seed)
    x = np.linalg.svd(g.standard_t(3, size=(n + 40, n)), compute_uv=False) ** 2
    ref = ww_powerlaw.WWFit(np.sort(x))
    fit = fit_power_law(x)
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-10)
    assert fit.xmin == ref.xmin and fit.ks_distance == pytest.approx(ref.D, rel=1e-10)


def test_power_law_drops_eigenvalues_at_weightwatchers_threshold():
    x = np.random.default_rng(6).lognormal(size=200)
    with_zeros = np.concatenate([x, np.zeros(30), np.full(5, 1e-6)])
    assert fit_power_law(with_zeros).alpha == fit_power_law(x).alpha
    with pytest.raises(ValueError, match="at least 2 eigenvalues"):
        fit_power_law(np.array([1.0, 0.0, 1e-7]))


def _ww_analyze(model: torch.nn.Module):
    ww = pytest.importorskip("weightwatcher")
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return ww.WeightWatcher(model=model).analyze()


def test_weight_metrics_alpha_equals_weightwatcher_analyze():
    """weight_metrics' alpha against WW's analyze() on a torch model of heavy-tailed matrices of
    several shapes, including fewer than 20 eigenvalues (small-N path) and fewer than 8 (skipped)."""
    torch.manual_seed(7)  # StudentT samples from the global generator
    shapes = [(300, 120), (64, 256), (40, 15), (9, 30), (50, 6)]
    layers = []
    for rows, cols in shapes:
        layer = torch.nn.Linear(cols, rows, bias=False)
        t = torch.distributions.StudentT(torch.tensor(2.5)).sample((rows, cols))
        layer.weight.data = t.float()
        layers.append(layer)
    details = _ww_analyze(torch.nn.Sequential(*layers))
    ours = [weight_metrics(layer.weight)["alpha"] for layer in layers]
    assert len(details) == 4 and np.isnan(ours[-1])  # (50, 6): WW's min_evals = 8 skips it
    np.testing.assert_allclose(ours[:4], details.alpha.to_numpy(dtype=float), rtol=1e-6)


def test_weight_metrics_alpha_equals_weightwatcher_on_smollm2():
    """Real weights: a few SmolLM2-135M matrices of every shape, as torch Linear layers for WW."""
    from utils import load_model

    adapter = load_model("smollm2-135m").adapter
    mats = [adapter.weight_matrices(layer)[name] for layer, name in [(0, "q"), (5, "k"), (12, "ffn_gate"), (29, "ffn_out")]]
    layers = []
    for W in mats:
        layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        layer.weight.data = W.detach().float().clone()
        layers.append(layer)
    details = _ww_analyze(torch.nn.Sequential(*layers))
    ours = [weight_metrics(W)["alpha"] for W in mats]
    np.testing.assert_allclose(ours, details.alpha.to_numpy(dtype=float), rtol=1e-6)


# --- rank slope (Prisma's exponent) -------------------------------------------------------------

@pytest.mark.parametrize("b", [0.3, 1.0, 2.5])
def test_rank_slope_closed_form(b):
    k = np.arange(1, 401, dtype=float)
    s = 3.0 * k**-b
    assert rank_slope(s) == pytest.approx(b, rel=1e-12)  # default window 1..200
    assert rank_slope(s, first=10, last=50) == pytest.approx(b, rel=1e-12)
    assert rank_slope(rng.permutation(s) * 7.0) == pytest.approx(b, rel=1e-12)  # order and scale
    assert rank_slope(np.ones(50)) == pytest.approx(0.0, abs=1e-12)


def test_rank_slope_window_is_the_upper_half():
    k = np.arange(1, 101, dtype=float)
    s = np.where(k <= 50, k**-0.5, 50**-0.5 * (k / 50) ** -3.0)  # a steep lower half is left out
    assert rank_slope(s) == pytest.approx(0.5, rel=1e-12)
    assert rank_slope(s, last=100) > 0.5
    with pytest.raises(ValueError, match="rank window"):
        rank_slope(s, first=5, last=101)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0])
def test_rank_slope_of_a_power_law_density_is_one_over_two_alpha_minus_one(alpha):
    """Pareto eigenvalues lambda with density ~ lambda^-alpha: singular values sqrt(lambda) fall
    with rank as k^(-1 / (2 (alpha - 1))) (Zipf), the bridge between the two exponents."""
    u = np.random.default_rng(8).random(20000)
    lam = (1 - u) ** (-1.0 / (alpha - 1.0))
    assert rank_slope(np.sqrt(lam), first=10, last=2000) == pytest.approx(1 / (2 * (alpha - 1)), rel=0.05)


# --- Marchenko-Pastur ---------------------------------------------------------------------------

def test_marchenko_pastur_edge_bounds_noise():
    N, M, sigma = 800, 200, 0.3
    W = torch.randn(N, M, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * sigma
    s = singular_values(W)
    edge = marchenko_pastur_edge(N, M, sigma)
    assert s[0].item() == pytest.approx(edge, rel=0.05)
    assert mp_signal_ratio(s, N, M, sigma * 1.05) == 0.0
    spiked = W + 20 * torch.randn(N, 1, dtype=torch.float64) @ torch.randn(1, M, dtype=torch.float64) / math.sqrt(N * M) * math.sqrt(N)
    assert mp_signal_ratio(singular_values(spiked), N, M, sigma) == pytest.approx(1 / M)


def test_weight_metrics_bounds():
    m = weight_metrics(torch.randn(96, 64))
    assert 1 <= m["eff_rank"] <= 64 and 1 <= m["stable_rank"] <= m["eff_rank"] + 64
    assert 0 <= m["mp_signal_ratio"] <= 1 and m["alpha"] > 1
    assert m["singular_values"].shape == (64,)


# --- NerVE metrics (section 2) -----------------------------------------------------------------

@pytest.mark.parametrize("D", [2, 7, 768])
def test_nerve_closed_forms(D):
    uniform = np.full(D, 3.0)
    assert spectral_entropy(uniform) == pytest.approx(math.log(D))
    assert participation_ratio(uniform) == pytest.approx(D)
    assert early_eigenvalue_enrichment(uniform) == pytest.approx(0.0, abs=1e-12)
    one = np.zeros(D)
    one[0] = 5.0
    assert spectral_entropy(one) == pytest.approx(0.0)
    assert participation_ratio(one) == pytest.approx(1.0)
    assert early_eigenvalue_enrichment(one) == pytest.approx((D - 1) / D)  # eq. (3) divides by D/2


def test_nerve_scale_invariance_and_order():
    eigs = np.random.default_rng(4).exponential(size=100)
    for f in (spectral_entropy, participation_ratio, early_eigenvalue_enrichment):
        assert f(eigs * 123.0) == pytest.approx(f(eigs))
        assert f(eigs[::-1]) == pytest.approx(f(eigs))  # sorted internally
    assert js_divergence(eigs, 9.0 * eigs) == pytest.approx(0.0, abs=1e-12)


def test_eee_figure2_ordering():
    """NerVE figure 2: the more dimensions carry variance, the lower EEE (D = 768)."""
    D = 768
    values = []
    for fraction in (0.01, 0.1, 0.5, 0.99):
        k = max(1, int(fraction * D))
        eigs = np.r_[np.ones(k), np.zeros(D - k)]
        values.append(early_eigenvalue_enrichment(eigs))
    assert all(a > b for a, b in zip(values, values[1:]))
    # k of D equal eigenvalues: sum_k (S_k - k/D) = (D - k)/2, so EEE = 1 - k/D exactly.
    for k in (1, 77, D):
        assert early_eigenvalue_enrichment(np.r_[np.ones(k), np.zeros(D - k)]) == pytest.approx(1 - k / D, abs=1e-12)


def test_eee_matches_equation_3():
    """NerVE eq. (3) as written: 2 * sum_k (S_k - k/D) / D, a plain loop."""
    eigs = np.sort(np.random.default_rng(5).exponential(size=50))[::-1]
    D = eigs.size
    p = eigs / eigs.sum()
    eq3 = 2.0 * sum(p[:k].sum() - k / D for k in range(1, D + 1)) / D
    assert early_eigenvalue_enrichment(eigs) == pytest.approx(eq3, rel=1e-12)
    assert early_eigenvalue_enrichment([4.0]) == 0.0  # D = 1: S_1 = 1/1


def test_js_bounds_and_reference():
    # Disjoint supports reach ln 2; rank matching (NerVE) sorts both first, so they coincide.
    assert js_divergence([1.0, 0.0], [0.0, 1.0], rank_matched=False) == pytest.approx(math.log(2))
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert js_divergence([1.0, 1.0, 0, 0], [0, 0, 2.0, 2.0], rank_matched=False) == pytest.approx(math.log(2))
    p = np.random.default_rng(6).exponential(size=30)
    q = np.random.default_rng(7).exponential(size=30)
    pn, qn = np.sort(p)[::-1] / p.sum(), np.sort(q)[::-1] / q.sum()
    m = (pn + qn) / 2
    reference = 0.5 * (pn * np.log(pn / m)).sum() + 0.5 * (qn * np.log(qn / m)).sum()
    assert js_divergence(p, q) == pytest.approx(reference)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert 0 <= js_divergence(p, q) <= math.log(2)


def test_participation_ratio_reference():
    eigs = np.random.default_rng(8).exponential(size=64)
    assert participation_ratio(eigs) == pytest.approx(eigs.sum() ** 2 / (eigs**2).sum())
    assert 1 <= participation_ratio(eigs) <= 64


def test_components_for_variance_and_slope():
    assert components_for_variance(np.ones(10), 0.9) == 9
    assert components_for_variance(np.r_[10.0, np.ones(9) * 1e-6], 0.9) == 1
    k = np.arange(1, 201)
    assert power_law_slope(k**-1.5, 10, 150) == pytest.approx(-1.5)


def test_nerve_metrics_bundle():
    from utils.metrics.spectra import nerve_metrics

    pre = np.r_[10.0, np.ones(9) * 0.1]
    post = np.ones(10)
    m = nerve_metrics(pre, post)
    assert m["se_post"] == pytest.approx(math.log(10)) and m["pr_post"] == pytest.approx(10)
    assert m["eee_post"] == pytest.approx(0.0, abs=1e-12) and m["se_pre"] < m["se_post"]
    assert m["js"] == pytest.approx(js_divergence(pre, post))
