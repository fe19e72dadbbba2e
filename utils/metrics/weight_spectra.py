"""Weight spectra of every matrix of a model, and the layer-wise summaries of notebook 01.

Seed: `1.py` (effective ranks per layer and weight type, statistics table, encode/compute/decode
phase analysis, sharpest transitions) and the Prisma write-up (stable rank, power-law alpha,
Marchenko-Pastur signal ratio, spectra per component).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from utils.metrics.deltas import block_matrices, delta_matrices, lora_updates
from utils.metrics.power_law import bootstrap_seconds, bootstrap_workers, submit_alpha_columns, with_alpha_columns
from utils.metrics.spectra import entry_std, singular_values, spectrum_weight_metrics
from utils.metrics.truncated_power_law import truncated_columns, truncated_power_law_fit
from utils.metrics.weightwatcher import (
    WW_DEFAULT_COLUMNS,
    clipped_columns,
    clipped_power_law_fit,
    correlation_traps,
    marchenko_pastur_fit,
    peak_columns,
    peak_power_law_fit,
    resolved_singular_values,
    ww_columns,
    xmin_peak_range,
)
from utils.models.adapters import WeightAdapter

METRIC_COLUMNS = ["eff_rank", "stable_rank", "spectral_norm", "fro_norm", "alpha", "alpha_xmin", "alpha_ks",
                  "rank_slope", "mp_edge", "mp_signal_ratio"]
MP_COLUMNS = ["num_spikes", "sigma_mp", "mp_softrank", "bulk_min", "bulk_max", "W_scale"]
RANDOMIZE_COLUMNS = ["max_rand_eval", "rand_distance", "ww_softrank", "ww_maxdist", "rand_num_spikes", "num_traps",
                     "rand_sigma_mp", "rand_mp_softrank", "rand_W_scale", "rand_bulk_max", "rand_bulk_min"]
FINGER_COLUMNS = ["num_fingers", "raw_alpha"]  # fix_fingers="clip_xmax" only (xmin_peak adds no column)
TPL_COLUMNS = ["Lambda"]  # fit="TPL"
INTERVAL_COLUMNS = ["alpha_low", "alpha_high", "alpha_std", "alpha_p"]
FIX_FINGERS = ("", "clip_xmax", "xmin_peak")
FITS = ("PL", "TPL")
# The Prisma write-up's "power-law alpha" of Prisma 357M and GPT-2 Medium (seed 000): a rank-slope
# magnitude (`utils.metrics.spectra.rank_slope`), not WeightWatcher's alpha.
PRISMA_ALPHA_RANGE = (0.25, 0.35)


@dataclass(frozen=True)
class SpectraOptions:
    """What to compute beside the default columns (each off by default: each costs passes).

    mp_fit, randomize, fix_fingers, fit: WeightWatcher's options of the same names (randomize draws
    numpy's RandomState(seed) in WW's order, so `np.random.seed(seed)` before WW's analyze()
    gives the same shuffles; fix_fingers "clip_xmax" or "xmin_peak"; fit "PL" or "TPL", the
    truncated power law, with "xmin_peak" WW's E_TPL); bootstrap: resamples for the interval of
    the default fit's alpha at `level` and synthetic samples for its goodness-of-fit p-value
    (`utils.metrics.power_law`; 0: none)."""

    mp_fit: bool = False
    randomize: bool = False
    fix_fingers: str = ""
    fit: str = "PL"
    bootstrap: int = 0
    level: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if self.fix_fingers not in FIX_FINGERS:
            raise ValueError(f"fix_fingers={self.fix_fingers!r}: use '' (off), 'clip_xmax' or 'xmin_peak'")
        if self.fit not in FITS:
            raise ValueError(f"fit={self.fit!r}: use 'PL' (power law) or 'TPL' (truncated power law)")
        if self.fit == "TPL" and self.fix_fingers == "clip_xmax":
            raise ValueError("fit='TPL' with fix_fingers='clip_xmax': WeightWatcher clips power-law fits only; "
                             "use fix_fingers='' or 'xmin_peak' with TPL")
        if self.bootstrap < 0 or self.bootstrap == 1 or not 0 < self.level < 1:
            raise ValueError(f"bootstrap={self.bootstrap} must be 0 (off) or >= 2, level={self.level} in (0, 1)")

    def columns(self) -> list[str]:
        return (MP_COLUMNS * self.mp_fit + RANDOMIZE_COLUMNS * self.randomize
                + FINGER_COLUMNS * (self.fix_fingers == "clip_xmax") + TPL_COLUMNS * (self.fit == "TPL")
                + INTERVAL_COLUMNS * bool(self.bootstrap))


def matrix_row(s: np.ndarray, rows: int, cols: int, sigma: float, options: SpectraOptions,
               W: torch.Tensor | None = None, rng: np.random.RandomState | None = None,
               pool: ProcessPoolExecutor | None = None) -> dict:
    """Every column of one matrix from its singular values s (descending) and entry std sigma:
    notebook 01's metrics, WeightWatcher's default frame and the options asked for. `W` is
    needed to resolve tiny singular values and for `randomize`; with a `pool`
    (`power_law.bootstrap_workers`), the bootstrap columns are left to it (a Future)."""
    m = spectrum_weight_metrics(s, rows, cols, sigma)
    fit, s = m.pop("fit"), m["singular_values"]
    resolved = resolved_singular_values(W, s) if W is not None else s
    row = {**m, **ww_columns(resolved, rows, cols, fit)}
    evals = s**2
    if (options.fix_fingers or options.fit != "PL") and fit is not None:
        row.update(refitted_columns(evals, resolved, rows, cols, options))
    if options.mp_fit:
        row.update(marchenko_pastur_fit(evals, max(rows, cols), min(rows, cols)).row())
    if options.randomize:
        row.update(correlation_traps(W, evals, rng))
    if options.bootstrap and fit is not None:  # with a pool, `power_law.with_alpha_columns(row)` fills them in
        row.update(submit_alpha_columns(pool, evals, fit, options.bootstrap, options.level, options.seed))
    return row


def refitted_columns(evals: np.ndarray, resolved: np.ndarray, rows: int, cols: int, options: SpectraOptions) -> dict:
    """The fit columns under WW's fix_fingers / fit options, with the default frame's alpha-derived
    columns (alpha_weighted, log_alpha_norm) recomputed from the new alpha, as WW does; alpha_xmin
    and alpha_ks follow the fit kept. clip_xmax: `clipped_power_law_fit`; xmin_peak:
    `peak_power_law_fit` over `xmin_peak_range`; TPL: `truncated_power_law_fit` (over that range
    with xmin_peak)."""
    if options.fit == "TPL":
        window = xmin_peak_range(evals) if options.fix_fingers == "xmin_peak" else None
        tpl = truncated_power_law_fit(evals, window)
        fit, extra = (tpl.as_power_law() if tpl else None), truncated_columns(evals, tpl)
    elif options.fix_fingers == "clip_xmax":
        clipped = clipped_power_law_fit(evals)
        fit, extra = clipped.fit, clipped_columns(evals, clipped)
    else:
        fit = peak_power_law_fit(evals)
        extra = peak_columns(evals, fit)
    nan = float("nan")
    return {**ww_columns(resolved, rows, cols, fit), **extra, "alpha_xmin": fit.xmin if fit else nan,
            "alpha_ks": fit.ks_distance if fit else nan}


def spectra_table(records: list[dict], options: SpectraOptions) -> tuple[pd.DataFrame, dict]:
    """(table, (layer, weight) -> singular values) of `weight_spectra` from its rows (`matrix_record`)."""
    spectra = {(r["layer"], r["weight"]): r.pop("singular_values") for r in records}
    df = pd.DataFrame.from_records(records)
    extra = WW_DEFAULT_COLUMNS + [c for c in options.columns() if c not in WW_DEFAULT_COLUMNS]
    cols = ["layer", "weight", "rows", "cols", "max_rank"] + METRIC_COLUMNS + extra
    return df.reindex(columns=cols), spectra


def weight_spectra(adapter: WeightAdapter, progress: bool = True, options: SpectraOptions | None = None,
                   base: WeightAdapter | None = None, workers: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Metrics of every block matrix plus the embedding and (untied) unembedding, one tensor at a
    time (with `base`, of W - W_base, one pair at a time).

    Returns a table with one row per matrix: layer (-1 outside the blocks), weight, rows, cols,
    max_rank (= min(rows, cols)), the metrics of `utils.metrics.spectra.weight_metrics`, every
    column of WeightWatcher's default frame (`utils.metrics.weightwatcher.WW_DEFAULT_COLUMNS`)
    and those of `options`; and a dict (layer, weight) -> singular values (descending).
    Unlike WeightWatcher, matrices longer than its max_N = 50,000 (large-vocabulary embeddings)
    are fitted too. With `options.bootstrap`, the bootstrap columns are computed by `workers`
    processes while the matrices are read (`power_law.bootstrap_workers`; None: the idle cores
    when the work is worth it, 0: in this process): the same numbers either way.
    """
    options = options or SpectraOptions()
    rng = np.random.RandomState(options.seed)
    matrices = block_matrices(adapter) if base is None else delta_matrices(adapter, base)
    n_blocks = adapter.dims.L * len(adapter.weight_matrices(0))
    total = n_blocks if progress else None
    expected = bootstrap_seconds(n_blocks, adapter.dims.d, options.bootstrap)  # most matrices have min(rows, cols) = d
    with bootstrap_workers(expected if options.bootstrap else 0.0, workers) as pool:
        records = [matrix_record(layer, name, W, options, rng, pool)
                   for layer, name, W in tqdm(matrices, desc="weight spectra", total=total, disable=not progress)]
        records = [with_alpha_columns(r) for r in records]
    return spectra_table(records, options)


def matrix_record(layer: int, name: str, W: torch.Tensor, options: SpectraOptions, rng: np.random.RandomState,
                  pool: ProcessPoolExecutor | None = None) -> dict:
    """`weight_spectra`'s row of one matrix W (rows x cols), its singular values included; `rng`
    draws randomize's shuffles, in the order the matrices come."""
    rows, cols = W.shape
    row = matrix_row(singular_values(W).numpy(), rows, cols, entry_std(W), options, W, rng, pool)
    return {"layer": layer, "weight": name, **row, "max_rank": min(rows, cols)}


def lora_spectra(directory: str | Path, adapter: WeightAdapter, progress: bool = True,
                 options: SpectraOptions | None = None) -> tuple[pd.DataFrame, dict]:
    """`weight_spectra` of every LoRA update s B A of a PEFT adapter directory, exactly from its
    r x r factors (`utils.metrics.deltas.LoraUpdate`); `adapter` (the base model) names the
    modules. randomize needs the dense matrix and is refused."""
    options = options or SpectraOptions()
    if options.randomize:
        raise ValueError("randomize=True needs the dense update matrix; a LoRA adapter is analysed through its "
                         "factors: set randomize=False")
    records = []
    for u in tqdm(lora_updates(directory, adapter), desc="LoRA spectra", disable=not progress):
        s = u.singular_values()
        rows, cols = u.shape
        row = matrix_row(s, rows, cols, u.entry_std(s), options)
        records.append({"layer": u.layer, "weight": u.weight, **row, "max_rank": min(rows, cols), "lora_rank": u.A.shape[0]})
    df, spectra = spectra_table(records, options)
    df.insert(5, "lora_rank", [r["lora_rank"] for r in records])
    return df, spectra


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
