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
# # 07 · Model comparison: how do the spectra of different models compare, depth for depth?
#
# The Prisma write-up compares its model with GPT-2 Medium layer by layer. Here any set of
# models is aligned by relative depth (layer / (L - 1)): weight spectra from notebook 01 (read
# from its CSV when present, computed otherwise), and, where notebooks 04 and 05 have run for a
# model, its activation effective ranks and NerVE FFN metrics.

# %%
import numpy as np
import pandas as pd

from utils import Report, load_params, load_weights, output_dir, write_csv
from utils.analyses.model_comparison import depth_profile, model_summary, relative_depth, weight_comparison
from utils.metrics.weight_spectra import weight_spectra
from utils.models.sources import ModelUnavailableError, check_available
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import save_figure, subplots

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML: the reference model
output_root: str = "output"  # outputs go to <output_root>/<model>/07_model_comparison/
compare_with: list = ["gemma3-270m", "minilm-l6"]  # other params names or paths; models not available offline are skipped
recompute: bool = False  # recompute weight spectra even where notebook 01's CSV exists
depth_bins: int = 10  # relative-depth bins of the profiles (at most the shallowest model's layer count)
heavy_tail_alpha: float = 2.0  # alpha below this counts as very heavy-tailed

# %%
apply_params_file(globals(), "07_model_comparison")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
reference = load_params(model)
out = output_dir(reference, "07_model_comparison", output_root)
candidates = [reference] + [load_params(name) for name in compare_with]  # unknown names fail here, before any load
candidates = list({p.path: p for p in candidates}.values())  # the reference may be listed in compare_with too
models, skipped = [], []
for params in candidates:
    try:
        check_available(params, offline=True)
        models.append(params)
    except ModelUnavailableError as err:
        skipped.append(f"`{params.name}`: {err}")
print("comparing:", [p.name for p in models])
for line in skipped:
    print("skipped:", line)

# %% [markdown]
# ## 1. Weight spectra of every model
# Notebook 01's `weight_spectra.csv` of each model when it exists (and `recompute` is off),
# otherwise computed here from the model (one SVD per matrix).

# %%
tables, provenance = {}, {}
for params in models:
    csv = output_dir(params, "01_weight_spectra", output_root) / "weight_spectra.csv"
    if csv.exists() and not recompute:
        tables[params.name], provenance[params.name] = pd.read_csv(csv), f"notebook 01 output `{csv.name}`"
    else:
        loaded = load_weights(params)
        tables[params.name], _ = weight_spectra(loaded.adapter)
        provenance[params.name] = f"computed here ({loaded.origin})"
        del loaded
comparison = weight_comparison(tables)
summary = model_summary(comparison, heavy_tail_alpha)
summary.insert(1, "quantization", [p.quantization for p in models])
summary["weights from"] = [provenance[p.name] for p in models]
write_csv(comparison, out / "weight_comparison.csv")
write_csv(summary, out / "model_summary.csv")
summary

# %% [markdown]
# ## 2. Depth profiles of the weight metrics (mean over a model's block matrices)

# %%
panels = [("rel_eff_rank", "effective rank / max rank"), ("stable_rank", "stable rank"),
          ("alpha", "power-law alpha (WeightWatcher)"), ("mp_signal_ratio", "fraction above MP edge")]
bins = max(1, min(depth_bins, int(summary.layers.min())))  # no empty bins for the shallowest model
profiles = {value: depth_profile(comparison, value, bins) for value, _ in panels}
fig, axes = subplots(2, 2, width=6.0, height=3.6)
for ax, (value, label) in zip(axes.flat, panels):
    for name in profiles[value].columns:
        ax.plot(profiles[value].index, profiles[value][name], marker=".", label=name)
    if value == "alpha":
        ax.axhline(heavy_tail_alpha, color="gray", linestyle="--", linewidth=1)
    ax.set(title=label, xlabel="relative depth")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "weight_depth_profiles.png")

# %% [markdown]
# ## 3. Relative effective rank per weight type (types every model has)

# %%
shared = [w for w in comparison[comparison.layer >= 0].weight.unique()
          if comparison[comparison.weight == w].model.nunique() == len(models)]
fig, axes = subplots(1, max(len(shared), 1), width=3.3, height=3.0, sharey=True)
for ax, weight in zip(axes.flat, shared):
    sub = comparison[comparison.weight == weight]
    for name, rows in sub.groupby("model", sort=False):
        ax.plot(rows.rel_depth, rows.rel_eff_rank, marker=".", markersize=3, label=name)
    ax.set(title=weight, xlabel="relative depth")
axes[0, 0].set_ylabel("effective rank / max rank")
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, out / "eff_rank_by_weight_type.png")
by_type = comparison[comparison.weight.isin(shared)].pivot_table(index="weight", columns="model",
                                                                 values="rel_eff_rank", sort=False)
by_type

# %% [markdown]
# ## 4. Activations and FFN spectra, where notebooks 04 and 05 have run

# %%
activation_rows, ffn_rows, missing = [], [], []
for params in models:
    base = output_dir(params, "01_weight_spectra", output_root).parent
    acts, ffn = base / "04_representations" / "activation_spectra.csv", base / "05_ffn_eigenspectrum" / "ffn_spectra.csv"
    if acts.exists():
        a = pd.read_csv(acts)
        a = a[a.layer >= 1]  # row i = after block i - 1
        activation_rows.append(a.assign(model=params.name, rel_depth=relative_depth(a.layer - 1, len(a))))
    else:
        missing.append(f"`{params.name}` has no notebook 04 output (run `make MODEL={params.name}`)")
    if ffn.exists():
        f = pd.read_csv(ffn)
        ffn_rows.append(f.assign(model=params.name, rel_depth=relative_depth(f.layer, len(f))))
    else:
        missing.append(f"`{params.name}` has no notebook 05 output (run `make MODEL={params.name}`)")
fig, axes = subplots(1, 2, width=6.0, height=3.6)
for frame in activation_rows:
    axes[0, 0].plot(frame.rel_depth, frame.eff_rank / frame.eff_rank.max(), marker=".", label=frame.model.iloc[0])
for frame in ffn_rows:
    axes[0, 1].plot(frame.rel_depth, frame.pr_post / frame.pr_pre, marker=".", label=frame.model.iloc[0])
axes[0, 0].set(title="activation effective rank / its maximum", xlabel="relative depth")
axes[0, 1].set(title="FFN PR gain post / pre (NerVE)", xlabel="relative depth")
axes[0, 1].axhline(1.0, color="gray", linestyle="--", linewidth=1)
for ax in axes.flat:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "activation_depth_profiles.png")
for line in missing:
    print(line)

# %% [markdown]
# ## Findings

# %%
findings = []
if len(summary) > 1:
    hi, lo = summary.loc[summary.rel_eff_rank.idxmax()], summary.loc[summary.rel_eff_rank.idxmin()]
    findings.append(f"`{hi.model}` uses the most of its weights' available rank (mean effective rank "
                    f"{hi.rel_eff_rank:.1%} of the maximum), `{lo.model}` the least ({lo.rel_eff_rank:.1%}).")
    ta, tb = summary.loc[summary.alpha_median.idxmin()], summary.loc[summary.alpha_median.idxmax()]
    findings.append(f"Heaviest-tailed spectra: `{ta.model}` (median WeightWatcher alpha {ta.alpha_median:.2f}, "
                    f"{ta.heavy_tailed:.0%} of matrices below {heavy_tail_alpha:g}); lightest: `{tb.model}` "
                    f"(median alpha {tb.alpha_median:.2f}).")
    sa = summary.loc[summary.mp_signal_ratio.idxmax()]
    findings.append(f"Most singular values above the Marchenko-Pastur edge: `{sa.model}` "
                    f"({sa.mp_signal_ratio:.1%} on average).")
    for value, label in (("rel_eff_rank", "relative effective rank"),):
        prof = profiles[value].dropna()
        if len(prof) >= 3:
            corr = prof.corr().to_numpy()[np.triu_indices(prof.shape[1], 1)]
            findings.append(f"Depth profiles of {label} across models correlate with Pearson r between "
                            f"{corr.min():+.2f} and {corr.max():+.2f} (over {len(prof)} depth bins).")
else:
    findings.append("Only one model was available offline, so there is nothing to compare it with: "
                    "add params names to `compare_with`.")
quantized = [p.name for p in models if p.quantized]
if quantized and len(quantized) < len(models):
    findings.append("Caution: " + ", ".join(f"`{n}`" for n in quantized) + " come from quantized weights and the "
                    "others do not; quantization noise raises effective ranks and flattens spectral tails.")
for line in findings:
    print("-", line)

# %%
report = Report.for_notebook("07_model_comparison", reference).model_section(reference)
report.heading("Models compared").table(summary)
if skipped:
    report.paragraph("Not available offline, skipped:").bullets(skipped)
report.heading("Findings").bullets(findings)
report.heading("Weight metrics by relative depth")
report.paragraph("Relative depth = layer / (L - 1); each point is the mean over a model's block matrices in one of "
                 f"{bins} depth bins. Effective rank is divided by each matrix's maximum rank min(rows, cols).")
report.figure(out / "weight_depth_profiles.png", "Relative effective rank, stable rank, alpha and MP signal ratio by relative depth")
report.table(by_type.reset_index())
report.figure(out / "eff_rank_by_weight_type.png", "Relative effective rank per weight type")
report.heading("Activations and FFN spectra")
if missing:
    report.bullets(missing)
report.figure(out / "activation_depth_profiles.png", "Activation effective rank and NerVE PR gain by relative depth")
report.write(out / "report.md")
print(f"wrote {out}")
