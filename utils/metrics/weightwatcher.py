"""WeightWatcher 0.7.7's per-matrix columns, computed from one matrix's singular values.

Every function here reproduces a column (or option) of `weightwatcher.WeightWatcher.analyze()`
(Martin & Mahoney 2021, "Implicit self-regularization in deep neural networks", JMLR 22; Martin,
Peng & Mahoney 2021, "Predicting trends in the quality of state-of-the-art neural networks without
access to training or testing data", Nat. Commun. 12) under its name and with its formula, read
from its source (`weightwatcher.py`, `RMT_Util.py`, `WW_powerlaw.py`). For an N x M matrix W
(N >= M, `rf` = 1 for dense layers) with singular values s_1 >= ... >= s_M and eigenvalues
lambda_i = s_i^2 of W^T W (unnormalised: WW divides by nothing), `evals` below is all M of them.

Default frame (`apply_esd`, `apply_powerlaw`, `apply_norm_metrics`):
    num_evals = M, sv_max = s_1, sv_min = s_M, lambda_max = lambda_1 (= WW's `spectral_norm`, not
        our `spectral_norm` s_1), Q = N / M, rf = 1
    norm = sum lambda_i (= ||W||_F^2),  log_norm = log10 norm
    log_spectral_norm = log10 lambda_max,  stable_rank = norm / lambda_max
    alpha, xmin, xmax, D: the power-law fit (`utils.metrics.spectra.fit_power_law`), xmax = lambda_max
    sigma = (alpha - 1) / sqrt(n_tail) (the MLE's standard error; Clauset et al. 2009 eq. 3.2)
    num_pl_spikes = #{lambda_i >= xmin} = n_tail
    alpha_weighted = alpha log10 lambda_max   (Martin & Mahoney's alpha-hat)
    log_alpha_norm = log10 sum_i lambda_i^alpha   (the Schatten alpha-norm, log10)
    matrix_rank = #{s_i > s_1 N eps}, eps = float64 machine epsilon (numpy's matrix_rank tolerance)
    rank_loss = M - matrix_rank,  weak_rank_loss = #{lambda_i < 1e-6}
    entropy = -sum p_i ln p_i / ln(matrix_rank), p_i = lambda_i / sum lambda + 1e-10
    warning = "over-trained" if alpha < 2, "under-trained" if alpha > 6, else ""
`get_summary()`: the mean over matrices of log_norm, alpha, alpha_weighted, log_alpha_norm,
log_spectral_norm, stable_rank (and mp_softrank when present): `ww_summary`.

Options: `mp_fit=True` (`marchenko_pastur_fit`), `randomize=True` (`correlation_traps`),
`fix_fingers="clip_xmax"` (`clipped_power_law_fit`), `fix_fingers="xmin_peak"` (`peak_power_law_fit`);
`fit="TPL"` is in `utils.metrics.truncated_power_law` (it needs the `powerlaw` package itself).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from utils.machine import lapack_threads
from utils.metrics.spectra import WW_EVALS_THRESH, PowerLawFit, fit_power_law, gram_matrix

WW_WEAK_RANK_TOLERANCE = 1e-6  # weak_rank_loss counts eigenvalues below this (WEAK_RANK_LOSS_TOLERANCE)
WW_EPSILON = 1e-10  # added to p in the matrix entropy (EPSILON)
WW_OVER_TRAINED, WW_UNDER_TRAINED = 2.0, 6.0  # warning thresholds on alpha (OVER/UNDER_TRAINED_THRESH)
WW_MAX_N = 50_000  # analyze() skips matrices whose long side N exceeds this (DEFAULT_MAX_N)
WW_MAX_FINGERS = 10  # fix_fingers="clip_xmax": clip at most this many top eigenvalues (DEFAULT_MAX_FINGERS)
WW_FINGER_THRESH = 1.0  # ... and stop when alpha drops by more than this (DEFAULT_FINGER_THRESH)
WW_MP_BANDWIDTH = 0.1  # mp_fit's linear-kernel density bandwidth (bw)
WW_SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank",
                      "mp_softrank")
# The default frame's columns (besides alpha, stable_rank, which notebook 01 already has).
WW_DEFAULT_COLUMNS = ["N", "M", "rf", "Q", "num_evals", "has_esd", "sv_max", "sv_min", "lambda_max", "norm",
                      "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "entropy", "matrix_rank",
                      "rank_loss", "weak_rank_loss", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "status", "warning"]
GRAM_RESOLUTION = 1e-6  # below s_M / s_1 = this, singular values from the Gram lose digits: recomputed by SVD


def resolved_singular_values(W: torch.Tensor, s: np.ndarray) -> np.ndarray:
    """s (descending, from the Gram matrix) where it resolves the smallest singular values, else
    an SVD of W in float64. The Gram squares the condition number: a singular value below ~1e-8
    s_1 comes back as ~1e-8 s_1, so a rank-deficient W would count as full rank against WW's
    tolerance s_1 N eps. Only such matrices pay for the SVD (one float64 copy of W)."""
    if s[-1] > s[0] * GRAM_RESOLUTION:
        return s
    with lapack_threads(min(W.shape)):
        return torch.linalg.svdvals(W.detach().to(torch.float64)).cpu().numpy()


def matrix_rank(s: np.ndarray, N: int) -> int:
    """#{s_i > max s * N * eps} (RMT_Util.matrix_rank: numpy's default tolerance, float64)."""
    return int(np.count_nonzero(s > s.max() * N * np.finfo(np.float64).eps))


def matrix_entropy(s: np.ndarray, N: int) -> float:
    """WW's matrix entropy: -sum p ln p / ln(rank), p = s^2 / sum s^2 + 1e-10 (RMT_Util.matrix_entropy)."""
    p = s**2 / (s**2).sum() + WW_EPSILON
    return float(-(p * np.log(p)).sum() / np.log(matrix_rank(s, N) + WW_EPSILON))


def ww_warning(alpha: float) -> str:
    if alpha < WW_OVER_TRAINED:
        return "over-trained"
    return "under-trained" if alpha > WW_UNDER_TRAINED else ""


def ww_columns(s: np.ndarray, rows: int, cols: int, fit: PowerLawFit | None) -> dict:
    """WW's default frame for one matrix from its singular values s (any order; resolved, see
    `resolved_singular_values`) and its power-law fit (None: no fit, as where WW skips the
    matrix: alpha columns NaN, status "skipped")."""
    s = np.sort(np.asarray(s, dtype=np.float64))[::-1]
    N, M = max(rows, cols), min(rows, cols)
    evals = s**2
    norm, lmax = float(evals.sum()), float(evals[0])
    rank = matrix_rank(s, N)
    row = {"N": N, "M": M, "rf": 1, "Q": N / M, "num_evals": int(s.size), "has_esd": True,
           "sv_max": float(s[0]), "sv_min": float(s[-1]), "lambda_max": lmax, "norm": norm,
           "log_norm": math.log10(norm), "log_spectral_norm": math.log10(lmax), "entropy": matrix_entropy(s, N),
           "matrix_rank": rank, "rank_loss": int(s.size - rank),
           "weak_rank_loss": int((evals < WW_WEAK_RANK_TOLERANCE).sum())}
    if fit is None or not np.isfinite(fit.alpha):
        nan = float("nan")
        return {**row, "alpha_weighted": nan, "log_alpha_norm": nan, "xmin": nan, "xmax": nan, "D": nan,
                "sigma": nan, "num_pl_spikes": -1, "status": "skipped", "warning": ""}
    with np.errstate(over="ignore"):
        alpha_norm = float((evals**fit.alpha).sum())
    return {**row, "alpha_weighted": fit.alpha * math.log10(lmax), "log_alpha_norm": math.log10(alpha_norm),
            "xmin": fit.xmin, "xmax": float(evals[evals > WW_EVALS_THRESH].max()), "D": fit.ks_distance,
            "sigma": (fit.alpha - 1) / math.sqrt(fit.n_tail), "num_pl_spikes": int((evals >= fit.xmin).sum()),
            "status": "success", "warning": ww_warning(fit.alpha)}


def ww_summary(df: pd.DataFrame) -> dict[str, float]:
    """`WeightWatcher.get_summary()`: the mean over matrices of each summary metric present.
    pandas' mean skips NaN, so matrices WW would skip (no alpha) leave the alpha means as WW's."""
    return {m: float(df[m].mean()) for m in WW_SUMMARY_METRICS if m in df.columns}


# --- mp_fit=True: Marchenko-Pastur fit of the bulk ------------------------------------------------

@dataclass(frozen=True)
class MPFit:
    """WW's `mp_fit` columns (apply_mp_fit, mp_fit, RMT_Util.fit_density_with_range)."""

    num_spikes: int  # eigenvalues above the bulk edge plus its Tracy-Widom width
    sigma_mp: float  # fitted sigma of the MP (or quarter-circle, Q = 1) law, on the rescaled ESD
    mp_softrank: float  # bulk_max / lambda_max on the rescaled ESD
    bulk_min: float  # (sigma (1 - 1/sqrt(Q)))^2, back in the units of the eigenvalues
    bulk_max: float  # (sigma (1 + 1/sqrt(Q)))^2, back in the units of the eigenvalues
    W_scale: float  # sqrt(n / sum lambda): the ESD is rescaled by W_scale^2 to mean eigenvalue 1

    def row(self, prefix: str = "") -> dict:
        return {prefix + k: v for k, v in asdict(self).items()}


def _linear_kde(points: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    """Density of the linear kernel K(u) = (1 - |u| / bw) / bw on |u| < bw at every grid point
    (sklearn `KernelDensity(kernel="linear")`, exact), in row blocks of the grid."""
    out = np.empty(grid.size)
    step = max(1, (1 << 20) // max(points.size, 1))
    for a in range(0, grid.size, step):
        u = np.abs(grid[a:a + step, None] - points[None, :]) / bw
        out[a:a + step] = np.clip(1.0 - u, 0.0, None).sum(axis=1) / (points.size * bw)
    return out


def _mp_density(x: np.ndarray, Q: float, sigma: float) -> tuple[np.ndarray, float, float]:
    """MP density of eigenvalues for aspect ratio Q and entry std sigma, 0 outside [a, b]
    (RMT_Util.marchenko_pastur_fun); for Q = 1 the quarter circle of singular values."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if Q == 1:
            return np.nan_to_num(np.sqrt(4 - x**2) / (np.pi * sigma**2)), 0.0, 0.0
        b = (sigma * (1 + np.sqrt(1 / Q))) ** 2
        a = (sigma * (1 - np.sqrt(1 / Q))) ** 2
        return np.nan_to_num(np.sqrt((b - x) * (x - a)) / (2 * np.pi * sigma**2 * x / Q)), a, b


def _mp_objective(Q: float, xde: np.ndarray, yde: np.ndarray):
    """WW's `resid_mp(..., allresid=False)`: sum of squared residuals of the MP density against
    the KDE on the grid points where the KDE is above 0.01; 1000 per point where the edges fall
    outside the KDE's support or peak. The KDE does not depend on sigma: computed once here
    (WW recomputes it at each of the ~200 sigmas it tries)."""
    peak = xde[np.argmax(yde)]

    def objective(p) -> float:
        sigma = float(np.atleast_1d(p)[0])
        y, a, b = _mp_density(xde, Q, sigma)
        if Q != 1 and (b < peak or b > xde.max() or a > peak):
            return float(len(yde) * 1000.0**2)
        return float(((y - yde) ** 2).sum())

    return objective


def marchenko_pastur_fit(evals, N: int, M: int, bw: float = WW_MP_BANDWIDTH) -> MPFit:
    """WW's `mp_fit`: rescale the ESD to mean 1 (W_scale^2 = n / sum lambda), fit sigma of the
    MP law (Q = N/M; the quarter-circle law of the singular values when Q = 1) to a linear-kernel
    density estimate by `scipy.optimize.brute` over sigma in [0.05, 2) s0 in steps of 0.01 s0
    (s0 = sqrt(lambda_max) / (1 + 1/sqrt(Q))) polished by Nelder-Mead, as WW does; then
    bulk_max = (sigma (1 + 1/sqrt Q))^2, the Tracy-Widom width TW = bulk_max^(2/3) M^(-2/3) / sqrt Q,
    num_spikes = #{lambda > bulk_max + sqrt(TW)}, mp_softrank = bulk_max / lambda_max."""
    evals = np.asarray(evals, dtype=np.float64)
    Q = N / M
    W_scale = math.sqrt(evals.size) / math.sqrt(evals.sum())
    x = W_scale**2 * evals
    lmax = float(x.max())
    s0 = math.sqrt(lmax / (1 + 1 / math.sqrt(Q)) ** 2)
    to_fit = np.sqrt(x) if Q == 1 else x
    xde = np.linspace(0, to_fit.max() + 0.5, 1000)
    yde = _linear_kde(to_fit, xde, bw)
    keep = yde > 0.01
    objective = _mp_objective(Q, xde[keep], yde[keep])
    from scipy import optimize  # imported where used: scipy.optimize/stats cost ~0.5 s at import

    sigma = float(optimize.brute(objective, (slice(0.05 * s0, 2.0 * s0, 0.01 * s0),), full_output=True)[0][0])
    bulk_max = (sigma * (1 + 1 / math.sqrt(Q))) ** 2
    bulk_min = (sigma * (1 - 1 / math.sqrt(Q))) ** 2
    tw = bulk_max ** (2 / 3) * M ** (-2 / 3) / math.sqrt(Q)
    return MPFit(int((x > bulk_max + math.sqrt(tw)).sum()), sigma, bulk_max / lmax,
                 bulk_min / W_scale**2, bulk_max / W_scale**2, W_scale)


# --- randomize=True: correlation traps --------------------------------------------------------------

def shuffled_eigenvalues(W: torch.Tensor, rng: np.random.RandomState, replicas: int = 1) -> np.ndarray:
    """Eigenvalues of W with its entries shuffled (ascending, `replicas` shuffles concatenated):
    WW's `random_eigenvalues`, which shuffles W.flatten() with `np.random.shuffle`. The shuffle
    is `rng.permutation(W.numel())` (the same Fisher-Yates draws as shuffle), so a RandomState
    seeded as WW's global numpy generator gives WW's matrices. Memory: W, one shuffled copy,
    the int64 permutation and the Gram."""
    flat = W.detach().reshape(-1)
    out = []
    for _ in range(replicas):
        perm = torch.from_numpy(rng.permutation(flat.numel())).to(flat.device)
        gram = gram_matrix(flat[perm].reshape(W.shape))
        with lapack_threads(gram.shape[0]):
            out.append(torch.linalg.eigvalsh(gram).clamp_min(0.0).cpu().numpy())
    return np.sort(np.concatenate(out))


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the JS divergence between p / sum p and q / sum q, index by index (natural log;
    RMT_Util.jensen_shannon_distance, applied by WW to the two sorted eigenvalue arrays)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p / p.sum() + q / q.sum()) / 2
    from scipy import stats as sps

    return float(np.sqrt((sps.entropy(p, m) + sps.entropy(q, m)) / 2))


def correlation_traps(W: torch.Tensor, evals: np.ndarray, rng: np.random.RandomState) -> dict:
    """WW's `randomize=True` columns (apply_random_esd, then apply_mp_fit on the randomized ESD):
    the ESD of W with its entries shuffled (5 shuffles pooled when M < 100, else 1) fitted by
    `marchenko_pastur_fit` (rand_num_spikes = num_traps: spikes that survive shuffling are
    correlation traps, Martin & Mahoney), max_rand_eval; one more shuffle gives rand_distance
    (`jensen_shannon_distance` of the sorted ESDs), ww_softrank = its lambda_max / lambda_max and
    ww_maxdist = lambda_max - its lambda_max. `rng` is drawn in WW's order."""
    N, M = max(W.shape), min(W.shape)
    pooled = shuffled_eigenvalues(W, rng, 5 if M < 100 else 1)
    single = shuffled_eigenvalues(W, rng, 1)
    evals = np.sort(np.asarray(evals, dtype=np.float64))
    fit = marchenko_pastur_fit(pooled, N, M)
    row = {"max_rand_eval": float(pooled.max()), "rand_distance": jensen_shannon_distance(evals, single),
           "ww_softrank": float(single.max() / evals.max()), "ww_maxdist": float(evals.max() - single.max())}
    rand = fit.row("rand_")
    return {**row, "rand_num_spikes": fit.num_spikes, "num_traps": fit.num_spikes,
            **{k: rand[k] for k in ("rand_sigma_mp", "rand_mp_softrank", "rand_W_scale", "rand_bulk_max",
                                     "rand_bulk_min")}}


# --- fix_fingers="clip_xmax" ------------------------------------------------------------------------

@dataclass(frozen=True)
class ClippedFit:
    fit: PowerLawFit  # the fit kept (the first fit when no finger was found)
    num_fingers: int  # top eigenvalues clipped off (0: none)
    raw_alpha: float  # alpha of the unclipped fit


def clipped_power_law_fit(evals, max_fingers: int = WW_MAX_FINGERS, finger_thresh: float = WW_FINGER_THRESH,
                          min_alpha: float = 2.0) -> ClippedFit:
    """WW's `fix_fingers="clip_xmax"` (RMT_Util.fit_clipped_powerlaw with its own fit): fit the
    eigenvalues above 1e-5, then refit with the top idx removed for idx = 2 .. max_fingers - 1
    (WW never tries idx = 1); the first refit whose alpha is below the unclipped alpha minus
    `finger_thresh` is kept (num_fingers = idx - 1); stop without a fix once a refit's alpha
    is <= `min_alpha`. (WW resets max_fingers to 10 when it is below half the eigenvalues.)"""
    evals = np.asarray(evals, dtype=np.float64)
    x = np.sort(evals[evals > WW_EVALS_THRESH])
    if max_fingers < evals.size / 2:
        max_fingers = WW_MAX_FINGERS
    first = fit_power_law(x)
    for idx in range(2, max_fingers):
        fit = fit_power_law(x[:-idx])
        if fit.alpha + finger_thresh < first.alpha:
            return ClippedFit(fit, idx - 1, first.alpha)
        if min_alpha is not None and fit.alpha <= min_alpha:
            break
    return ClippedFit(first, 0, first.alpha)


def clipped_columns(evals: np.ndarray, clipped: ClippedFit) -> dict:
    """The columns WW writes with fix_fingers="clip_xmax" from the kept fit: alpha, xmin, D,
    sigma, num_pl_spikes (over all eigenvalues, clipped ones included), xmax (largest kept),
    num_fingers, raw_alpha, warning."""
    f, evals = clipped.fit, np.asarray(evals, dtype=np.float64)
    x = np.sort(evals[evals > WW_EVALS_THRESH])
    kept = x[: -(clipped.num_fingers + 1)] if clipped.num_fingers else x
    return {"alpha": f.alpha, "xmin": f.xmin, "xmax": float(kept.max()), "D": f.ks_distance,
            "sigma": (f.alpha - 1) / math.sqrt(f.n_tail), "num_pl_spikes": int((evals >= f.xmin).sum()),
            "num_fingers": clipped.num_fingers, "raw_alpha": clipped.raw_alpha, "warning": ww_warning(f.alpha)}


# --- fix_fingers="xmin_peak" ------------------------------------------------------------------------

WW_PEAK_BINS = 100  # xmin_peak: bins of the histogram of log10 lambda whose fullest bin is the peak


def xmin_peak_range(evals) -> tuple[float, float]:
    """WW's xmin range for fix_fingers="xmin_peak" (WeightWatcher.fit_powerlaw): over the eigenvalues
    above 1e-5, the peak p = 10^(left edge of the fullest of 100 bins of log10 lambda), then the
    range (log10(0.95 p), 1.5 p), as WW builds it: its lower end is a log10, its upper end is not
    (log10(0.95 p) < 0.95 p for every p > 0: the search reaches far below the peak, to every eigenvalue
    when p < 1.05, where log10(0.95 p) <= 0)."""
    x = np.asarray(evals, dtype=np.float64)
    x = x[x > WW_EVALS_THRESH]
    counts, edges = np.histogram(np.log10(x), bins=WW_PEAK_BINS)
    peak = 10 ** edges[np.argmax(counts)]
    return float(np.log10(0.95 * peak)), float(1.5 * peak)


def _unique_tail_ks(x: np.ndarray, k: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """KS distance of the power law from xmin = u_k for candidates k, as `powerlaw` computes it
    (Distribution.compute_distance_metrics with its parent Fit's CDF): over the unique values u_j
    >= u_k with first index f_j in the sorted x, D = max_j |1 - (u_j/u_k)^(1-alpha) - (f_j - f_k)/(N - f_k)|
    (its empirical CDF at the lower steps, as WW's own fit). Vectorised in candidate blocks."""
    u, first = np.unique(x, return_index=True)
    logu, N = np.log(u), x.size
    ks = np.empty(k.size)
    rows = max(1, (1 << 16) // u.size)
    for a in range(0, k.size, rows):
        kb, al = k[a:a + rows], alpha[a:a + rows, None]
        j = np.arange(u.size)[None, :]
        tail = j >= kb[:, None]
        rel = np.where(tail, logu[None, :] - logu[kb, None], 0.0)
        steps = (first[None, :] - first[kb, None]) / (N - first[kb, None])
        d = np.abs(1.0 - np.exp((1.0 - al) * rel) - steps)
        ks[a:a + rows] = np.where(tail, d, 0.0).max(axis=1)
    return ks


def peak_power_law_fit(evals, xmin_range: tuple[float, float] | None = None) -> PowerLawFit | None:
    """WW's `fix_fingers="xmin_peak"` fit: the power-law fit of `fit_power_law` with xmin searched
    only among the eigenvalues in `xmin_peak_range` (WW hands the range to `powerlaw.Fit`, whose
    find_xmin takes the unique eigenvalues in [low, high) but the largest of them). For each
    candidate u_k, n = #{lambda >= u_k}, the continuous MLE alpha = 1 + n / sum log(lambda / u_k),
    D as in `_unique_tail_ks`; the first smallest D wins; sigma = (alpha - 1) / sqrt n.
    The estimator is the closed form at every alpha, as WW's own fit and powerlaw <= 1.5 do
    (powerlaw 2.0 caps alpha at 3, see tests/test_weightwatcher.py). None where fewer than 2
    candidates are in range (WW: status "failed")."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > WW_EVALS_THRESH]
    low, high = xmin_range or xmin_peak_range(x)
    u, first = np.unique(x, return_index=True)
    k = np.flatnonzero((u >= min(low, high)) & (u < max(low, high)))[:-1]
    if k.size < 2:
        return None
    n = x.size - first[k]
    suffix = np.concatenate([np.cumsum(np.log(x)[::-1])[::-1], [0.0]])
    alpha = 1.0 + n / (suffix[first[k]] - n * np.log(u[k]))
    ks = _unique_tail_ks(x, k, alpha)
    best = int(np.argmin(ks))
    return PowerLawFit(float(alpha[best]), float(u[k[best]]), float(ks[best]), int(n[best]))


def peak_columns(evals: np.ndarray, fit: PowerLawFit | None) -> dict:
    """The columns WW writes with fix_fingers="xmin_peak" (apply_powerlaw from fit_powerlaw): alpha,
    xmin, D, sigma = (alpha - 1) / sqrt(n_tail), num_pl_spikes = #{lambda >= xmin}, status, warning;
    xmax NaN (WW writes powerlaw's Fit.xmax, None without an xmax). No fit: NaN and "failed"
    (WW writes -1 there)."""
    if fit is None:
        nan = float("nan")
        return {"alpha": nan, "xmin": nan, "xmax": nan, "D": nan, "sigma": nan, "num_pl_spikes": -1,
                "status": "failed", "warning": ""}
    evals = np.asarray(evals, dtype=np.float64)
    return {"alpha": fit.alpha, "xmin": fit.xmin, "xmax": float("nan"), "D": fit.ks_distance,
            "sigma": (fit.alpha - 1) / math.sqrt(fit.n_tail), "num_pl_spikes": int((evals >= fit.xmin).sum()),
            "status": "success", "warning": ww_warning(fit.alpha)}
