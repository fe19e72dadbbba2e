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
import pandas as pd

from utils import load_weights, output_dir, save_npy, write_csv
from utils.analyses.subspace_geometry import (
    alignment_survey,
    cross_reference,
    layer_overlap,
    plot_alignment,
    plot_convergence,
    plot_overlap,
    plot_similarity_by_distance,
    reference_convergence,
    seed_verdicts,
    subspace_report,
    subspace_setup,
)
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import save_figure

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
out = output_dir(loaded.params, "03_subspace_geometry", output_root)
setup = subspace_setup(loaded.params.name, loaded.dims, head, k, reference_layer)  # k clipped to d_head; range checks
print(f"{loaded.params.name}: {loaded.origin}; head {head}, k = {setup.k}, chance k/d = {setup.chance:.4f}. {setup.k_note}")
pd.DataFrame([loaded.describe()]).T

# %% [markdown]
# ## 1. Subspace overlap across layers
# For each layer and head, the top-k singular subspace of the kernel (rows of a k x d orthonormal
# matrix, factored SVD of `utils.metrics.kernels`); similarity = ||U V^T||_F^2 / k, 1 for equal
# subspaces, k/d for independent random ones. All heads are cheap, so the head mean is over all
# heads rather than the seed's sample of 4.

# %%
overlap = layer_overlap(loaded.adapter, setup)
for stem, matrix in overlap.arrays().items():
    save_npy(matrix, out / f"{stem}.npy")
save_figure(plot_overlap(overlap), out / "subspace_overlap.png")
save_figure(plot_similarity_by_distance(overlap), out / "similarity_by_distance.png")
display(overlap.statistics)
display(overlap.by_distance)
overlap.boundaries

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
convergence = reference_convergence(loaded.adapter, overlap, out.parent / "04_representations" / "activation_spectra.csv")
write_csv(convergence.to_ref, out / "similarity_to_reference.csv")
print(f"reference layer {convergence.ref}: {convergence.rule}")
save_figure(plot_convergence(convergence, setup), out / "similarity_to_reference.png")
convergence.table

# %% [markdown]
# ## 3. FFN-attention alignment
# Share of the FFN input weights' energy (up projection, gate where gated, and both stacked:
# `alignment`) inside each head's subspace, ||W U^T||_F^2 / ||W||_F^2 (no d x d projector),
# against k/d for directions unrelated to the subspace. The seed used W_gate and head 0.

# %%
alignment = alignment_survey(loaded.adapter, overlap)
write_csv(alignment.table, out / "ffn_attn_alignment.csv")
save_figure(plot_alignment(alignment, setup), out / "ffn_attn_alignment.png")
alignment.summary

# %% [markdown]
# ## 4. Cross-reference with notebook 01's weight effective ranks

# %%
cross = cross_reference(overlap, convergence, alignment, out.parent / "01_weight_spectra" / "weight_spectra.csv",
                        loaded.params.name)
print(cross.note)
if cross.correlations is not None:
    display(cross.correlations)
cross.layer_metrics

# %% [markdown]
# ## Findings
# The three verdicts of `2.py`, with its thresholds, first on the seed's own inputs (head `head`,
# key side; W_gate, or W_in where the FFN has no gate), then on all heads (and, for the alignment,
# the gate and up projections stacked). Each row of `verdicts.csv` names its inputs.

# %%
verdicts = seed_verdicts(overlap, convergence, alignment)
write_csv(verdicts.table(), out / "verdicts.csv")
findings = verdicts.sentences()
for line in findings:
    print("-", line)
verdicts.table()[["experiment", "inputs", "verdict"]]

# %%
subspace_report(loaded, overlap, convergence, alignment, cross, verdicts, findings, out).write(out / "report.md")
print(f"wrote {out}")
