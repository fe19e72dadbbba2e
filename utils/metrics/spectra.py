"""Metrics on singular values and eigenvalues.

Every function takes a 1-D spectrum (or a matrix where stated) and returns a float.
Spectra may be torch tensors or numpy arrays; they are converted to float64 numpy.

References
- effective rank: Roy & Vetterli (2007), as used in the seed notebook `1.py`:
  exp(H(p)), p_i = s_i / sum_j s_j over singular values s.
- stable rank: ||W||_F^2 / ||W||_2^2 = sum s_i^2 / max s_i^2.
- power-law alpha: WeightWatcher 0.7.7's fit (Martin & Mahoney 2021; `weightwatcher`'s
  `WW_powerlaw.WWFit`): continuous MLE (Clauset, Shalizi & Newman 2009) on the eigenvalues s_i^2,
  xmin minimising a one-sided Kolmogorov-Smirnov distance over every eigenvalue but the largest.
- rank slope: minus the least-squares slope of log s_k on log k (the "alpha ~ 0.3" of the Prisma
  write-up); for a power-law tail p(lambda) ~ lambda^-alpha of lambda = s^2, s_k ~ k^(-1/(2(alpha - 1))).
- Marchenko-Pastur: bulk edge of the singular values of an N x M noise matrix with i.i.d.
  entries of variance sigma^2 is sigma (sqrt(N) + sqrt(M)).
- NerVE metrics (spectral entropy, participation ratio, early eigenvalue enrichment,
  Jensen-Shannon divergence): NerVE section 2, eqs. (2)-(6), natural logarithms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from utils.machine import lapack_threads

ArrayLike = "np.ndarray | torch.Tensor"


def as_spectrum(values) -> np.ndarray:
    """A float64 numpy copy of a spectrum, sorted in descending order, negatives clipped to 0.

    Covariance eigenvalues from `eigvalsh` can be slightly negative in floating point;
    they are PSD in exact arithmetic, so clipping at 0 is the correct projection.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    spectrum = np.asarray(values, dtype=np.float64).ravel()
    if spectrum.size == 0:
        raise ValueError("empty spectrum")
    if not np.all(np.isfinite(spectrum)):
        raise ValueError("spectrum contains NaN or infinite values")
    return np.sort(np.clip(spectrum, 0.0, None))[::-1]


def normalized(values) -> np.ndarray:
    """p_i = lambda_i / sum_j lambda_j (descending). Raises on an all-zero spectrum."""
    spectrum = as_spectrum(values)
    total = spectrum.sum()
    if total <= 0:
        raise ValueError("spectrum sums to zero; metrics are undefined for a zero matrix")
    return spectrum / total


def entropy(p: np.ndarray) -> float:
    """Shannon entropy -sum p log p (natural log), with 0 log 0 = 0."""
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def _row_blocks(X: torch.Tensor, block_bytes: int = 64 << 20):
    """Consecutive row blocks of X (rows, cols) as float64 copies of at most ~block_bytes each."""
    step = max(1, block_bytes // (8 * max(X.shape[1], 1)))
    for start in range(0, X.shape[0], step):
        yield X[start : start + step].to(torch.float64)


def gram_matrix(W: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of W (W^T W for tall W, W W^T for wide W), float64, summed over
    float64 row blocks of the long side: sum_b X_b^T X_b. Never holds a float64 copy of W
    (a 128k x 2048 bf16 embedding is 0.5 GB; its float64 copy would be 2 GB)."""
    X = W.detach()
    if X.shape[0] < X.shape[1]:
        X = X.T  # (long, short), a view
    gram = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
    for block in _row_blocks(X):
        gram.addmm_(block.T, block)
    return gram


def entry_std(W: torch.Tensor) -> float:
    """Sample standard deviation of the entries of W (as torch.std, Bessel-corrected), two
    passes over float64 row blocks."""
    X = W.detach().reshape(W.shape[0], -1)
    n = X.numel()
    mean = sum(float(b.sum()) for b in _row_blocks(X)) / n
    return math.sqrt(sum(float(((b - mean) ** 2).sum()) for b in _row_blocks(X)) / max(n - 1, 1))


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D weight, descending, float64 on the CPU.

    Computed as the square roots of the eigenvalues of the smaller Gram matrix W^T W (or W W^T),
    accumulated in float64: exact algebra, and several times cheaper than an SVD (for the
    262,144 x 640 Gemma 3 embedding, far cheaper). Squaring costs relative precision only for
    singular values below ~1e-7 of the largest, which no metric here resolves; tests compare
    with `torch.linalg.svdvals`.
    """
    if W.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(W.shape)}")
    gram = gram_matrix(W)  # (short, short)
    with lapack_threads(gram.shape[0]):
        eigenvalues = torch.linalg.eigvalsh(gram)
    return eigenvalues.flip(0).clamp_min(0.0).sqrt().cpu()


# --- metrics on singular values -------------------------------------------------------------

def effective_rank(W_or_singular_values) -> float:
    """exp of the entropy of the normalised singular values (seed `1.py` definition).

    Accepts a matrix (its singular values are taken) or a 1-D vector of singular values.
    In [1, min(rows, cols)]: 1 for rank one, min(rows, cols) for a multiple of an isometry.
    """
    x = W_or_singular_values
    if isinstance(x, torch.Tensor) and x.ndim == 2:
        x = singular_values(x)
    elif isinstance(x, np.ndarray) and x.ndim == 2:
        x = np.linalg.svd(x, compute_uv=False)
    return math.exp(entropy(normalized(x)))


def stable_rank(singular_vals) -> float:
    """sum s_i^2 / max s_i^2 = ||W||_F^2 / ||W||_2^2, in [1, rank]."""
    s = as_spectrum(singular_vals)
    if s[0] <= 0:
        raise ValueError("stable rank is undefined for a zero matrix")
    return float((s**2).sum() / s[0] ** 2)


def spectral_norm(singular_vals) -> float:
    """Largest singular value ||W||_2."""
    return float(as_spectrum(singular_vals)[0])


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float  # exponent of p(x) ~ x^-alpha for x >= xmin
    xmin: float
    ks_distance: float  # WeightWatcher's one-sided KS distance D of the chosen xmin
    n_tail: int  # eigenvalues in the fitted tail (candidate index to the largest)


# WeightWatcher 0.7.7 defaults (weightwatcher/constants.py, RMT_Util.py on a CPU machine).
WW_EVALS_THRESH = 1e-5  # eigenvalues at or below this are dropped before the fit (EVALS_THRESH)
WW_MIN_EVALS = 8  # analyze() skips matrices with min(rows, cols) below this (DEFAULT_MIN_EVALS)
WW_SMALL_N = 20  # below this many eigenvalues, WWFit.fit_powerlaw_smallN (SMALL_N_CUTOFF)
_BLOCK_ELEMENTS = 1 << 16  # candidates x tail entries per block (512 kB of float64: stays in cache)


def fit_power_law(eigenvalues, threshold: float = WW_EVALS_THRESH) -> PowerLawFit:
    """WeightWatcher's power-law fit of an empirical spectral density (Martin & Mahoney 2021),
    exactly as `weightwatcher` 0.7.7 `analyze()` computes `alpha` with its defaults
    (`pl_package="ww"`, `xmax=None`, `fix_fingers=False`, power law rather than truncated):

    - x: the eigenvalues above `threshold` (WW's absolute EVALS_THRESH = 1e-5), ascending, x_0..x_{N-1};
      for a weight matrix, the unnormalised eigenvalues sigma_i^2 of W^T W (WW no longer divides by N).
    - every eigenvalue but the largest is an xmin candidate: for x_i, i = 0..N-2, with n = N - i,
          alpha_i = 1 + n / sum_{j>=i} log(x_j / x_i)                       (continuous MLE)
          D_i = max_{j>=i} |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n|   (one-sided KS: the
      empirical CDF only at its lower steps 0, 1/n, ..., (n-1)/n; Clauset et al. 2009 take the
      larger of both steps). The first i with the smallest D_i wins.
    - with N < 20 eigenvalues, WW's small-N variant (`_fit_small_n`).

    Vectorised over candidates in blocks of `_BLOCK_ELEMENTS` entries, so memory stays bounded
    for any spectrum length. Scale invariant apart from the absolute threshold.
    """
    x = np.sort(as_spectrum(eigenvalues))
    x = x[x > threshold]
    N = x.size
    if N < 2:
        raise ValueError(f"need at least 2 eigenvalues above {threshold:g} for a power-law fit, got {N}")
    if N < WW_SMALL_N:
        return _fit_small_n(x)
    logx = np.log(x)
    n_tail = N - np.arange(N - 1)  # (N-1,) tail sizes of the candidates x_0..x_{N-2}
    suffix = np.cumsum(logx[::-1])[::-1]  # suffix[i] = sum_{j>=i} log x_j
    with np.errstate(divide="ignore"):
        alphas = 1.0 + n_tail / (suffix[:-1] - n_tail * logx[:-1])  # (N-1,) as WW writes it
    ks = np.ones(N - 1)  # WW leaves D = 1 where alpha <= 1
    # Skewed layout: row i, column c holds x_{i+c}; past the end log x = +inf, where the model CDF
    # is 1 and the empirical step min(c/n, 1) is 1, so padding never raises the maximum.
    padded = np.concatenate([logx, np.full(N, np.inf)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, N)  # (N+1, N) view, no copy
    rows = max(1, _BLOCK_ELEMENTS // N)
    for a in range(0, N - 1, rows):
        b = min(a + rows, N - 1)
        width = N - a  # longest tail in the block
        alpha, n = alphas[a:b], n_tail[a:b]
        ok = np.isfinite(alpha) & (alpha > 1)
        if not ok.any():
            continue
        rel = windows[a:b, :width][ok] - logx[a:b, None][ok]  # (block, width) log(x_{i+c} / x_i)
        steps = np.minimum(np.arange(width)[None, :] / n[ok, None], 1.0)  # empirical CDF (c / n)
        distance = np.abs((1.0 - steps) - np.exp((1.0 - alpha[ok, None]) * rel))
        ks[a:b][ok] = distance.max(axis=1)
    best = int(np.argmin(ks))
    return PowerLawFit(float(alphas[best]), float(x[best]), float(ks[best]), int(n_tail[best]))


def _fit_small_n(x: np.ndarray, k_min: int = 8) -> PowerLawFit:
    """WeightWatcher's small-N path (fewer than 20 eigenvalues), x ascending, as it runs end to
    end: `WWFit.fit_powerlaw_smallN` computes, for tails of at least `k_min` points, the
    bias-corrected MLE alpha_i = 1 + (n - 1) / sum_{j>=i} log(x_j / x_i) and D_i as in
    `fit_power_law` (other candidates keep D = 1); `WWFit.__init__` then takes the first
    candidate with the smallest D_i (its own J_i = D_i - 0.868 / sqrt(n) choice is overwritten).
    No admissible candidate: the whole sample (i = 0). A constant spectrum has no fit (NaN;
    WW reports 0 there)."""
    N = x.size
    logx = np.log(x)
    ks = np.ones(N - 1)
    alphas = np.full(N - 1, np.nan)
    for i in range(N - 1):
        n = N - i
        s = float(logx[i:].sum() - n * logx[i])
        if n < k_min or s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n - 1.0) / s
        ks[i] = np.abs(np.arange(n) / n - (1.0 - np.exp((1.0 - alphas[i]) * (logx[i:] - logx[i])))).max()
    if np.isnan(alphas).all():  # WW's fallback: the whole sample as the tail
        s = float(logx.sum() - N * logx[0])
        if s <= 1e-12:
            return PowerLawFit(float("nan"), float(x[0]), 1.0, N)
        alphas[0] = 1.0 + (N - 1.0) / s
        ks[0] = np.abs(np.arange(N) / N - (1.0 - np.exp((1.0 - alphas[0]) * (logx - logx[0])))).max()
    best = int(np.argmin(ks))
    return PowerLawFit(float(alphas[best]), float(x[best]), float(ks[best]), N - best)


RANK_SLOPE_TOP_FRACTION = 0.5  # rank_slope's default window: ranks 1..floor(r/2) of r singular values


def rank_slope(singular_vals, first: int = 1, last: int | None = None) -> float:
    """Decay exponent of singular values against rank: b such that s_k ~ k^-b, the least-squares
    slope of log s_k on log k over ranks k = first..last (1-based, inclusive), sign flipped.

    Default window: the upper half of the spectrum, k = 1..floor(r / 2) for r singular values. The
    lower half is left out because near rank r of a square-ish matrix s_k falls towards the hard
    edge 0, where log s_k dives and would dominate a fit over all ranks (most points of an
    equally weighted fit lie at large k). s_k = c k^-b gives b on any window. Zero singular
    values in the window are skipped.

    This is the exponent the Prisma write-up calls alpha (0.25-0.35). It is not WeightWatcher's
    alpha: if the eigenvalues lambda = s^2 have a power-law tail p(lambda) ~ lambda^-alpha, their
    rank-ordered values fall as lambda_k ~ k^(-1/(alpha - 1)) (Zipf), so over that tail
    b = 1 / (2 (alpha - 1)), alpha = 1 + 1 / (2 b).
    """
    s = as_spectrum(singular_vals)
    r = s.size
    if last is None:
        last = max(int(r * RANK_SLOPE_TOP_FRACTION), 2)
    if not 1 <= first < last <= r:
        raise ValueError(f"rank window {first}..{last} must satisfy 1 <= first < last <= {r} (the number of singular values)")
    return -power_law_slope(s, first - 1, last)


def marchenko_pastur_edge(rows: int, cols: int, sigma: float) -> float:
    """Largest singular value of an rows x cols matrix of i.i.d. noise of std sigma
    (asymptotically): sigma * (sqrt(rows) + sqrt(cols))."""
    return float(sigma * (math.sqrt(rows) + math.sqrt(cols)))


def mp_signal_ratio(singular_vals, rows: int, cols: int, sigma: float) -> float:
    """Fraction of singular values above the Marchenko-Pastur bulk edge (Prisma's signal ratio).

    sigma is the entry standard deviation of the matrix; with sigma estimated from the matrix
    itself (see `weight_metrics`), signal directions inflate it, so the ratio is conservative.
    """
    s = as_spectrum(singular_vals)
    return float((s > marchenko_pastur_edge(rows, cols, sigma)).mean())


def weight_metrics(W: torch.Tensor) -> dict:
    """All per-matrix weight metrics of notebook 01 from one Gram eigendecomposition.

    Returns rows, cols, eff_rank, stable_rank, spectral_norm, fro_norm, alpha (WeightWatcher's
    power-law exponent of the eigenvalues s^2: `fit_power_law`; NaN where WW's analyze() skips
    the matrix, min(rows, cols) < 8, or fewer than 2 eigenvalues pass its threshold), alpha_xmin,
    alpha_ks (WW's KS distance D), rank_slope (`rank_slope`, default window), mp_edge,
    mp_signal_ratio, and the singular values themselves under `singular_values` (numpy, descending).
    """
    rows, cols = W.shape
    return spectrum_weight_metrics(singular_values(W), rows, cols, entry_std(W))


def spectrum_weight_metrics(singular_vals, rows: int, cols: int, sigma: float) -> dict:
    """`weight_metrics` of a rows x cols matrix given its singular values and entry standard
    deviation sigma (for matrices known through factors, such as a LoRA update B A), plus the
    power-law fit itself under `fit` (a `PowerLawFit`, or None where WW skips the matrix)."""
    s = as_spectrum(singular_vals)
    fit = None
    if min(rows, cols) >= WW_MIN_EVALS and (s**2 > WW_EVALS_THRESH).sum() >= 2:
        fit = fit_power_law(s**2)
    nan = float("nan")
    return {
        "rows": rows,
        "cols": cols,
        "eff_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "spectral_norm": spectral_norm(s),
        "fro_norm": float(np.sqrt((s**2).sum())),
        "alpha": fit.alpha if fit else nan,
        "alpha_xmin": fit.xmin if fit else nan,
        "alpha_ks": fit.ks_distance if fit else nan,
        "rank_slope": rank_slope(s) if s.size >= 4 else nan,
        "mp_edge": marchenko_pastur_edge(rows, cols, sigma),
        "mp_signal_ratio": mp_signal_ratio(s, rows, cols, sigma),
        "singular_values": s,
        "fit": fit,
    }


# --- metrics on covariance eigenvalues (NerVE section 2) -------------------------------------

def spectral_entropy(eigs) -> float:
    """SE = -sum p_i ln p_i with p_i = lambda_i / sum lambda (NerVE sec. 2.2). In [0, ln D]."""
    return entropy(normalized(eigs))


def participation_ratio(eigs) -> float:
    """PR = (sum lambda)^2 / sum lambda^2 (NerVE eq. 2). In [1, D]."""
    p = normalized(eigs)
    return float(1.0 / (p**2).sum())


def early_eigenvalue_enrichment(eigs) -> float:
    """EEE: the summed gap between the cumulative share S_k of the top-k eigenvalues and the
    uniform line k/D, divided by D/2, exactly as NerVE eq. (3) writes it:

        EEE = sum_{k=1..D} (S_k - k/D) / (D / 2)

    0 for a uniform spectrum; k equal eigenvalues of D (the rest zero) give 1 - k/D, so a
    rank-one spectrum gives (D - 1)/D, not 1 (the paper's "maximal possible value" D/2 is the
    large-D limit of the exact maximum (D - 1)/2). In [0, (D - 1)/D].
    """
    p = normalized(eigs)
    D = p.size
    k = np.arange(1, D + 1)
    return float((np.cumsum(p) - k / D).sum() / (D / 2.0))


def js_divergence(eigs_p, eigs_q, rank_matched: bool = True) -> float:
    """Jensen-Shannon divergence between two normalised spectra (NerVE eqs. 4-6), natural log,
    in [0, ln 2].

    rank_matched=True (NerVE): both spectra are sorted in descending order and compared rank by
    rank; spectra of different length are padded with zeros. rank_matched=False compares the
    given entries index by index (e.g. variances along a fixed basis), where disjoint supports
    reach the bound ln 2.
    """
    if rank_matched:
        p, q = normalized(eigs_p), normalized(eigs_q)
    else:
        p, q = (np.clip(np.asarray(x, dtype=np.float64).ravel(), 0, None) for x in (eigs_p, eigs_q))
        if p.sum() <= 0 or q.sum() <= 0:
            raise ValueError("spectrum sums to zero; JS is undefined")
        p, q = p / p.sum(), q / q.sum()
    D = max(p.size, q.size)
    p = np.pad(p, (0, D - p.size))
    q = np.pad(q, (0, D - q.size))
    m = 0.5 * (p + q)

    def kl_to_m(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())

    return float(min(max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0), math.log(2)))


def components_for_variance(eigs, fraction: float = 0.9) -> int:
    """Smallest k whose top-k eigenvalues hold at least `fraction` of the total."""
    p = normalized(eigs)
    return int(np.searchsorted(np.cumsum(p), fraction - 1e-12) + 1)


def cumulative_share(eigs) -> np.ndarray:
    """Cumulative fraction of the total held by the top-k eigenvalues, k = 1..D."""
    return np.cumsum(normalized(eigs))


def power_law_slope(eigs, start: int, stop: int) -> float:
    """Least-squares slope of log lambda_k against log k over ranks start..stop-1 (1-based k).

    The Spectral Lens 'tail' statistic: the decay exponent of the covariance spectrum
    over a rank window. Negative for decaying spectra; -1 for lambda_k proportional to 1/k.
    """
    s = as_spectrum(eigs)
    stop = min(stop, s.size)
    if stop - start < 2:
        raise ValueError(f"rank window [{start}, {stop}) holds fewer than 2 eigenvalues")
    k = np.arange(start, stop) + 1.0
    window = s[start:stop]
    keep = window > 0
    if keep.sum() < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(k[keep]), np.log(window[keep]), 1)
    return float(slope)


def nerve_metrics(eig_pre, eig_post) -> dict[str, float]:
    """NerVE sec. 2 metrics of one FFN from its pre/post covariance eigenvalues:
    se (eq. SE), pr (eq. 2), eee (eq. 3) for each side, and js (eqs. 4-6) between them."""
    return {
        "se_pre": spectral_entropy(eig_pre), "se_post": spectral_entropy(eig_post),
        "pr_pre": participation_ratio(eig_pre), "pr_post": participation_ratio(eig_post),
        "eee_pre": early_eigenvalue_enrichment(eig_pre), "eee_post": early_eigenvalue_enrichment(eig_post),
        "js": js_divergence(eig_pre, eig_post),
    }


def spectrum_metrics(eigenvalues) -> dict:
    """Effective rank exp(H(lambda / sum lambda)) on covariance eigenvalues, participation ratio
    (sum lambda)^2 / sum lambda^2, and the number of components holding 90% of the variance."""
    return {
        "eff_rank": effective_rank(eigenvalues),
        "participation_ratio": participation_ratio(eigenvalues),
        "n90": components_for_variance(eigenvalues, 0.9),
    }
