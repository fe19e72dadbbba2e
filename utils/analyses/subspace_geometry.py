"""Notebook 03's analyses (seed `2.py`): the top-k singular subspaces of every head's attention
kernel, their overlap across layers, convergence towards a reference layer, the FFN's alignment
with them, and the seed's three verdicts.

The geometry (subspaces, similarity ||U V^T||_F^2 / k, energy ||W U^T||_F^2 / ||W||_F^2, chance
k/d) lives in `utils.metrics.subspaces`; this module turns it into the notebook's results, each a
dataclass whose fields the findings sentences and the tests read:

- `subspace_setup(name, dims, head, k, reference_layer) -> SubspaceSetup`: the parameters checked
  against the model, k clipped to d_head (the kernel's rank bound), chance k/d.
- `layer_overlap(adapter, setup) -> LayerOverlap`: (h, L, L) similarities per side, their head
  mean, the seed's block-structure statistics (`overlap_statistics`), similarity by layer
  distance and phase boundaries (`phase_boundaries`).
- `reference_convergence(adapter, overlap, setup, activation_spectra) -> Convergence`: the
  reference layer (`choose_reference_layer`), similarity to it and the Pearson trends of that
  similarity against layer index before and after it (`index_trend`).
- `alignment_survey(adapter, overlap) -> FFNAlignment`: per layer, head and side the share of
  the FFN input weights' energy inside the head's subspace.
- `cross_reference(...) -> CrossReference`: per-layer metrics and their Pearson r with notebook
  01's weight effective ranks.
- `seed_verdicts(...) -> SeedVerdicts`: each of the seed's verdicts on its own inputs (head
  `head`, key side, W_gate) and on all heads (gate and up stacked), with its statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from utils.metrics.kernels import kernel_table
from utils.metrics.subspaces import SIDES, chance_similarity, ffn_alignment, layer_subspaces, similarity_matrix
from utils.models.adapters import ModelDims, WeightAdapter
from utils.reporting.plotting import heatmap, subplots
from utils.reporting.report import Report, fmt

# --- layer x layer summaries of notebook 03 (seed `2.py`) -------------------------------------

def overlap_statistics(S, distant_gap: int) -> dict[str, float]:
    """The seed's block-structure diagnostics of one L x L similarity matrix S: off-diagonal
    mean/std/min/max, adjacent (|i - j| = 1) and distant (|i - j| > distant_gap) mean and std, and
    the adjacent - distant gap (NaN where a set is empty)."""
    S = np.asarray(S, dtype=float)
    i, j = np.indices(S.shape)
    off, adjacent, distant = S[i != j], np.diag(S, 1), S[np.abs(i - j) > distant_gap]

    def stat(values, fn):
        return float(fn(values)) if values.size else float("nan")

    return {
        "off-diagonal mean": stat(off, np.mean), "off-diagonal std": stat(off, np.std),
        "off-diagonal min": stat(off, np.min), "off-diagonal max": stat(off, np.max),
        "adjacent mean": stat(adjacent, np.mean), "adjacent std": stat(adjacent, np.std),
        f"distant (> {distant_gap} apart) mean": stat(distant, np.mean),
        f"distant (> {distant_gap} apart) std": stat(distant, np.std),
        "adjacent - distant": stat(adjacent, np.mean) - stat(distant, np.mean),
    }


def index_trend(values) -> float:
    """Pearson r of a series against its index (the seed's convergence trend, computed as the seed
    does for more than one point: two points give +-1); NaN for fewer than 2 points or a constant
    series."""
    values = np.asarray(values, dtype=float)
    if values.size < 2 or np.ptp(values) == 0:
        return float("nan")
    return float(np.corrcoef(np.arange(values.size), values)[0, 1])


REFERENCE_MARGIN = 2  # the reference layer needs this many layers on each side (2.py: layer 33 of 36)


def reference_candidates(n_layers: int, margin: int = REFERENCE_MARGIN):
    """Layers with at least `margin` layers on each side (all layers when the model is too shallow),
    so that convergence towards the reference can be tested from both directions (a trend needs
    two points). With the default margin 2, layer 33 of a 36-layer model (the seed's choice for
    Qwen2.5-3B) is a candidate."""
    return np.arange(margin, n_layers - margin) if n_layers >= 2 * margin + 1 else np.arange(n_layers)


def choose_reference_layer(kernel_eff_rank, activation_spectra=None, margin: int = REFERENCE_MARGIN) -> tuple[int, str]:
    """The bottleneck reference layer of notebook 03 and the rule that chose it.

    kernel_eff_rank: (L,) mean kernel effective rank per block. activation_spectra: notebook 04's
    `activation_spectra.csv` as a DataFrame (row `layer` i = residual stream after block i - 1,
    row 0 = embeddings) or None. Among `reference_candidates`, the block with the lowest activation
    effective rank when that table covers every block, else the lowest kernel effective rank.
    """
    kernel_eff_rank = np.asarray(kernel_eff_rank, dtype=float)
    L = kernel_eff_rank.size
    candidates = reference_candidates(L, margin)
    span = f"layers {candidates[0]}-{candidates[-1]}"
    if activation_spectra is not None and {"layer", "eff_rank"} <= set(activation_spectra.columns):
        rows = activation_spectra[activation_spectra.layer >= 1]
        if sorted(rows.layer) == list(range(1, L + 1)):
            rows = rows[(rows.layer - 1).isin(candidates)]
            best = rows.loc[rows.eff_rank.idxmin()]
            ref = int(best.layer) - 1
            return ref, (f"lowest activation effective rank among {span} in notebook 04's activation spectra "
                         f"(row layer {ref + 1} = after block {ref}; {best.eff_rank:.1f})")
    ref = int(candidates[np.argmin(kernel_eff_rank[candidates])])
    return ref, f"lowest mean kernel effective rank over heads among {span} ({kernel_eff_rank[ref]:.2f})"


# --- the three verdicts of seed `2.py` (its thresholds) ---------------------------------------

def phase_boundaries(S, n: int = 10) -> pd.DataFrame:
    """The seed's phase-boundary detection on an L x L similarity matrix: the `n` largest drops in
    adjacent-layer similarity a_i = S[i, i+1], change a_{i+1} - a_i, boundary (i+1)->(i+2)."""
    adjacent = np.diag(np.asarray(S, dtype=float), 1)  # (L-1,)
    drops = np.diff(adjacent)  # drops[i] = a_{i+1} - a_i
    order = np.argsort(drops, kind="stable")[:n]
    return pd.DataFrame({"boundary": [f"{i + 1}->{i + 2}" for i in order], "adjacent similarity": adjacent[order + 1],
                         "change from previous pair": drops[order]})


def overlap_verdict(stats: dict, chance: float) -> tuple[str, str]:
    """Experiment 1 of `2.py` from `overlap_statistics`: phase structure if adjacent - distant > 0.05,
    else redundancy if the off-diagonal mean exceeds 0.7, else moderate. Returns (label, sentence)."""
    gap, off = stats["adjacent - distant"], stats["off-diagonal mean"]
    distant = next(v for name, v in stats.items() if name.startswith("distant") and name.endswith("mean"))
    if gap > 0.05:
        return "phase structure", (f"adjacent layers share more subspace ({stats['adjacent mean']:.3f}) than distant ones "
                                   f"({distant:.3f}; gap {gap:+.3f} > 0.05): nearby layers refine similar subspaces")
    if off > 0.7:
        return "uniformly high", f"uniformly high similarity (off-diagonal mean {off:.3f} > 0.7): depth may be partly redundant"
    return "moderate", (f"moderate similarity (off-diagonal mean {off:.3f}, adjacent - distant {gap:+.3f}, chance k/d = "
                        f"{chance:.3f}): layers share some subspace but target distinct directions")


def convergence_verdict(pre: float, post: float) -> tuple[str, str]:
    """Experiment 2 of `2.py` from the Pearson trends of similarity to the reference before and after
    it: a convergence point if pre > 0.3 and post < -0.3, partial if only pre > 0.3, else none."""
    trends = f"pre r = {pre:+.3f}, post r = {post:+.3f}"
    if np.isnan(pre) or np.isnan(post):
        return "not testable", f"not testable from both sides ({trends}; two layers are needed on each side)"
    if pre > 0.3 and post < -0.3:
        return "convergence point", f"a convergence point: similarity rises towards it from both sides ({trends})"
    if pre > 0.3:
        return "partial", f"partial: similarity rises towards it from earlier layers but not from later ones ({trends})"
    return "no clear pattern", f"no clear pattern ({trends}): a local feature rather than a convergence point"


def alignment_verdict(ratio: float) -> tuple[str, str]:
    """Experiment 3 of `2.py` from mean alignment / chance: coupled above 1.5, avoidance below 0.7."""
    if ratio > 1.5:
        return "coupled", f"coupled ({ratio:.2f}x chance > 1.5): FFN and attention share subspaces"
    if ratio < 0.7:
        return "avoidance", f"avoidance ({ratio:.2f}x chance < 0.7): the FFN reads the orthogonal complement"
    return "near chance", f"near chance ({ratio:.2f}x, between 0.7 and 1.5): no strong coupling or avoidance"

# --- parameters ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubspaceSetup:
    """Notebook 03's parameters checked against the model: subspace rank k = min(k requested, d_head),
    chance = k/d (expected similarity of independent random k-dim subspaces), distant_gap = L // 3
    (pairs further apart count as distant), reference = a layer index or None for "auto"."""

    head: int
    k: int
    k_requested: int
    d: int
    d_head: int
    L: int
    h: int
    reference: int | None

    @property
    def chance(self) -> float:
        return chance_similarity(self.k, self.d)

    @property
    def distant_gap(self) -> int:
        return self.L // 3

    @property
    def k_note(self) -> str:
        note = (f"k = {self.k_requested} was clipped to d_head = {self.d_head}: the kernel has rank <= d_head."
                if self.k < self.k_requested else "")
        if self.k == self.d_head:
            note += (" With k = d_head the key-side subspace is the whole row space of W_K (shared by the query heads "
                     "of a KV group) and the query-side one that of W_Q_h.")
        return note


def subspace_setup(name: str, dims: ModelDims, head: int, k: int, reference_layer: str = "auto") -> SubspaceSetup:
    """`SubspaceSetup`, with clear errors naming a parameter out of range (before any heavy work)."""
    L = dims.L
    if not 0 <= head < dims.h:
        raise ValueError(f"parameter head={head} is out of range: {name} has query heads 0..{dims.h - 1}")
    if k < 1:
        raise ValueError(f"parameter k={k} must be at least 1")
    reference = None
    if str(reference_layer) != "auto":
        try:
            reference = int(reference_layer)
        except ValueError:
            reference = None
        if reference is None or not 0 <= reference < L:
            raise ValueError(f"parameter reference_layer={reference_layer!r} is out of range: {name} has "
                             f"layers 0..{L - 1} (or \"auto\")")
    return SubspaceSetup(head=head, k=min(k, dims.d_head), k_requested=k, d=dims.d, d_head=dims.d_head, L=L, h=dims.h,
                         reference=reference)


# --- 1. overlap across layers --------------------------------------------------------------------

@dataclass(frozen=True)
class LayerOverlap:
    """Similarity ||U V^T||_F^2 / k of the top-k kernel subspaces of every pair of layers.

    subspaces[side]: (L, h, k, d) orthonormal rows; similarity[side]: (h, L, L) per head;
    head_mean[side]: (L, L) mean over heads. statistics: `overlap_statistics` of the four matrices
    of `matrices()` (columns); by_distance: mean similarity at layer distance delta, mean of the
    delta-th diagonal; boundaries: `phase_boundaries` of head `head`'s and the head-mean key matrix."""

    setup: SubspaceSetup
    subspaces: dict[str, torch.Tensor]
    similarity: dict[str, np.ndarray]
    head_mean: dict[str, np.ndarray]
    statistics: pd.DataFrame
    by_distance: pd.DataFrame
    boundaries: pd.DataFrame

    def matrices(self) -> dict[str, np.ndarray]:
        """The four L x L matrices the notebook shows: head `head` and the head mean, key and query side."""
        return _matrices(self.similarity, self.head_mean, self.setup.head)

    def arrays(self) -> dict[str, np.ndarray]:
        """The notebook's .npy files, by file stem."""
        head = self.setup.head
        return {"subspace_similarity": self.head_mean["key"], f"subspace_similarity_head{head}": self.similarity["key"][head],
                "subspace_similarity_query": self.head_mean["query"],
                f"subspace_similarity_query_head{head}": self.similarity["query"][head]}


def _matrices(similarity: dict, head_mean: dict, head: int) -> dict[str, np.ndarray]:
    return {f"head {head}, key": similarity["key"][head], "head mean, key": head_mean["key"],
            f"head {head}, query": similarity["query"][head], "head mean, query": head_mean["query"]}


def _by_distance(matrices: dict[str, np.ndarray], L: int) -> pd.DataFrame:
    distances = sorted({dist for dist in (1, 2, 3, 5, 10, 15, 20, L // 2) if 1 <= dist < L})
    table = pd.DataFrame({"distance": distances, "pairs": [L - dist for dist in distances]})
    for name, S in matrices.items():
        table[name] = [np.diag(S, dist).mean() for dist in distances]
    return table


def layer_overlap(adapter: WeightAdapter, setup: SubspaceSetup) -> LayerOverlap:
    """`LayerOverlap` over all layers and heads, both sides (one factored SVD per layer and side)."""
    L, K, head = setup.L, setup.k, setup.head
    subspaces = {side: torch.stack([layer_subspaces(adapter, layer, K, side) for layer in tqdm(range(L), desc=side)])
                 for side in SIDES}  # side -> (L, h, K, d)
    similarity = {side: similarity_matrix(subs.transpose(0, 1)).cpu().numpy() for side, subs in subspaces.items()}
    head_mean = {side: sims.mean(axis=0) for side, sims in similarity.items()}
    matrices = _matrices(similarity, head_mean, head)
    statistics = pd.DataFrame({name: overlap_statistics(S, setup.distant_gap) for name, S in matrices.items()})
    boundaries = pd.concat([phase_boundaries(similarity["key"][head]).assign(inputs=f"head {head}, key (seed)"),
                            phase_boundaries(head_mean["key"]).assign(inputs="head mean, key")], ignore_index=True)
    return LayerOverlap(setup, subspaces, similarity, head_mean, statistics, _by_distance(matrices, L), boundaries)


def plot_overlap(overlap: LayerOverlap):
    """The four L x L similarity matrices of `LayerOverlap.matrices` as heatmaps."""
    fig, axes = subplots(2, 2, width=5.0, height=4.2)
    for ax, (name, S) in zip(axes.flat, overlap.matrices().items()):
        heatmap(ax, S, f"Subspace overlap ({name}, top-{overlap.setup.k})", "layer", "layer", "similarity", vmin=0, vmax=1)
    fig.tight_layout()
    return fig


def plot_similarity_by_distance(overlap: LayerOverlap):
    table, chance = overlap.by_distance, overlap.setup.chance
    fig, axes = subplots(1, 1, width=6.5, height=3.8)
    for name in overlap.matrices():
        axes[0, 0].plot(table.distance, table[name], marker=".", label=name)
    axes[0, 0].axhline(chance, color="r", linestyle="--", label=f"chance k/d = {chance:.3f}")
    axes[0, 0].set(title="Similarity by layer distance", xlabel="layer distance", ylabel="mean similarity")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- 2. convergence to a reference layer ---------------------------------------------------------

@dataclass(frozen=True)
class Convergence:
    """Similarity of every layer's key-side subspace to the reference layer `ref` (to_ref: one row per
    layer; head `head`, head mean and std, head mean on the query side) and, per series, its mean and
    Pearson trend r against layer index before and after `ref` (table: statistics x series)."""

    ref: int
    rule: str  # how the reference was chosen
    kernel_eff_rank: np.ndarray  # (L,) mean kernel effective rank over heads
    to_ref: pd.DataFrame
    table: pd.DataFrame

    def trends(self, series: str) -> tuple[float, float]:
        """(pre, post) Pearson r of one series of `table`."""
        col = self.table[series]
        return col["pre-reference trend r"], col["post-reference trend r"]


def _reference(setup: SubspaceSetup, kernel_eff_rank: np.ndarray, activation_spectra: Path) -> tuple[int, str]:
    if setup.reference is not None:
        return setup.reference, "set by the `reference_layer` parameter"
    acts = pd.read_csv(activation_spectra) if activation_spectra.exists() else None
    ref, rule = choose_reference_layer(kernel_eff_rank, acts)
    if acts is None:
        rule += f"; notebook 04's activation spectra were not available at `{activation_spectra}`"
    return ref, rule


def _trend_table(to_ref: pd.DataFrame, ref: int, columns) -> pd.DataFrame:
    table = {}
    for col in columns:
        values = to_ref[col].to_numpy()
        before, after = values[:ref], values[ref + 1:]
        table[col] = {"mean before": before.mean() if before.size else float("nan"),
                      "mean after": after.mean() if after.size else float("nan"),
                      "pre-reference trend r": index_trend(before), "post-reference trend r": index_trend(after)}
    return pd.DataFrame(table)


def reference_convergence(adapter: WeightAdapter, overlap: LayerOverlap, activation_spectra: Path) -> Convergence:
    """`Convergence` towards the reference layer: `setup.reference`, or for "auto" the block of lowest
    activation effective rank in notebook 04's `activation_spectra` CSV when it exists, else of
    lowest mean kernel effective rank (`choose_reference_layer`)."""
    setup, sim = overlap.setup, overlap.similarity
    kernel_eff_rank = kernel_table(adapter, progress=False).groupby("layer").eff_rank.mean().to_numpy()  # (L,)
    ref, rule = _reference(setup, kernel_eff_rank, Path(activation_spectra))
    head = setup.head
    to_ref = pd.DataFrame({"layer": np.arange(setup.L), f"head {head}": sim["key"][head][ref],
                           "head mean": sim["key"][:, ref].mean(axis=0), "head std": sim["key"][:, ref].std(axis=0),
                           "head mean, query": sim["query"][:, ref].mean(axis=0)})
    table = _trend_table(to_ref, ref, (f"head {head}", "head mean", "head mean, query"))
    return Convergence(ref, rule, kernel_eff_rank, to_ref, table)


def plot_convergence(conv: Convergence, setup: SubspaceSetup):
    to_ref, ref, head = conv.to_ref, conv.ref, setup.head
    fig, axes = subplots(1, 1, width=8, height=3.8)
    ax = axes[0, 0]
    ax.plot(to_ref.layer, to_ref[f"head {head}"], marker=".", label=f"head {head}")
    ax.plot(to_ref.layer, to_ref["head mean"], marker=".", label="head mean")
    ax.fill_between(to_ref.layer, to_ref["head mean"] - to_ref["head std"], to_ref["head mean"] + to_ref["head std"],
                    alpha=0.2)
    ax.axvline(ref, color="r", linestyle="--", alpha=0.5, label=f"reference layer {ref}")
    ax.axhline(setup.chance, color="gray", linestyle=":", label="chance k/d")
    ax.set(title=f"Similarity to layer {ref} (key side, top-{setup.k})", xlabel="layer", ylabel="similarity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- 3. FFN-attention alignment ------------------------------------------------------------------

@dataclass(frozen=True)
class FFNAlignment:
    """Share ||W U^T||_F^2 / ||W||_F^2 of the FFN input weights' energy inside each head's subspace U.

    table: one row per layer, head and side: alignment (gate and up stacked), alignment_in (W_in),
    alignment_gate (W_gate, NaN without a gate), chance k/d. per_layer: mean and std over heads per
    side and layer; key_grid: (L, h) key-side alignment; summary: statistics x sides."""

    table: pd.DataFrame
    per_layer: pd.DataFrame
    key_grid: np.ndarray
    summary: pd.DataFrame
    gated: bool
    chance: float

    def over_chance(self, side: str) -> float:
        """Mean alignment over layers and heads / chance."""
        return self.summary.loc["mean / chance", side]


def _alignment_rows(adapter: WeightAdapter, overlap: LayerOverlap) -> tuple[pd.DataFrame, bool]:
    h, chance, rows, gated = overlap.setup.h, overlap.setup.chance, [], False
    for layer in tqdm(range(overlap.setup.L), desc="FFN alignment"):
        ffn = adapter.ffn(layer)
        if layer == 0:
            gated = ffn.w_gate is not None
        kv_head = adapter.attention(layer).kv_head_of.cpu().numpy()
        for side in SIDES:
            shares = ffn_alignment(ffn, overlap.subspaces[side][layer])  # name -> (h,)
            gate = shares.get("gate", torch.full((h,), float("nan")))
            rows.append(pd.DataFrame({"layer": layer, "head": np.arange(h), "kv_head": kv_head, "side": side,
                                      "alignment": shares["all"].cpu().numpy(), "alignment_in": shares["in"].cpu().numpy(),
                                      "alignment_gate": gate.cpu().numpy(), "chance": chance}))
    return pd.concat(rows, ignore_index=True), gated


def _alignment_summary(table: pd.DataFrame, chance: float, L: int) -> pd.DataFrame:
    summary = {}
    for side in SIDES:
        sub = table[table.side == side]
        per_layer = sub.groupby("layer").alignment.mean()
        summary[side] = {"mean": sub.alignment.mean(), "mean / chance": sub.alignment.mean() / chance,
                         "std": sub.alignment.std(), "min": sub.alignment.min(), "max": sub.alignment.max(),
                         "heads above chance": float((sub.alignment > chance).mean()),
                         "layers above chance (head mean)": f"{int((per_layer > chance).sum())}/{L}",
                         "highest layer (head mean)": int(per_layer.idxmax()), "lowest layer (head mean)": int(per_layer.idxmin())}
    return pd.DataFrame(summary)


def alignment_survey(adapter: WeightAdapter, overlap: LayerOverlap) -> FFNAlignment:
    """`FFNAlignment` of every layer, head and side."""
    table, gated = _alignment_rows(adapter, overlap)
    chance = overlap.setup.chance
    per_layer = table.groupby(["side", "layer"]).alignment.agg(["mean", "std"]).reset_index()
    key_grid = table[table.side == "key"].pivot(index="layer", columns="head", values="alignment").to_numpy()  # (L, h)
    return FFNAlignment(table, per_layer, key_grid, _alignment_summary(table, chance, overlap.setup.L), gated, chance)


def plot_alignment(align: FFNAlignment, setup: SubspaceSetup):
    """Head-mean alignment per layer and side (band: +- std), head `head`'s, and the key grid / chance."""
    L, chance = setup.L, align.chance
    fig, axes = subplots(1, 2, width=6.0, height=max(3.6, 0.14 * L + 1.5))
    ax = axes[0, 0]
    for side in SIDES:
        sub = align.per_layer[align.per_layer.side == side]
        ax.plot(sub.layer, sub["mean"], marker=".", label=f"head mean, {side}")
        ax.fill_between(sub.layer, sub["mean"] - sub["std"], sub["mean"] + sub["std"], alpha=0.2)
    ax.plot(np.arange(L), align.key_grid[:, setup.head], marker=".", label=f"head {setup.head}, key")
    ax.axhline(chance, color="r", linestyle="--", label=f"chance k/d = {chance:.4f}")
    ax.set(title=f"FFN input energy in the attention subspace (top-{setup.k})", xlabel="layer", ylabel="share")
    ax.legend(fontsize=8)
    heatmap(axes[0, 1], align.key_grid / chance, "Alignment / chance (key side)", "head", "layer", "x chance", vmin=0)
    fig.tight_layout()
    return fig


# --- 4. cross-reference with notebook 01 ---------------------------------------------------------

@dataclass(frozen=True)
class CrossReference:
    """Per-layer subspace metrics (layer_metrics) and, when notebook 01's weight_spectra.csv exists,
    Pearson r over layers between each weight type's effective rank and each metric (correlations;
    NaN with 2 layers or fewer); note says which."""

    layer_metrics: pd.DataFrame
    correlations: pd.DataFrame | None
    note: str


CROSS_TARGETS = ("kernel eff_rank", "adjacent similarity", "similarity to reference", "FFN alignment")


def _correlations(layer_metrics: pd.DataFrame, spectra: pd.DataFrame) -> pd.DataFrame:
    blocks = spectra[spectra.layer >= 0]
    ranks = blocks.pivot_table(index="layer", columns="weight", values="eff_rank")
    ranks.insert(0, "mean over weights", ranks.mean(axis=1))
    merged = layer_metrics.merge(ranks, left_on="layer", right_index=True, how="left")
    return pd.DataFrame(
        {t: [merged[[c, t]].dropna().corr().iloc[0, 1] if merged[[c, t]].dropna().shape[0] > 2 else np.nan
             for c in ranks.columns] for t in CROSS_TARGETS}, index=ranks.columns).reset_index(names="weight eff_rank")


def cross_reference(overlap: LayerOverlap, conv: Convergence, align: FFNAlignment, weights_csv: Path,
                    name: str) -> CrossReference:
    """`CrossReference` of the per-layer metrics with notebook 01's `weights_csv`."""
    layer_metrics = pd.DataFrame({
        "layer": np.arange(overlap.setup.L),
        "kernel eff_rank": conv.kernel_eff_rank,
        "adjacent similarity": np.append(np.diag(overlap.head_mean["key"], 1), np.nan),  # sim(l, l + 1), as the seed
        "similarity to reference": conv.to_ref["head mean"].to_numpy(),
        "FFN alignment": align.per_layer[align.per_layer.side == "key"]["mean"].to_numpy(),
    })
    weights_csv = Path(weights_csv)
    if not weights_csv.exists():
        return CrossReference(layer_metrics, None, (
            f"Notebook 01's `{weights_csv.name}` was not found at `{weights_csv}`. Produce it with "
            f"`make MODEL={name}` or `python -m utils.run 01_weight_spectra {name}` "
            "and re-run this notebook for the correlations."))
    note = f"Pearson r over layers between notebook 01's effective ranks (`{weights_csv}`) and the subspace metrics."
    return CrossReference(layer_metrics, _correlations(layer_metrics, pd.read_csv(weights_csv)), note)




# --- the seed's verdicts on its inputs and on all heads ------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One of the seed's verdicts (`overlap_verdict`, `convergence_verdict`, `alignment_verdict`) on
    named inputs, with the statistics it rests on (NaN where the experiment has none)."""

    experiment: str
    inputs: str
    seed_inputs: bool  # the seed's own inputs: head `head`, key side, W_gate
    verdict: str
    detail: str
    adjacent_minus_distant: float = math.nan
    off_diagonal_mean: float = math.nan
    pre_trend_r: float = math.nan
    post_trend_r: float = math.nan
    alignment_over_chance: float = math.nan

    def row(self) -> dict:
        return {"experiment": self.experiment, "inputs": self.inputs, "seed_inputs": self.seed_inputs,
                "verdict": self.verdict, "adjacent_minus_distant": self.adjacent_minus_distant,
                "off_diagonal_mean": self.off_diagonal_mean, "pre_trend_r": self.pre_trend_r,
                "post_trend_r": self.post_trend_r, "alignment_over_chance": self.alignment_over_chance,
                "detail": self.detail}


@dataclass(frozen=True)
class SeedVerdicts:
    """The six verdicts (three experiments, each on the seed's inputs then on all heads), the rule
    that chose the reference layer, and the query side's overlap and alignment for comparison."""

    verdicts: tuple[Verdict, ...]
    reference_rule: str
    query_off_diagonal_mean: float
    query_adjacent_minus_distant: float
    query_alignment_over_chance: float

    def table(self) -> pd.DataFrame:
        """verdicts.csv: one row per verdict."""
        return pd.DataFrame([v.row() for v in self.verdicts])

    def sentences(self) -> list[str]:
        pairs = [self.verdicts[i:i + 2] for i in range(0, len(self.verdicts), 2)]  # (seed inputs, all heads)
        findings = [f"{seed.experiment[3:]}: on {seed.inputs}, {seed.detail}. On {every.inputs}, {every.detail}."
                    for seed, every in pairs]
        findings[1] += f" Reference layer: {self.reference_rule}."
        findings.append(
            f"Query side for comparison (all heads): off-diagonal mean {self.query_off_diagonal_mean:.3f}, "
            f"adjacent - distant {self.query_adjacent_minus_distant:+.3f}, FFN alignment "
            f"{self.query_alignment_over_chance:.2f}x chance.")
        return findings


def _overlap_verdicts(overlap: LayerOverlap) -> list[Verdict]:
    s, stats = overlap.setup, overlap.statistics
    found = []
    for column, inputs, seed in ((f"head {s.head}, key", f"head {s.head}, key side (seed)", True),
                                 ("head mean, key", f"mean over all {s.h} heads, key side", False)):
        label, detail = overlap_verdict(stats[column], s.chance)
        found.append(Verdict("1. Subspace overlap", inputs, seed, label, detail,
                             adjacent_minus_distant=stats[column]["adjacent - distant"],
                             off_diagonal_mean=stats[column]["off-diagonal mean"]))
    return found


def _convergence_verdicts(conv: Convergence, s: SubspaceSetup) -> list[Verdict]:
    found = []
    for column, inputs, seed in ((f"head {s.head}", f"head {s.head}, key side (seed)", True),
                                 ("head mean", f"mean over all {s.h} heads, key side", False)):
        pre, post = conv.trends(column)
        label, detail = convergence_verdict(pre, post)
        found.append(Verdict(f"2. Convergence to layer {conv.ref}", inputs, seed, label, detail,
                             pre_trend_r=pre, post_trend_r=post))
    return found


def _alignment_verdicts(align: FFNAlignment, s: SubspaceSetup) -> list[Verdict]:
    seed_ffn, seed_col = ("W_gate", "alignment_gate") if align.gated else ("W_in (this FFN has no gate)", "alignment_in")
    key = align.table[align.table.side == "key"]
    seed_ratio = key[key["head"] == s.head][seed_col].mean() / align.chance  # mean over layers, as the seed
    all_ratio = key.alignment.mean() / align.chance  # mean over layers and heads
    experiment = "3. FFN-attention alignment"
    return [Verdict(experiment, f"{seed_ffn}, head {s.head}, key side (seed)", True, *alignment_verdict(seed_ratio),
                    alignment_over_chance=seed_ratio),
            Verdict(experiment, f"{'W_gate and W_in stacked' if align.gated else 'W_in'}, all {s.h} heads, key side",
                    False, *alignment_verdict(all_ratio), alignment_over_chance=all_ratio)]


def seed_verdicts(overlap: LayerOverlap, conv: Convergence, align: FFNAlignment) -> SeedVerdicts:
    """`SeedVerdicts`: the seed's three experiments on its inputs and on all heads."""
    s, stats = overlap.setup, overlap.statistics
    verdicts = _overlap_verdicts(overlap) + _convergence_verdicts(conv, s) + _alignment_verdicts(align, s)
    return SeedVerdicts(tuple(verdicts), conv.rule, stats.loc["off-diagonal mean", "head mean, query"],
                        stats.loc["adjacent - distant", "head mean, query"], align.over_chance("query"))


# --- the report ----------------------------------------------------------------------------------

def _definitions(setup: SubspaceSetup) -> list[str]:
    return [
        "Kernel A_h = W_Q_h^T W_K_h (factored, `utils.metrics.kernels`). Key side = top-k right singular vectors (row space of "
        "W_K: directions along which the attended-to token is read; the seed's \"subspace the head queries\"); query "
        "side = top-k left singular vectors (row space of W_Q).",
        f"Similarity = ||U V^T||_F^2 / k, the mean squared cosine of the principal angles: 1 equal, {setup.chance:.4f} = k/d "
        "by chance, 0 orthogonal. Alignment = ||W U^T||_F^2 / ||W||_F^2 for the FFN input weights W.",
        "The kernel leaves out rotary position embeddings, Gemma's q/k norms and the pre-attention norm gains; the "
        "score scale does not change singular subspaces.",
    ] + ([setup.k_note.strip()] if setup.k_note else [])


def _overlap_section(report: Report, overlap: LayerOverlap, out: Path) -> None:
    report.heading("1. Subspace overlap across layers")
    report.table(overlap.statistics.reset_index(names="statistic"))
    report.figure(out / "subspace_overlap.png", "Subspace similarity between layers, one head and the mean over heads")
    report.heading("Similarity by layer distance", level=3).table(overlap.by_distance)
    report.figure(out / "similarity_by_distance.png", "Mean similarity against layer distance")
    report.heading(f"Phase boundaries (largest drops in adjacent similarity; head {overlap.setup.head} as the seed, "
                   "and head mean; key side)", level=3)
    if len(overlap.boundaries):
        report.table(overlap.boundaries)
    else:
        report.paragraph("Too few layers for boundaries.")


def subspace_report(loaded, overlap: LayerOverlap, conv: Convergence, align: FFNAlignment, cross: CrossReference,
                    verdicts: SeedVerdicts, findings: list[str], out: Path) -> Report:
    """Notebook 03's report.md (figures in `out`)."""
    setup, ref = overlap.setup, conv.ref
    report = Report.for_notebook("03_subspace_geometry", loaded)
    report.model_section(loaded, **{"subspace rank k": setup.k, "chance k/d": setup.chance, "head": setup.head})
    report.heading("Findings").bullets(findings)
    report.heading("The seed's verdicts by inputs", level=3)
    report.paragraph("`verdicts.csv`; thresholds of `2.py`: overlap gap 0.05 and mean 0.7, trends +-0.3, alignment 0.7x and 1.5x chance.")
    table = verdicts.table()
    report.table(table.drop(columns="detail").assign(seed_inputs=table.seed_inputs.map({True: "yes", False: "no"})).map(fmt))
    report.heading("Definitions and caveats").bullets(_definitions(setup))
    _overlap_section(report, overlap, out)
    report.heading(f"2. Convergence to layer {ref}")
    report.paragraph(f"Reference layer {ref}: {conv.rule}. Per-layer values: `similarity_to_reference.csv`.")
    report.table(conv.table.reset_index(names="statistic"))
    report.figure(out / "similarity_to_reference.png", f"Similarity to layer {ref}")
    report.heading("3. FFN-attention alignment")
    report.paragraph("Per layer, head and side: `ffn_attn_alignment.csv` (`alignment` = gate and up stacked, "
                     "`alignment_gate` = W_gate alone, the seed's input, `alignment_in` = W_in alone). The table "
                     "summarises `alignment` over all heads.")
    report.table(align.summary.map(fmt).reset_index(names="statistic"))
    report.figure(out / "ffn_attn_alignment.png", "FFN input energy inside the attention subspaces")
    report.heading("4. Cross-reference with weight effective ranks (notebook 01)")
    report.paragraph(cross.note)
    if cross.correlations is not None:
        report.table(cross.correlations)
    report.heading("Per-layer metrics", level=3).table(cross.layer_metrics)
    return report
