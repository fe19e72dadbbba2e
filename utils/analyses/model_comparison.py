"""Layer-by-layer comparison of models of different depth (notebook 07).

Models are aligned by relative depth t = layer / (L - 1) in [0, 1] (the Prisma write-up compares
Prisma 357M with GPT-2 Medium layer by layer; with different L, relative depth is the common
axis). Effective ranks are compared relative to each matrix's maximum rank min(rows, cols), so
models of different width share one scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def relative_depth(layer: np.ndarray | pd.Series, n_layers: int) -> np.ndarray:
    """t = layer / (L - 1) for block layers (0 for a one-layer model); NaN for layer -1 (outside the blocks)."""
    layer = np.asarray(layer, dtype=float)
    t = layer / max(n_layers - 1, 1)
    return np.where(layer >= 0, t, np.nan)


def weight_comparison(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack notebook 01 tables (one per model) with `model`, `rel_depth` and `rel_eff_rank` columns.

    Each table needs the columns layer, weight, rows, cols, eff_rank, stable_rank, alpha,
    mp_signal_ratio (as `utils.metrics.weight_spectra.weight_spectra` writes them)."""
    frames = []
    for name, df in tables.items():
        n_layers = int(df.layer.max()) + 1
        frame = df.assign(model=name, rel_depth=relative_depth(df.layer, n_layers),
                          rel_eff_rank=df.eff_rank / np.minimum(df.rows, df.cols))
        frames.append(frame)
    cols = ["model", "layer", "rel_depth", "weight", "rows", "cols", "eff_rank", "rel_eff_rank", "stable_rank",
            "alpha", "mp_signal_ratio"]
    return pd.concat(frames, ignore_index=True)[cols]


def model_summary(comparison: pd.DataFrame, heavy_tail_alpha: float = 2.0) -> pd.DataFrame:
    """One row per model over its block matrices: layers, mean relative effective rank, mean stable
    rank, median alpha, share of matrices with alpha < heavy_tail_alpha, mean MP signal ratio."""
    blocks = comparison[comparison.layer >= 0]
    rows = []
    for name, sub in blocks.groupby("model", sort=False):
        alpha = sub.alpha.dropna()
        rows.append({
            "model": name, "layers": int(sub.layer.max()) + 1, "matrices": len(sub),
            "rel_eff_rank": sub.rel_eff_rank.mean(), "stable_rank": sub.stable_rank.mean(),
            "alpha_median": alpha.median() if len(alpha) else float("nan"),
            "heavy_tailed": float((alpha < heavy_tail_alpha).mean()) if len(alpha) else float("nan"),
            "mp_signal_ratio": sub.mp_signal_ratio.mean(),
        })
    return pd.DataFrame(rows)


def depth_profile(comparison: pd.DataFrame, value: str, bins: int = 10) -> pd.DataFrame:
    """Mean of `value` over block matrices in `bins` equal relative-depth bins, per model
    (rows: bin centres, columns: models); a common grid for models of different depth."""
    blocks = comparison[comparison.layer >= 0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    index = np.clip(np.digitize(blocks.rel_depth, edges[1:-1]), 0, bins - 1)
    profile = blocks.assign(bin=index).groupby(["bin", "model"], sort=False)[value].mean().unstack("model")
    profile = profile.reindex(range(bins))
    profile.index = centres[profile.index]
    profile.index.name = "rel_depth"
    return profile[list(dict.fromkeys(blocks.model))]
