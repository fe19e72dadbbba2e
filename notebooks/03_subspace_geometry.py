# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Subspace geometry: do layers attend along the same directions, and does the FFN read them?
#
# Top-k singular subspaces of every head's attention kernel W_Q_h^T W_K_h (key side: right
# singular vectors; query side: left), their overlap across layers (mean squared cosine of
# principal angles), convergence towards a reference layer, and the share of the FFN input
# weights' energy inside them. From seed `2.py`: its three verdicts on its own inputs (one head,
# key side, W_gate) and, beside each, on all heads (and on gate and up projections stacked).

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from utils import Report, load_weights, output_dir, save_npy, write_csv
from utils.metrics.kernels import kernel_table
from utils.metrics.subspaces import (
    SIDES,
    alignment_verdict,
    chance_similarity,
    choose_reference_layer,
    convergence_verdict,
    ffn_alignment,
    index_trend,
    layer_subspaces,
    overlap_statistics,
    overlap_verdict,
    phase_boundaries,
    similarity_matrix,
)
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import heatmap, save_figure, subplots
from utils.reporting.report import fmt

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML
output_root: str = "output"  # outputs go to <output_root>/<model>/03_subspace_geometry/
head: int = 0  # query head of the single-head analyses (the seed's HEAD)
k: int = 20  # subspace rank; clipped to d_head (the largest rank a kernel can have)
reference_layer: str = "auto"  # bottleneck reference layer: "auto" (chosen from the data) or a layer index

# %%
apply_params_file(globals(), "03_subspace_geometry")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
loaded = load_weights(model)  # streamed from safetensors when on disk, else the loaded model
adapter, dims = loaded.adapter, loaded.dims
L, d, h, d_head = dims.L, dims.d, dims.h, dims.d_head
out = output_dir(loaded.params, "03_subspace_geometry", output_root)
if not 0 <= head < h:
    raise ValueError(f"parameter head={head} is out of range: {loaded.params.name} has query heads 0..{h - 1}")
if k < 1:
    raise ValueError(f"parameter k={k} must be at least 1")
K = min(k, d_head)
k_note = (f"k = {k} was clipped to d_head = {d_head}: the kernel has rank <= d_head." if K < k else "")
if K == d_head:
    k_note += (" With k = d_head the key-side subspace is the whole row space of W_K (shared by the query heads of "
               "a KV group) and the query-side one that of W_Q_h.")
chance = chance_similarity(K, d)
distant_gap = L // 3
print(f"{loaded.params.name}: {loaded.origin}; head {head}, k = {K}, chance k/d = {chance:.4f}. {k_note}")
pd.DataFrame([loaded.describe()]).T

# %% [markdown]
# ## 1. Subspace overlap across layers
# For each layer and head, the top-k singular subspace of the kernel (rows of a k x d orthonormal
# matrix, factored SVD of `utils.metrics.kernels`); similarity = ||U V^T||_F^2 / k, 1 for equal
# subspaces, k/d for independent random ones. All heads are cheap, so the head mean is over all
# heads rather than the seed's sample of 4.

# %%
subspaces = {side: torch.stack([layer_subspaces(adapter, layer, K, side) for layer in tqdm(range(L), desc=side)])
             for side in SIDES}  # side -> (L, h, K, d)
similarity = {side: similarity_matrix(subs.transpose(0, 1)).cpu().numpy() for side, subs in subspaces.items()}  # (h, L, L)
head_mean = {side: sims.mean(axis=0) for side, sims in similarity.items()}
save_npy(head_mean["key"], out / "subspace_similarity.npy")
save_npy(similarity["key"][head], out / f"subspace_similarity_head{head}.npy")
save_npy(head_mean["query"], out / "subspace_similarity_query.npy")
save_npy(similarity["query"][head], out / f"subspace_similarity_query_head{head}.npy")


matrices = {f"head {head}, key": similarity["key"][head], "head mean, key": head_mean["key"],
            f"head {head}, query": similarity["query"][head], "head mean, query": head_mean["query"]}
overlap = pd.DataFrame({name: overlap_statistics(S, distant_gap) for name, S in matrices.items()})
distances = sorted({dist for dist in (1, 2, 3, 5, 10, 15, 20, L // 2) if 1 <= dist < L})
by_distance = pd.DataFrame({"distance": distances, "pairs": [L - dist for dist in distances]})
for name, S in matrices.items():
    by_distance[name] = [np.diag(S, dist).mean() for dist in distances]
boundaries = pd.concat([phase_boundaries(similarity["key"][head]).assign(inputs=f"head {head}, key (seed)"),
                        phase_boundaries(head_mean["key"]).assign(inputs="head mean, key")], ignore_index=True)

fig, axes = subplots(2, 2, width=5.0, height=4.2)
for ax, (name, S) in zip(axes.flat, matrices.items()):
    heatmap(ax, S, f"Subspace overlap ({name}, top-{K})", "layer", "layer", "similarity", vmin=0, vmax=1)
fig.tight_layout()
save_figure(fig, out / "subspace_overlap.png")
plt.show()
fig, axes = subplots(1, 1, width=6.5, height=3.8)
for name in matrices:
    axes[0, 0].plot(by_distance.distance, by_distance[name], marker=".", label=name)
axes[0, 0].axhline(chance, color="r", linestyle="--", label=f"chance k/d = {chance:.3f}")
axes[0, 0].set(title="Similarity by layer distance", xlabel="layer distance", ylabel="mean similarity")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "similarity_by_distance.png")
plt.show()
display(overlap)
display(by_distance)
boundaries

# %% [markdown]
# ## 2. Convergence towards a reference (bottleneck) layer
# `reference_layer = "auto"` takes the block with the lowest activation effective rank from
# notebook 04 when its `activation_spectra.csv` exists (row `layer` i = residual stream after
# block i, so block index i - 1; the embedding row 0 is skipped), otherwise the layer with the
# lowest mean kernel effective rank over heads. Candidates leave at least 2 layers on each side
# (when the model has 5 or more), so that a trend can be measured on both sides; layer 0
# otherwise wins on kernel rank almost always. The seed hard-coded layer 33 of Qwen2.5-3B (36
# layers), which these candidates include.

# %%
kernels = kernel_table(adapter, progress=False)
kernel_eff_rank = kernels.groupby("layer").eff_rank.mean().to_numpy()  # (L,)
activations_csv = out.parent / "04_representations" / "activation_spectra.csv"
if str(reference_layer) == "auto":
    acts = pd.read_csv(activations_csv) if activations_csv.exists() else None
    ref, reference_rule = choose_reference_layer(kernel_eff_rank, acts)
    if acts is None:
        reference_rule += f"; notebook 04's activation spectra were not available at `{activations_csv}`"
else:
    ref = int(reference_layer)
    if not 0 <= ref < L:
        raise ValueError(f"parameter reference_layer={reference_layer!r} is out of range: {loaded.params.name} has "
                         f"layers 0..{L - 1} (or \"auto\")")
    reference_rule = "set by the `reference_layer` parameter"

to_ref = pd.DataFrame({"layer": np.arange(L), f"head {head}": similarity["key"][head][ref],
                       "head mean": similarity["key"][:, ref].mean(axis=0), "head std": similarity["key"][:, ref].std(axis=0),
                       "head mean, query": similarity["query"][:, ref].mean(axis=0)})
write_csv(to_ref, out / "similarity_to_reference.csv")
convergence = {}
for col in (f"head {head}", "head mean", "head mean, query"):
    values = to_ref[col].to_numpy()
    before, after = values[:ref], values[ref + 1:]
    convergence[col] = {"mean before": before.mean() if before.size else float("nan"),
                        "mean after": after.mean() if after.size else float("nan"),
                        "pre-reference trend r": index_trend(before), "post-reference trend r": index_trend(after)}
convergence = pd.DataFrame(convergence)
print(f"reference layer {ref}: {reference_rule}")
fig, axes = subplots(1, 1, width=8, height=3.8)
ax = axes[0, 0]
ax.plot(to_ref.layer, to_ref[f"head {head}"], marker=".", label=f"head {head}")
ax.plot(to_ref.layer, to_ref["head mean"], marker=".", label="head mean")
ax.fill_between(to_ref.layer, to_ref["head mean"] - to_ref["head std"], to_ref["head mean"] + to_ref["head std"], alpha=0.2)
ax.axvline(ref, color="r", linestyle="--", alpha=0.5, label=f"reference layer {ref}")
ax.axhline(chance, color="gray", linestyle=":", label="chance k/d")
ax.set(title=f"Similarity to layer {ref} (key side, top-{K})", xlabel="layer", ylabel="similarity")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "similarity_to_reference.png")
plt.show()
convergence

# %% [markdown]
# ## 3. FFN-attention alignment
# Share of the FFN input weights' energy (up projection, gate where gated, and both stacked:
# `alignment`) inside each head's subspace, ||W U^T||_F^2 / ||W||_F^2 (no d x d projector),
# against k/d for directions unrelated to the subspace. The seed used W_gate and head 0.

# %%
rows = []
for layer in tqdm(range(L), desc="FFN alignment"):
    ffn = adapter.ffn(layer)
    for side in SIDES:
        shares = ffn_alignment(ffn, subspaces[side][layer])  # name -> (h,)
        gate = shares.get("gate", torch.full((h,), float("nan")))
        rows.append(pd.DataFrame({"layer": layer, "head": np.arange(h), "kv_head": adapter.attention(layer).kv_head_of.cpu().numpy(),
                                  "side": side, "alignment": shares["all"].cpu().numpy(), "alignment_in": shares["in"].cpu().numpy(),
                                  "alignment_gate": gate.cpu().numpy(), "chance": chance}))
alignment = pd.concat(rows, ignore_index=True)
write_csv(alignment, out / "ffn_attn_alignment.csv")
align_layer = (alignment.groupby(["side", "layer"]).alignment.agg(["mean", "std"]).reset_index())
key_grid = alignment[alignment.side == "key"].pivot(index="layer", columns="head", values="alignment").to_numpy()  # (L, h)
fig, axes = subplots(1, 2, width=6.0, height=max(3.6, 0.14 * L + 1.5))
ax = axes[0, 0]
for side in SIDES:
    sub = align_layer[align_layer.side == side]
    ax.plot(sub.layer, sub["mean"], marker=".", label=f"head mean, {side}")
    ax.fill_between(sub.layer, sub["mean"] - sub["std"], sub["mean"] + sub["std"], alpha=0.2)
ax.plot(np.arange(L), key_grid[:, head], marker=".", label=f"head {head}, key")
ax.axhline(chance, color="r", linestyle="--", label=f"chance k/d = {chance:.4f}")
ax.set(title=f"FFN input energy in the attention subspace (top-{K})", xlabel="layer", ylabel="share")
ax.legend(fontsize=8)
heatmap(axes[0, 1], key_grid / chance, "Alignment / chance (key side)", "head", "layer", "x chance", vmin=0)
fig.tight_layout()
save_figure(fig, out / "ffn_attn_alignment.png")
plt.show()
align_summary = {}
for side in SIDES:
    sub = alignment[alignment.side == side]
    per_layer = sub.groupby("layer").alignment.mean()
    align_summary[side] = {"mean": sub.alignment.mean(), "mean / chance": sub.alignment.mean() / chance,
                           "std": sub.alignment.std(), "min": sub.alignment.min(), "max": sub.alignment.max(),
                           "heads above chance": float((sub.alignment > chance).mean()),
                           "layers above chance (head mean)": f"{int((per_layer > chance).sum())}/{L}",
                           "highest layer (head mean)": int(per_layer.idxmax()), "lowest layer (head mean)": int(per_layer.idxmin())}
align_summary = pd.DataFrame(align_summary)
align_summary

# %% [markdown]
# ## 4. Cross-reference with notebook 01's weight effective ranks

# %%
weights_csv = out.parent / "01_weight_spectra" / "weight_spectra.csv"
layer_metrics = pd.DataFrame({
    "layer": np.arange(L),
    "kernel eff_rank": kernel_eff_rank,
    "adjacent similarity": np.append(np.diag(head_mean["key"], 1), np.nan),  # sim(l, l + 1), as the seed
    "similarity to reference": to_ref["head mean"].to_numpy(),
    "FFN alignment": align_layer[align_layer.side == "key"]["mean"].to_numpy(),
})
correlations = None
if weights_csv.exists():
    spectra = pd.read_csv(weights_csv)
    blocks = spectra[spectra.layer >= 0]
    ranks = blocks.pivot_table(index="layer", columns="weight", values="eff_rank")
    ranks.insert(0, "mean over weights", ranks.mean(axis=1))
    merged = layer_metrics.merge(ranks, left_on="layer", right_index=True, how="left")
    targets = ["kernel eff_rank", "adjacent similarity", "similarity to reference", "FFN alignment"]
    correlations = pd.DataFrame(
        {t: [merged[[c, t]].dropna().corr().iloc[0, 1] if merged[[c, t]].dropna().shape[0] > 2 else np.nan
             for c in ranks.columns] for t in targets}, index=ranks.columns).reset_index(names="weight eff_rank")
    cross_note = f"Pearson r over layers between notebook 01's effective ranks (`{weights_csv}`) and the subspace metrics."
    display(correlations)
else:
    cross_note = (f"Notebook 01's `{weights_csv.name}` was not found at `{weights_csv}`. Produce it with "
                  f"`make MODEL={loaded.params.name}` or `python -m utils.run 01_weight_spectra {loaded.params.name}` "
                  "and re-run this notebook for the correlations.")
print(cross_note)
layer_metrics

# %% [markdown]
# ## Findings
# The three verdicts of `2.py`, with its thresholds, first on the seed's own inputs (head `head`,
# key side; W_gate, or W_in where the FFN has no gate), then on all heads (and, for the alignment,
# the gate and up projections stacked). Each row of `verdicts.csv` names its inputs.

# %%
gated = adapter.ffn(0).w_gate is not None
seed_ffn, seed_col = ("W_gate", "alignment_gate") if gated else ("W_in (this FFN has no gate)", "alignment_in")
all_ffn = "W_gate and W_in stacked" if gated else "W_in"
key_rows = alignment[alignment.side == "key"]
seed_ratio = key_rows[key_rows["head"] == head][seed_col].mean() / chance  # mean over layers, as the seed
all_ratio = key_rows.alignment.mean() / chance  # mean over layers and heads
experiments = [
    ("1. Subspace overlap", f"head {head}, key side (seed)", True, overlap_verdict(overlap[f"head {head}, key"], chance),
     overlap[f"head {head}, key"], None),
    ("1. Subspace overlap", f"mean over all {h} heads, key side", False, overlap_verdict(overlap["head mean, key"], chance),
     overlap["head mean, key"], None),
    (f"2. Convergence to layer {ref}", f"head {head}, key side (seed)", True,
     convergence_verdict(*convergence[f"head {head}"][["pre-reference trend r", "post-reference trend r"]]),
     convergence[f"head {head}"], None),
    (f"2. Convergence to layer {ref}", f"mean over all {h} heads, key side", False,
     convergence_verdict(*convergence["head mean"][["pre-reference trend r", "post-reference trend r"]]),
     convergence["head mean"], None),
    ("3. FFN-attention alignment", f"{seed_ffn}, head {head}, key side (seed)", True, alignment_verdict(seed_ratio),
     None, seed_ratio),
    ("3. FFN-attention alignment", f"{all_ffn}, all {h} heads, key side", False, alignment_verdict(all_ratio),
     None, all_ratio),
]
verdicts = pd.DataFrame([{
    "experiment": name, "inputs": inputs, "seed_inputs": seed, "verdict": verdict,
    "adjacent_minus_distant": stats["adjacent - distant"] if name.startswith("1.") else np.nan,
    "off_diagonal_mean": stats["off-diagonal mean"] if name.startswith("1.") else np.nan,
    "pre_trend_r": stats["pre-reference trend r"] if name.startswith("2.") else np.nan,
    "post_trend_r": stats["post-reference trend r"] if name.startswith("2.") else np.nan,
    "alignment_over_chance": ratio if ratio is not None else np.nan, "detail": detail,
} for name, inputs, seed, (verdict, detail), stats, ratio in experiments])
write_csv(verdicts, out / "verdicts.csv")
findings = []
for name, group in verdicts.groupby("experiment", sort=False):
    seed_row, all_row = group.iloc[0], group.iloc[1]
    findings.append(f"{name[3:]}: on {seed_row.inputs}, {seed_row.detail}. On {all_row.inputs}, {all_row.detail}.")
findings[1] += f" Reference layer: {reference_rule}."
findings.append(
    f"Query side for comparison (all heads): off-diagonal mean {overlap.loc['off-diagonal mean', 'head mean, query']:.3f}, "
    f"adjacent - distant {overlap.loc['adjacent - distant', 'head mean, query']:+.3f}, FFN alignment "
    f"{align_summary.loc['mean / chance', 'query']:.2f}x chance.")
for line in findings:
    print("-", line)
verdicts[["experiment", "inputs", "verdict"]]

# %%
report = Report.for_notebook("03_subspace_geometry", loaded)
report.model_section(loaded, **{"subspace rank k": K, "chance k/d": chance, "head": head})
report.heading("Findings").bullets(findings)
report.heading("The seed's verdicts by inputs", level=3)
report.paragraph("`verdicts.csv`; thresholds of `2.py`: overlap gap 0.05 and mean 0.7, trends +-0.3, alignment 0.7x and 1.5x chance.")
report.table(verdicts.drop(columns="detail").assign(seed_inputs=verdicts.seed_inputs.map({True: "yes", False: "no"})).map(fmt))
report.heading("Definitions and caveats")
report.bullets([
    "Kernel A_h = W_Q_h^T W_K_h (factored, `utils.metrics.kernels`). Key side = top-k right singular vectors (row space of "
    "W_K: directions along which the attended-to token is read; the seed's \"subspace the head queries\"); query "
    "side = top-k left singular vectors (row space of W_Q).",
    f"Similarity = ||U V^T||_F^2 / k, the mean squared cosine of the principal angles: 1 equal, {chance:.4f} = k/d "
    "by chance, 0 orthogonal. Alignment = ||W U^T||_F^2 / ||W||_F^2 for the FFN input weights W.",
    "The kernel leaves out rotary position embeddings, Gemma's q/k norms and the pre-attention norm gains; the "
    "score scale does not change singular subspaces.",
] + ([k_note.strip()] if k_note else []))
report.heading("1. Subspace overlap across layers")
report.table(overlap.reset_index(names="statistic"))
report.figure(out / "subspace_overlap.png", "Subspace similarity between layers, one head and the mean over heads")
report.heading("Similarity by layer distance", level=3).table(by_distance)
report.figure(out / "similarity_by_distance.png", "Mean similarity against layer distance")
report.heading(f"Phase boundaries (largest drops in adjacent similarity; head {head} as the seed, and head mean; key side)", level=3)
if len(boundaries):
    report.table(boundaries)
else:
    report.paragraph("Too few layers for boundaries.")
report.heading(f"2. Convergence to layer {ref}")
report.paragraph(f"Reference layer {ref}: {reference_rule}. Per-layer values: `similarity_to_reference.csv`.")
report.table(convergence.reset_index(names="statistic"))
report.figure(out / "similarity_to_reference.png", f"Similarity to layer {ref}")
report.heading("3. FFN-attention alignment")
report.paragraph("Per layer, head and side: `ffn_attn_alignment.csv` (`alignment` = gate and up stacked, "
                 "`alignment_gate` = W_gate alone, the seed's input, `alignment_in` = W_in alone). The table "
                 "summarises `alignment` over all heads.")
report.table(align_summary.map(fmt).reset_index(names="statistic"))
report.figure(out / "ffn_attn_alignment.png", "FFN input energy inside the attention subspaces")
report.heading("4. Cross-reference with weight effective ranks (notebook 01)")
report.paragraph(cross_note)
if correlations is not None:
    report.table(correlations)
report.heading("Per-layer metrics", level=3).table(layer_metrics)
report.write(out / "report.md")
print(f"wrote {out}")
