"""Subspace geometry of attention kernels (seed `2.py`): top-k singular subspaces, their overlap
across layers, and how much of the FFN's input weights lies inside them.

Subspaces are k x d matrices with orthonormal rows U (U U^T = I_k); the projector U^T U is never
formed.

- similarity of two k-dim subspaces U, V: the mean squared cosine of their principal angles
  theta_i (Bjorck & Golub 1973), sum_i cos^2 theta_i / k = ||U V^T||_F^2 / k, because the
  singular values of U V^T are the cos theta_i. 1 for equal subspaces, 0 for orthogonal ones,
  and k/d in expectation for independent uniformly random ones
  (E ||U V^T||_F^2 = sum_{ij} E (u_i . v_j)^2 = k^2 / d).
- energy of W (n x d) inside span(U): ||W U^T U||_F^2 / ||W||_F^2 = ||W U^T||_F^2 / ||W||_F^2,
  since U^T U is an orthogonal projector (||W P||^2 = tr(W P W^T) = ||W U^T||^2); k/d for a W
  with isotropic rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from utils.metrics.kernels import head_kernels
from utils.models.adapters import FFNWeights, WeightAdapter, get_adapter

SIDES = ("key", "query")


def _adapter(model_or_adapter) -> WeightAdapter:
    return model_or_adapter if isinstance(model_or_adapter, WeightAdapter) else get_adapter(model_or_adapter)


def layer_subspaces(model_or_adapter, layer: int, k: int = 20, side: str = "key") -> torch.Tensor:
    """Top-k singular subspaces of every head's kernel in one layer: (h, k, d) float64, orthonormal rows.

    side "key": right singular vectors (row space of W_K, what the attended-to token is read along;
    the seed's default); "query": left singular vectors (row space of W_Q)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    adapter = _adapter(model_or_adapter)
    adapter.check_layer(layer)
    d_head = adapter.dims.d_head
    if not 1 <= k <= d_head:
        raise ValueError(f"k must be in 1..d_head = {d_head} (the kernel has rank <= d_head), got {k}")
    u, _, v = head_kernels(adapter.attention(layer)).svd()  # (h, d, m) each
    vectors = v if side == "key" else u
    return vectors[:, :, :k].transpose(-1, -2).contiguous()  # (h, k, d)


def get_attn_subspace(model_or_adapter, layer: int, head: int, k: int = 20, side: str = "key") -> torch.Tensor:
    """Top-k singular subspace of head `head`'s kernel W_Q_h^T W_K_h in `layer`: (k, d) orthonormal rows.

    side "key" (default, as in the seed): right singular vectors, the key-side input subspace;
    side "query": left singular vectors, the query-side one."""
    adapter = _adapter(model_or_adapter)
    adapter.check_head(head)
    return layer_subspaces(adapter, layer, k, side)[head]


def subspace_similarity(U, V) -> float:
    """Mean squared cosine of the principal angles of two k-dim subspaces (orthonormal rows, k x d):
    ||U V^T||_F^2 / k. 1 equal, 0 orthogonal, k/d expected by chance."""
    U, V = torch.as_tensor(U, dtype=torch.float64), torch.as_tensor(V, dtype=torch.float64)
    if U.shape != V.shape or U.ndim != 2:
        raise ValueError(f"expected two k x d matrices of equal shape, got {tuple(U.shape)} and {tuple(V.shape)}")
    return float((U @ V.T).square().sum() / U.shape[0])


def similarity_matrix(subspaces: torch.Tensor) -> torch.Tensor:
    """Pairwise `subspace_similarity` of n subspaces (n, k, d) -> (n, n), symmetric, unit diagonal.
    A leading batch axis (b, n, k, d) gives (b, n, n)."""
    k = subspaces.shape[-2]
    gram = torch.einsum("...ikd,...jld->...ijkl", subspaces, subspaces)  # (..., n, n, k, k)
    return gram.square().sum(dim=(-1, -2)) / k


def chance_similarity(k: int, d: int) -> float:
    """Expected similarity of two independent uniformly random k-dim subspaces of R^d: k/d."""
    return k / d


def energy_in_subspace(W: torch.Tensor, subspaces: torch.Tensor) -> torch.Tensor:
    """Fraction of ||W||_F^2 (W: n x d) inside each subspace (..., k, d): ||W U^T||_F^2 / ||W||_F^2."""
    W = W.detach().to(torch.float64)
    inside = (W @ subspaces.transpose(-1, -2)).square().sum(dim=(-1, -2))  # (...,)
    return inside / W.square().sum()


def ffn_input_weights(ffn: FFNWeights) -> dict[str, torch.Tensor]:
    """The FFN matrices that read the residual stream: {"in": w_in, "gate": w_gate (if gated),
    "all": both stacked}."""
    mats = {"in": ffn.w_in}
    if ffn.w_gate is not None:
        mats["gate"] = ffn.w_gate
    mats["all"] = torch.cat(list(mats.values()), dim=0)
    return mats


def ffn_alignment(ffn: FFNWeights, subspaces: torch.Tensor) -> dict[str, torch.Tensor]:
    """Energy of each FFN input matrix inside each head's subspace (h, k, d) -> {name: (h,)}."""
    return {name: energy_in_subspace(W, subspaces) for name, W in ffn_input_weights(ffn).items()}


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
