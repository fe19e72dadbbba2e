"""Notebook 01's findings and figures: what its report states, computed from the weight table.

`weight_spectra_findings(df, L, ...)` returns a `WeightSpectraFindings` (every number a findings
sentence uses), `findings_sentences(f)` the sentences built from its fields; `column_sources`
names where each CSV column comes from, `spectra_table_name` the CSV's name for what was analysed;
`esd_figure` and `alpha_interval_figure` draw the ESDs as WeightWatcher does (log-log density,
fitted tail from xmin, MP bulk edge where fitted), one figure per weight type with the layers
coloured by depth, and alpha with its bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.metrics.power_law import CLAUSET_P_THRESHOLD
from utils.metrics.truncated_power_law import tail_density
from utils.metrics.weight_spectra import (
    FINGER_COLUMNS,
    INTERVAL_COLUMNS,
    METRIC_COLUMNS,
    MP_COLUMNS,
    PRISMA_ALPHA_RANGE,
    RANDOMIZE_COLUMNS,
    TPL_COLUMNS,
    phase_table,
    sharpest_transitions,
)
from utils.metrics.weightwatcher import WW_DEFAULT_COLUMNS, WW_MAX_N, ww_summary
from utils.reporting.plotting import depth_colorbar, depth_colors, subplots


@dataclass(frozen=True)
class WeightSpectraFindings:
    lowest: str  # weight type with the lowest mean effective rank relative to its maximum
    lowest_share: float
    highest: str
    highest_share: float
    n_alpha: int  # matrices with a fitted alpha
    heavy_share: float  # share of them with alpha < heavy_tail_alpha
    heavy_tail_alpha: float
    alpha_median: float
    alpha_min: float
    alpha_max: float
    n_slope: int
    slope_median: float
    slope_min: float
    slope_max: float
    prisma_share: float  # share of rank slopes inside PRISMA_ALPHA_RANGE
    slope_cv_min: float
    slope_cv_max: float
    mp_signal_mean: float
    mp_signal_max: float
    mp_signal_max_weight: str
    mp_signal_max_layer: int
    u_shaped: list[str]
    drop_weight: str | None  # the sharpest layer-to-layer drop of effective rank
    drop_layers: str | None
    drop: float | None
    summary: dict[str, float]  # WeightWatcher's get_summary() averages
    beyond_max_n: list[str]  # matrices WW would skip (N > max_N) that are fitted here
    n_interval: int = 0  # matrices with a bootstrap interval
    interval_width_median: float = float("nan")
    below_bound: int = 0  # intervals wholly below heavy_tail_alpha
    above_bound: int = 0  # intervals wholly above it
    p_rejected: int = 0  # goodness-of-fit p below Clauset's 0.1
    level: float = 0.95
    traps: int | None = None  # matrices with correlation traps (randomize)
    fingers: int | None = None  # matrices with fingers clipped (fix_fingers)


def _interval_fields(df: pd.DataFrame, bound: float) -> dict:
    if "alpha_low" not in df or not df.alpha_low.notna().any():
        return {}
    ci = df.dropna(subset=["alpha_low", "alpha_high"])
    return {"n_interval": len(ci), "interval_width_median": float((ci.alpha_high - ci.alpha_low).median()),
            "below_bound": int((ci.alpha_high < bound).sum()), "above_bound": int((ci.alpha_low > bound).sum()),
            "p_rejected": int((df.alpha_p.dropna() < CLAUSET_P_THRESHOLD).sum())}


def _share(mask: pd.Series) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


def weight_spectra_findings(df: pd.DataFrame, n_layers: int, heavy_tail_alpha: float = 2.0,
                            level: float = 0.95) -> WeightSpectraFindings:
    """The findings of notebook 01 from its table (one row per matrix, `weight_spectra`)."""
    blocks = df[df.layer >= 0]
    relative = blocks.assign(rel=blocks.eff_rank / blocks.max_rank).groupby("weight", sort=False).rel.mean()
    alphas, slopes = df.alpha.dropna(), df.rank_slope.dropna()
    cv = blocks.groupby("weight", sort=False).rank_slope.agg(lambda v: v.std() / v.mean() if v.mean() else np.nan)
    phases, transitions = phase_table(df, n_layers, "eff_rank"), sharpest_transitions(df, "eff_rank")
    biggest = transitions.iloc[transitions["drop"].abs().argmax()] if len(transitions) else None
    top = df.loc[df.mp_signal_ratio.idxmax()]
    return WeightSpectraFindings(
        lowest=relative.idxmin(), lowest_share=float(relative.min()), highest=relative.idxmax(),
        highest_share=float(relative.max()), n_alpha=len(alphas), heavy_share=_share(alphas < heavy_tail_alpha),
        heavy_tail_alpha=heavy_tail_alpha, alpha_median=float(alphas.median()), alpha_min=float(alphas.min()),
        alpha_max=float(alphas.max()), n_slope=len(slopes), slope_median=float(slopes.median()),
        slope_min=float(slopes.min()), slope_max=float(slopes.max()),
        prisma_share=_share(slopes.between(*PRISMA_ALPHA_RANGE)), slope_cv_min=float(cv.min()), slope_cv_max=float(cv.max()),
        mp_signal_mean=float(df.mp_signal_ratio.mean()), mp_signal_max=float(top.mp_signal_ratio),
        mp_signal_max_weight=str(top.weight), mp_signal_max_layer=int(top.layer),
        u_shaped=phases[phases.trend == "U-shape"].weight.tolist(),
        drop_weight=None if biggest is None else str(biggest.weight),
        drop_layers=None if biggest is None else str(biggest.max_drop),
        drop=None if biggest is None else float(biggest["drop"]),
        summary=ww_summary(df), beyond_max_n=[f"{r.weight} ({r.N} x {r.M})" for r in df[df.N > WW_MAX_N].itertuples()],
        level=level, traps=int((df.num_traps > 0).sum()) if "num_traps" in df else None,
        fingers=int((df.num_fingers > 0).sum()) if "num_fingers" in df else None,
        **_interval_fields(df, heavy_tail_alpha))


def findings_sentences(f: WeightSpectraFindings) -> list[str]:
    """The report's findings, each built from the fields of `f`."""
    lo, hi = PRISMA_ALPHA_RANGE
    verdict = "holds" if f.heavy_share == 1 else "does not hold"
    out = [
        f"Relative to its maximum rank, `{f.lowest}` is the most concentrated weight type (mean effective rank "
        f"{f.lowest_share:.1%} of the maximum) and `{f.highest}` the most spread out ({f.highest_share:.1%}).",
        f"{f.heavy_share:.0%} of the {f.n_alpha} fitted matrices have alpha < {f.heavy_tail_alpha:g} (very heavy-tailed); "
        f"median alpha {f.alpha_median:.2f} (range {f.alpha_min:.2f}-{f.alpha_max:.2f}; WeightWatcher's alpha).",
        f"Rank slope b (sigma_k ~ k^-b, ranks 1..r/2): median {f.slope_median:.2f}, range {f.slope_min:.2f}-"
        f"{f.slope_max:.2f} over {f.n_slope} matrices, beside Prisma's 'alpha' of {lo:g}-{hi:g}; {f.prisma_share:.0%} "
        f"of matrices fall inside that range. Across layers b varies by a coefficient of variation of "
        f"{f.slope_cv_min:.0%}-{f.slope_cv_max:.0%} per weight type.",
        f"Prisma's claim 'all layers below the alpha = 2 boundary (heavy-tailed)' is a claim about WeightWatcher's "
        f"alpha: here {f.heavy_share:.0%} of matrices are below {f.heavy_tail_alpha:g}, so it {verdict} for this "
        f"model. Its values 'about {lo:g}-{hi:g}, uniform across layers' can only be a rank slope (an MLE alpha of a "
        f"density is always above 1): the rank slope tests them ({f.prisma_share:.0%} in range here). Both cannot "
        f"describe one exponent: a power-law tail with rank slope {lo:g}-{hi:g} has alpha = 1 + 1/(2b) = "
        f"{1 + 1 / (2 * hi):.2f}-{1 + 1 / (2 * lo):.2f}, above 2.",
        f"On average {f.mp_signal_mean:.1%} of singular values lie above the Marchenko-Pastur edge (largest: "
        f"`{f.mp_signal_max_weight}` at layer {f.mp_signal_max_layer}, {f.mp_signal_max:.1%}).",
        "Weight types with a U-shaped effective rank over depth (middle third lowest): "
        + (", ".join(f"`{w}`" for w in f.u_shaped) if f.u_shaped else "none") + ".",
    ]
    if f.drop_weight is not None:
        out.append(f"The sharpest layer-to-layer drop in effective rank is in `{f.drop_weight}` at layers "
                   f"{f.drop_layers} ({f.drop:+.1f}).")
    if f.n_interval:
        out.append(f"Bootstrap {f.level:.0%} intervals of alpha (Clauset et al. 2009) on {f.n_interval} matrices: median "
                   f"width {f.interval_width_median:.2f}; {f.below_bound} lie wholly below {f.heavy_tail_alpha:g} and "
                   f"{f.above_bound} wholly above, the other {f.n_interval - f.below_bound - f.above_bound} cannot be told "
                   f"apart from {f.heavy_tail_alpha:g}. The power law is ruled out (goodness-of-fit p < "
                   f"{CLAUSET_P_THRESHOLD:g}) for {f.p_rejected} of them.")
    if f.traps is not None:
        out.append(f"Correlation traps (randomize): {f.traps} matrices keep spikes above the MP edge after shuffling.")
    if f.fingers is not None:
        out.append(f"fix_fingers='clip_xmax' clipped fingers from {f.fingers} matrices.")
    return out


def summary_table(f: WeightSpectraFindings) -> pd.DataFrame:
    """WeightWatcher's get_summary() as a table (metric, mean over matrices)."""
    return pd.DataFrame({"metric": list(f.summary), "mean": list(f.summary.values())})


_OURS = {"eff_rank": "seed `1.py`: exp(entropy of s / sum s)", "rank_slope": "Prisma write-up: b in s_k ~ k^-b",
         "mp_edge": "Prisma: sigma (sqrt(rows) + sqrt(cols))", "mp_signal_ratio": "Prisma: share of s above mp_edge",
         "fro_norm": "||W||_F", "spectral_norm": "s_1 (WeightWatcher's `spectral_norm` is lambda_max: see `lambda_max`)",
         "alpha_xmin": "= WeightWatcher's `xmin`", "alpha_ks": "= WeightWatcher's `D`"}
_TPL = "fit='TPL': rate of the truncated power law x^-alpha exp(-Lambda x) (utils.metrics.truncated_power_law, via powerlaw 2.0.0)"


WEIGHT_TABLE = "weight_spectra.csv"  # the spectra of W itself: what notebooks 03 and 07 read as the model's


def spectra_table_name(base: str, lora: str) -> str:
    """The CSV notebook 01 writes: WEIGHT_TABLE for W, `delta_spectra.csv` for W - W_base and
    `lora_update_spectra.csv` for a LoRA adapter's updates: a run on another subject never leaves a
    table that notebooks 03 and 07 would take for the model's weight spectra."""
    return "delta_spectra.csv" if base else ("lora_update_spectra.csv" if lora else WEIGHT_TABLE)


def fit_sentence(fix_fingers: str, fit: str) -> str:
    """Which of WeightWatcher's fits gave `alpha`, `xmin`, `D`, `sigma`, `num_pl_spikes` (and the
    alpha-derived `alpha_weighted`, `log_alpha_norm`) in this run."""
    kind = "a truncated power law x^-alpha exp(-Lambda x) (WW's fit='TPL', through the powerlaw package)" \
        if fit == "TPL" else "a power law (WW's fit='PL')"
    fingers = {"": "xmin over all eigenvalues but the largest (WW's default)",
               "clip_xmax": "up to 9 top eigenvalues clipped off where that drops alpha by more than 1 "
                            "(WW's fix_fingers='clip_xmax': num_fingers, raw_alpha)",
               "xmin_peak": "xmin searched only in WW's window around the peak p of the histogram of log10 lambda, "
                            "(log10(0.95 p), 1.5 p) as WW writes it (fix_fingers='xmin_peak'; xmax left empty as WW does)"}
    return f"`alpha` and the other fit columns: {kind}, {fingers[fix_fingers]}."


def column_sources(columns) -> pd.DataFrame:
    """Where each column of the CSV comes from."""
    ww = set(WW_DEFAULT_COLUMNS) | set(MP_COLUMNS) | set(RANDOMIZE_COLUMNS) | set(FINGER_COLUMNS) | {"alpha", "stable_rank"}
    rows = []
    for c in columns:
        if c in _OURS:
            rows.append((c, "notebook 01", _OURS[c]))
        elif c in TPL_COLUMNS:
            rows.append((c, "WeightWatcher 0.7.7 analyze()", _TPL))
        elif c in ww:
            rows.append((c, "WeightWatcher 0.7.7 analyze()", "same name, same formula (utils.metrics.weightwatcher)"))
        elif c in INTERVAL_COLUMNS:
            rows.append((c, "beyond WeightWatcher", "Clauset et al. 2009 bootstrap / goodness of fit (utils.metrics.power_law)"))
        elif c in METRIC_COLUMNS:
            rows.append((c, "notebook 01", ""))
    return pd.DataFrame(rows, columns=["column", "source", "definition"])


def _loghist(ax, evals: np.ndarray, color, bins: int = 100) -> None:
    """WeightWatcher's plot_loghist: density histogram over log-spaced bins, as a step line."""
    x = evals[evals > 0]
    edges = np.logspace(np.log10(x.min()), np.log10(x.max()), bins)
    ax.hist(x, bins=edges, density=True, histtype="step", color=color, linewidth=0.8)


def esd_figure(df: pd.DataFrame, spectra: dict, weight: str, n_layers: int):
    """One weight type's ESDs, every layer on one log-log panel coloured by depth: density of
    lambda = s^2, the fitted power law p(x) = (alpha - 1)/xmin (x/xmin)^-alpha from xmin (dashed;
    with fit="TPL" the truncated power law of `tail_density`, its `Lambda`) scaled by the tail's
    share of the eigenvalues, and xmin (dot); with mp_fit, the MP bulk edge bulk_max (dotted vertical)."""
    fig, axes = subplots(1, 1, width=6.0, height=4.2)
    ax = np.atleast_1d(axes).flat[0]
    colors = depth_colors(max(n_layers, 1))
    for r in df[df.weight == weight].sort_values("layer").itertuples():
        color = colors[r.layer] if r.layer >= 0 else "black"
        evals = spectra[(r.layer, r.weight)] ** 2
        _loghist(ax, evals, color)
        if np.isfinite(r.alpha):
            x = np.logspace(np.log10(r.xmin), np.log10(evals.max()), 20)
            density = tail_density(x, r.alpha, r.xmin, getattr(r, "Lambda", 0.0))
            ax.plot(x, density * r.num_pl_spikes / (evals > 0).sum(), color=color, linestyle="--", linewidth=0.8)
            ax.axvline(r.xmin, color=color, linestyle=":", linewidth=0.5)
        if "bulk_max" in df and np.isfinite(getattr(r, "bulk_max", np.nan)):
            ax.axvline(r.bulk_max, color=color, linestyle="-.", linewidth=0.5)
    ax.set(xscale="log", yscale="log", xlabel="eigenvalue lambda = s^2", ylabel="density",
           title=f"ESD of {weight}: fitted tail (dashed) from xmin (dotted)")
    if weight not in ("embed", "unembed"):
        depth_colorbar(fig, np.atleast_1d(axes), n_layers, label="layer")
    return fig


def alpha_interval_figure(df: pd.DataFrame, weight_types: list[str], heavy_tail_alpha: float):
    """alpha by layer per weight type, with the bootstrap intervals as error bars when present."""
    fig, axes = subplots(1, 1, width=7.0, height=4.0)
    ax = np.atleast_1d(axes).flat[0]
    blocks = df[df.layer >= 0]
    for i, wt in enumerate(weight_types):
        sub = blocks[blocks.weight == wt].sort_values("layer")
        x = sub.layer + (i - len(weight_types) / 2) * 0.08
        if "alpha_low" in sub:
            err = np.vstack([sub.alpha - sub.alpha_low, sub.alpha_high - sub.alpha]).clip(0)
            ax.errorbar(x, sub.alpha, yerr=err, marker=".", markersize=3, linewidth=0.8, capsize=1.5, label=wt)
        else:
            ax.plot(x, sub.alpha, marker=".", markersize=3, linewidth=0.8, label=wt)
    ax.axhline(heavy_tail_alpha, color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="layer", ylabel="alpha (WeightWatcher)", title="alpha by layer with bootstrap intervals")
    ax.legend(fontsize=7, ncol=4)
    return fig


def eff_rank_figure(df: pd.DataFrame, weight_types: list[str], model_name: str):
    """Effective rank by layer, one panel per weight type (seed `1.py`)."""
    blocks = df[df.layer >= 0]
    ncols = 4
    fig, axes = subplots(int(np.ceil(len(weight_types) / ncols)), ncols, width=4.2, height=3.2, sharey=False)
    for ax, wt in zip(axes.flat, weight_types):
        sub = blocks[blocks.weight == wt].sort_values("layer")
        ax.plot(sub.layer, sub.eff_rank, marker=".", markersize=3)
        ax.set_title(f"{wt} ({sub.rows.iloc[0]}x{sub.cols.iloc[0]}), max rank {sub.max_rank.iloc[0]}", fontsize=9)
        ax.set(xlabel="layer", ylabel="effective rank")
    for ax in list(axes.flat)[len(weight_types):]:
        ax.set_visible(False)
    fig.suptitle(f"Effective rank by layer — {model_name}")
    fig.tight_layout()
    return fig


def layerwise_figure(df: pd.DataFrame, weight_types: list[str], heavy_tail_alpha: float):
    """Effective rank, stable rank, alpha, rank slope and MP signal ratio by layer (Prisma), and
    alpha against rank slope with the Zipf relation alpha = 1 + 1/(2b)."""
    blocks = df[df.layer >= 0]
    panels = [("eff_rank", "effective rank"), ("stable_rank", "stable rank"),
              ("alpha", "alpha (WeightWatcher) of sigma^2"), ("rank_slope", "rank slope b, sigma_k ~ k^-b"),
              ("mp_signal_ratio", "fraction above MP edge")]
    fig, axes = subplots(2, 3, width=5.0, height=3.6)
    for ax, (col, label) in zip(axes.flat, panels):
        for wt in weight_types:
            sub = blocks[blocks.weight == wt].sort_values("layer")
            ax.plot(sub.layer, sub[col], marker=".", markersize=3, label=wt)
        if col == "alpha":
            ax.axhline(heavy_tail_alpha, color="gray", linestyle="--", linewidth=1)
        if col == "rank_slope":
            ax.axhspan(*PRISMA_ALPHA_RANGE, color="gray", alpha=0.2, label="Prisma's 'alpha'")
        ax.set(title=label, xlabel="layer")
    ax = axes[1, 2]
    for wt in weight_types:
        sub = blocks[blocks.weight == wt]
        ax.scatter(sub.rank_slope, sub.alpha, s=8, label=wt)
    b = np.linspace(max(blocks.rank_slope.min(), 0.05), blocks.rank_slope.max(), 100)
    ax.plot(b, 1 + 1 / (2 * b), color="gray", linestyle="--", linewidth=1, label="1 + 1/(2b)")
    ax.axvspan(*PRISMA_ALPHA_RANGE, color="gray", alpha=0.2)
    ax.set(title="alpha against rank slope", xlabel="rank slope b", ylabel="alpha (WeightWatcher)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def spectra_figure(df: pd.DataFrame, spectra: dict, components: list[str], n_layers: int):
    """Singular values per component, linear and log-log, coloured by depth, with the median MP edge."""
    fig, axes = subplots(2, len(components), width=3.2, height=3.0)
    colors = depth_colors(n_layers)
    for j, wt in enumerate(components):
        for layer in sorted(layer for (layer, w) in spectra if w == wt):
            s = spectra[(layer, wt)]
            color = colors[layer] if layer >= 0 else "black"
            axes[0, j].plot(s, color=color, linewidth=0.8)
            axes[1, j].loglog(np.arange(1, s.size + 1), s, color=color, linewidth=0.8)
        for ax in axes[:, j]:
            ax.axhline(float(df[df.weight == wt].mp_edge.median()), color="gray", linestyle=":", linewidth=1)
        axes[0, j].set_title(wt)
        axes[1, j].set_xlabel("index")
    axes[0, 0].set_ylabel("singular value")
    axes[1, 0].set_ylabel("singular value (log-log)")
    fig.tight_layout()
    depth_colorbar(fig, axes, n_layers, label="layer (embedding and unembedding: black)")
    return fig
