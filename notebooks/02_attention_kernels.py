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
# # 02 · Attention kernels: how low-rank, asymmetric and rotational is each head's score kernel?
#
# The kernel A_h = W_Q_h^T W_K_h (d x d, rank <= d_head) of every head in every layer, computed
# in factored form (`utils.metrics.kernels`: eigenvalues of W_K_h W_Q_h^T, SVD via thin QR factors):
# eigenvalues, asymmetry, complex eigenvalues, spectral energy and effective rank, plus the
# W_down SVD of one layer. From the attention-kernel sections of seed `1.py`, for all heads.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from utils import Report, load_weights, output_dir, write_csv
from utils.metrics.kernels import complex_mask, components_for_energy, cumulative_energy, head_kernels, kernel_table
from utils.metrics.spectra import components_for_variance, cumulative_share, effective_rank, singular_values
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import heatmap, save_figure, subplots

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML
output_root: str = "output"  # outputs go to <output_root>/<model>/02_attention_kernels/
layer: int = -1  # layer of the single-head deep dive and the W_down SVD; -1: the middle layer L // 2
head: int = 0  # query head of the single-head deep dive
complex_rtol: float = 1e-6  # an eigenvalue counts as complex when |Im| > complex_rtol * max |lambda| of its head

# %%
apply_params_file(globals(), "02_attention_kernels")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
loaded = load_weights(model)  # streamed from safetensors when on disk, else the loaded model
adapter, dims = loaded.adapter, loaded.dims
L, d, h, d_head = dims.L, dims.d, dims.h, dims.d_head
out = output_dir(loaded.params, "02_attention_kernels", output_root)
if layer == -1:
    layer = L // 2
if not 0 <= layer < L:
    raise ValueError(f"parameter layer={layer} is out of range: {loaded.params.name} has layers 0..{L - 1} "
                     "(or -1 for the middle layer)")
if not 0 <= head < h:
    raise ValueError(f"parameter head={head} is out of range: {loaded.params.name} has query heads 0..{h - 1}")
if not 0 < complex_rtol < 1:
    raise ValueError(f"parameter complex_rtol={complex_rtol} must lie in (0, 1)")
attn = adapter.attention(layer)
kv_head = int(attn.kv_head_of[head])
random_asymmetry = float(np.sqrt(2 * (1 - 1 / d)))  # independent Gaussian W_Q, W_K (utils.metrics.kernels)
print(f"{loaded.params.name}: {loaded.origin}; deep dive on layer {layer}, head {head} (KV head {kv_head}); "
      f"score scale {attn.scale:.4g}")
pd.DataFrame([loaded.describe()]).T

# %% [markdown]
# ## 1. One head: layer `layer`, head `head`
# Magnitudes include the score scale (they are those of the pre-softmax bilinear form
# scale * x_i^T A x_j); the seed left it out, which multiplies every eigenvalue and singular
# value by one constant and changes nothing else below. Only d_head eigenvalues of the d x d
# kernel can be nonzero; the other d - d_head are exactly zero and are not listed.

# %%
kern = head_kernels(attn, scaled=True)
lam = kern.eigenvalues()[head].cpu().numpy()  # (d_head,) complex, by descending |lambda|
sv = kern.singular_values()[head].cpu().numpy()  # (d_head,)
mag = np.abs(lam)
is_complex = complex_mask(torch.from_numpy(lam)[None], complex_rtol)[0].numpy()
n_complex = int(is_complex.sum())
n_nonzero = int((mag > complex_rtol * mag[0]).sum())
asymmetry = float(kern.asymmetry()[head])
energy = cumulative_energy(lam)
n99 = components_for_energy(lam, 0.99)
top_energy = float(energy[min(d_head, energy.size) - 1])  # 1 by the rank bound
eff_rank_sv = effective_rank(sv)
eff_rank_eig = effective_rank(mag)
milestones = pd.DataFrame({"energy": [0.5, 0.75, 0.9, 0.95, 0.99]})
milestones["components"] = [components_for_energy(lam, m) for m in milestones.energy]
milestones["share of d"] = milestones.components / d
top20 = pd.DataFrame({"rank": np.arange(min(20, lam.size)), "real": lam.real[:20], "imag": lam.imag[:20],
                      "abs": mag[:20]})
head_summary = {
    "kernel shape": f"{d} x {d} (rank <= {d_head})",
    "asymmetry ||A - A^T|| / ||A||": asymmetry,
    "complex eigenvalues": f"{n_complex}/{d_head} ({n_complex / d_head:.1%})",
    f"numerically nonzero eigenvalues (|lambda| > {complex_rtol:g} max)": f"{n_nonzero}/{d}",
    f"top-{d_head} eigenvalue energy": top_energy,
    "effective rank (singular values)": eff_rank_sv,
    "effective rank (eigenvalue magnitudes)": eff_rank_eig,
    "99% spectral energy at": f"{n99}/{d} components",
    "largest |lambda|": mag[0],
    "largest singular value": sv[0],
}
print(pd.Series(head_summary).to_string())
top20

# %%
fig, axes = subplots(1, 3, width=5.5, height=4.2)
axes[0, 0].semilogy(np.arange(1, mag.size + 1), np.maximum(mag, mag[0] * 1e-16), marker=".", markersize=3)
axes[0, 0].set(title=f"|lambda| (the other {d - d_head} are 0)", xlabel="index", ylabel="|lambda|")
axes[0, 1].scatter(lam.real[~is_complex], lam.imag[~is_complex], s=8, label="real")
axes[0, 1].scatter(lam.real[is_complex], lam.imag[is_complex], s=8, label="complex")
axes[0, 1].axhline(0, color="gray", linewidth=0.5)
axes[0, 1].axvline(0, color="gray", linewidth=0.5)
axes[0, 1].set(title=f"Eigenvalues ({n_complex} complex, asymmetry {asymmetry:.3f})", xlabel="real", ylabel="imaginary")
axes[0, 1].set_aspect("equal", adjustable="datalim")
axes[0, 1].legend(fontsize=8)
axes[0, 2].plot(np.arange(1, energy.size + 1), energy)
axes[0, 2].axhline(0.99, color="r", linestyle="--", label="99%")
axes[0, 2].axvline(n99, color="gray", linestyle=":", label=f"n = {n99}")
axes[0, 2].set(title=f"Cumulative |lambda|^2 energy (99% at {n99}/{d})", xlabel="component", ylabel="share")
axes[0, 2].legend(fontsize=8)
fig.suptitle(f"Attention kernel W_Q^T W_K — layer {layer}, head {head} (KV head {kv_head})")
fig.tight_layout()
save_figure(fig, out / "head_kernel_spectrum.png")
plt.show()

# %% [markdown]
# ## 2. Every layer x head
# Effective rank (seed definition: exp-entropy of the singular values, in [1, d_head]),
# asymmetry (in [0, 2]; sqrt(2 (1 - 1/d)) for independent random W_Q, W_K) and the fraction of
# each head's d_head possibly-nonzero eigenvalues that are complex.

# %%
table = kernel_table(adapter, scaled=True, rtol=complex_rtol)
write_csv(table, out / "attn_kernel_heads.csv")
grids = {col: table.pivot(index="layer", columns="head", values=col).to_numpy()
         for col in ("eff_rank", "asymmetry", "frac_complex")}
eff = grids["eff_rank"]  # (L, h)
fig, axes = subplots(1, 3, width=5.0, height=max(3.0, 0.16 * L + 1.5))
heatmap(axes[0, 0], eff, "Kernel effective rank", "head", "layer", f"effective rank (max {d_head})", vmin=1)
heatmap(axes[0, 1], grids["asymmetry"], "Asymmetry ||A - A^T|| / ||A||", "head", "layer", "asymmetry", vmin=0)
heatmap(axes[0, 2], grids["frac_complex"], "Fraction of complex eigenvalues", "head", "layer", "fraction", vmin=0, vmax=1)
fig.tight_layout()
save_figure(fig, out / "heads_heatmaps.png")
plt.show()

# %%
head_means = eff.mean(axis=0)
low_threshold, high_threshold = np.percentile(head_means, 25), np.percentile(head_means, 75)
category = np.where(head_means <= low_threshold, "low-rank", np.where(head_means >= high_threshold, "high-rank", "mid"))
per_head = pd.DataFrame({"head": np.arange(h), "kv_head": attn.kv_head_of.cpu().numpy(), "mean": head_means,
                         "std": eff.std(axis=0), "min": eff.min(axis=0), "max": eff.max(axis=0),
                         "asymmetry": grids["asymmetry"].mean(axis=0), "frac_complex": grids["frac_complex"].mean(axis=0),
                         "category": category})
per_layer = (table.groupby("layer")
             .agg(mean=("eff_rank", "mean"), std=("eff_rank", "std"), min=("eff_rank", "min"), max=("eff_rank", "max"),
                  asymmetry=("asymmetry", "mean"), frac_complex=("frac_complex", "mean"))
             .reset_index())
global_stats = {"min": eff.min(), "max": eff.max(), "mean": eff.mean(), "std": eff.std()}
print(f"effective rank over all {L * h} heads: " + ", ".join(f"{k} {v:.2f}" for k, v in global_stats.items()))
print(f"head categories: 25th percentile of per-head means {low_threshold:.2f}, 75th {high_threshold:.2f}")
display(per_head)
per_layer

# %% [markdown]
# ## 3. W_down (FFN output) SVD of layer `layer` (seed `1.py`)

# %%
w_down = adapter.ffn(layer).w_out  # (d, d_ff)
s_down = singular_values(w_down).numpy()  # float64, via the small Gram matrix
var = s_down**2 / (s_down**2).sum()
cumvar = cumulative_share(s_down**2)
n99_down = components_for_variance(s_down**2, 0.99)
down_milestones = pd.DataFrame({"variance": milestones.energy})
down_milestones["components"] = [int((cumvar < m - 1e-12).sum()) + 1 for m in down_milestones.variance]
condition = s_down[0] / s_down[-1] if s_down[-1] > 0 else float("inf")
fig, axes = subplots(1, 2, width=5.5, height=3.8)
axes[0, 0].plot(var)
axes[0, 0].set(title="Variance explained per component", xlabel="component", ylabel="share")
axes[0, 1].plot(cumvar)
axes[0, 1].axhline(0.99, color="r", linestyle="--", label="99%")
axes[0, 1].axvline(n99_down, color="gray", linestyle=":", label=f"n = {n99_down}")
axes[0, 1].set(title=f"Cumulative variance (99% at {n99_down}/{s_down.size})", xlabel="component")
axes[0, 1].legend(fontsize=8)
fig.suptitle(f"W_down {tuple(w_down.shape)} — layer {layer}")
fig.tight_layout()
save_figure(fig, out / "w_down_svd.png")
plt.show()
down_milestones

# %% [markdown]
# ## Findings

# %%
lowest_layer, highest_layer = int(per_layer.loc[per_layer["mean"].idxmin(), "layer"]), int(per_layer.loc[per_layer["mean"].idxmax(), "layer"])
low_heads = per_head[per_head.category == "low-rank"]["head"].tolist()
high_heads = per_head[per_head.category == "high-rank"]["head"].tolist()
above_random = float((table.asymmetry > random_asymmetry).mean())
findings = [
    f"Layer {layer}, head {head}: asymmetry {asymmetry:.3f} (0 = symmetric, {random_asymmetry:.3f} = independent "
    f"random W_Q and W_K, 2 = antisymmetric); {n_complex} of its {d_head} possibly-nonzero eigenvalues are complex "
    f"(|Im| > {complex_rtol:g} of the largest |lambda|); 99% of the |lambda|^2 energy lies in {n99} of {d} components; "
    f"effective rank {eff_rank_sv:.1f} of at most {d_head}.",
    f"Over all {L} x {h} heads the kernel effective rank is {eff.mean():.1f} on average "
    f"({eff.mean() / d_head:.0%} of d_head = {d_head}; range {eff.min():.1f}-{eff.max():.1f}); layer {lowest_layer} "
    f"has the lowest mean ({per_layer['mean'].min():.1f}) and layer {highest_layer} the highest ({per_layer['mean'].max():.1f}).",
    f"Mean asymmetry is {table.asymmetry.mean():.3f} (range {table.asymmetry.min():.3f}-{table.asymmetry.max():.3f}); "
    f"{above_random:.0%} of heads are more asymmetric than independent random weights ({random_asymmetry:.3f}), "
    f"i.e. have tr(A^2) < ||A||_F^2 / d.",
    f"On average {table.frac_complex.mean():.1%} of a head's possibly-nonzero eigenvalues are complex "
    f"(rotation-like pairs); the most rotational head is layer {int(table.loc[table.frac_complex.idxmax(), 'layer'])}, "
    f"head {int(table.loc[table.frac_complex.idxmax(), 'head'])} ({table.frac_complex.max():.1%}).",
    f"Low-rank heads (per-head mean effective rank <= 25th percentile {low_threshold:.1f}): {low_heads}; "
    f"high-rank heads (>= 75th percentile {high_threshold:.1f}): {high_heads}.",
    f"W_down of layer {layer} needs {n99_down} of {s_down.size} singular directions for 99% of its variance "
    f"(condition number {condition:.3g}).",
]
for line in findings:
    print("-", line)

# %%
report = Report.for_notebook("02_attention_kernels", loaded)
report.model_section(loaded)
report.heading("Findings").bullets(findings)
report.heading("What the kernel is, and what it leaves out")
report.bullets([
    f"A_h = W_Q_h^T W_K_h (d x d, rank <= d_head = {d_head}), never formed: its nonzero eigenvalues are those of "
    "the d_head x d_head matrix W_K_h W_Q_h^T, its SVD comes from thin QR factors of W_Q_h^T and W_K_h^T, and "
    "||A||_F^2 = tr((W_Q W_Q^T)(W_K W_K^T)), tr(A A) = tr((W_K W_Q^T)^2) give the asymmetry "
    "sqrt(2 (1 - tr(A A) / ||A||_F^2)) (see `utils/metrics/kernels.py`).",
    f"GQA: query head h reads KV head `kv_head_of[h]` ({dims.h} query heads on {dims.GQA} KV heads).",
    f"Magnitudes include the score scale {attn.scale:.4g}; it does not change ranks, asymmetry, energy shares, "
    "complex fractions or subspaces.",
    "Left out: rotary position embeddings (the true kernel between positions i and j is W_Q^T R_(j-i) W_K), "
    "Gemma's per-head q/k RMSNorms, and the gains of the pre-attention norm.",
])
report.heading(f"Layer {layer}, head {head} (KV head {kv_head})").table(head_summary)
report.figure(out / "head_kernel_spectrum.png", "Eigenvalue magnitudes, complex plane and cumulative energy")
report.heading("Cumulative spectral energy", level=3).table(milestones)
report.heading("Top 20 eigenvalues", level=3).table(top20, digits=6)
report.heading("All layers x heads")
report.paragraph("Per-head metrics are in `attn_kernel_heads.csv` (one row per layer and query head).")
report.table(global_stats)
report.figure(out / "heads_heatmaps.png", "Effective rank, asymmetry and complex fraction per layer and head")
report.heading("Per head (mean over layers)", level=3).table(per_head)
report.heading("Per layer (mean over heads)", level=3).table(per_layer)
report.heading(f"W_down SVD, layer {layer}")
report.table({"shape": f"{w_down.shape[0]} x {w_down.shape[1]}", "99% variance at": f"{n99_down}/{s_down.size}",
              "largest singular value": s_down[0], "smallest singular value": s_down[-1], "condition number": condition})
report.table(down_milestones)
report.figure(out / "w_down_svd.png", "W_down variance per component and cumulative")
report.write(out / "report.md")
print(f"wrote {out}")
