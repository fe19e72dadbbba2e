"""Weight spectra of every matrix of a model, and the layer-wise summaries of notebook 01.

Seed: `1.py` (effective ranks per layer and weight type, statistics table, encode/compute/decode
phase analysis, sharpest transitions) and the Prisma write-up (stable rank, power-law alpha,
Marchenko-Pastur signal ratio, spectra per component).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from utils.metrics.spectra import weight_metrics
from utils.models.adapters import WeightAdapter

METRIC_COLUMNS = ["eff_rank", "stable_rank", "spectral_norm", "fro_norm", "alpha", "alpha_xmin", "alpha_ks",
                  "rank_slope", "mp_edge", "mp_signal_ratio"]
# The Prisma write-up's "power-law alpha" of Prisma 357M and GPT-2 Medium (seed 000): a rank-slope
# magnitude (`utils.metrics.spectra.rank_slope`), not WeightWatcher's alpha.
PRISMA_ALPHA_RANGE = (0.25, 0.35)


def weight_spectra(adapter: WeightAdapter, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Metrics of every block matrix plus the embedding and (untied) unembedding.

    Returns a table with one row per matrix: layer (-1 outside the blocks), weight, rows, cols,
    max_rank (= min(rows, cols)), the metrics of `utils.metrics.spectra.weight_metrics`, and `tied`
    for the unembedding; and a dict (layer, weight) -> singular values (descending).
    """
    records, spectra = [], {}

    def add(layer: int, name: str, W) -> None:
        m = weight_metrics(W)
        spectra[(layer, name)] = m.pop("singular_values")
        records.append({"layer": layer, "weight": name, **m, "max_rank": min(m["rows"], m["cols"])})

    for layer in tqdm(range(adapter.dims.L), desc="weight spectra", disable=not progress):
        for name, W in adapter.weight_matrices(layer).items():
            add(layer, name, W)
    add(-1, "embed", adapter.embedding())
    unembed = adapter.unembedding()
    if unembed is not None and not adapter.unembedding_is_tied():
        add(-1, "unembed", unembed)
    df = pd.DataFrame.from_records(records)
    cols = ["layer", "weight", "rows", "cols", "max_rank"] + METRIC_COLUMNS
    return df[cols], spectra


def weight_type_statistics(df: pd.DataFrame, value: str = "eff_rank") -> pd.DataFrame:
    """The seed's statistics table: per weight type, count/min/max/mean/median/std/range/first/last/CV."""
    rows = []
    blocks = df[df.layer >= 0]
    for weight, sub in blocks.groupby("weight", sort=False):
        v = sub.sort_values("layer")[value].to_numpy()
        rows.append({
            "weight": weight, "shape": f"{sub.rows.iloc[0]}x{sub.cols.iloc[0]}", "count": len(v),
            "min": v.min(), "max": v.max(), "mean": v.mean(), "median": float(np.median(v)), "std": v.std(),
            "range": v.max() - v.min(), "first": v[0], "last": v[-1],
            "cv": v.std() / v.mean() if v.mean() else float("nan"),
        })
    return pd.DataFrame(rows)


def phase_bounds(n_layers: int) -> list[tuple[str, int, int]]:
    """Early / middle / late thirds as (name, first, last) inclusive, as in the seed (L // 3)."""
    third = max(n_layers // 3, 1)
    return [("early", 0, third - 1), ("middle", third, 2 * third - 1), ("late", 2 * third, n_layers - 1)]


def phase_trend(early: float, middle: float, late: float) -> str:
    """The seed's classification of three phase means."""
    if middle < early and middle < late:
        return "U-shape"
    if middle > early and middle > late:
        return "inverted U"
    if early > middle > late:
        return "monotone down"
    if early < middle < late:
        return "monotone up"
    return "flat/other"


def phase_table(df: pd.DataFrame, n_layers: int, value: str = "eff_rank") -> pd.DataFrame:
    """Per weight type: mean of `value` in each third of the depth and the trend."""
    bounds = phase_bounds(n_layers)
    rows = []
    for weight, sub in df[df.layer >= 0].groupby("weight", sort=False):
        means = [sub[(sub.layer >= a) & (sub.layer <= b)][value].mean() for _, a, b in bounds]
        rows.append({"weight": weight, **{f"{name} ({a}-{b})": m for (name, a, b), m in zip(bounds, means)},
                     "trend": phase_trend(*means)})
    return pd.DataFrame(rows)


def sharpest_transitions(df: pd.DataFrame, value: str = "eff_rank") -> pd.DataFrame:
    """Per weight type: the largest layer-to-layer drop and jump of `value`."""
    rows = []
    for weight, sub in df[df.layer >= 0].groupby("weight", sort=False):
        v = sub.sort_values("layer")[value].to_numpy()
        if v.size < 2:
            continue
        diffs = np.diff(v)
        drop, jump = int(np.argmin(diffs)), int(np.argmax(diffs))
        rows.append({"weight": weight, "max_drop": f"{drop}->{drop + 1}", "drop": diffs[drop],
                     "max_jump": f"{jump}->{jump + 1}", "jump": diffs[jump]})
    return pd.DataFrame(rows)
