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
# from its CSV when present, else computed once and cached), and, where notebooks 04 and 05 have
# run for a model, its activation effective ranks and NerVE FFN metrics.

# %%
from utils import load_params, output_dir, write_csv
from utils.analyses.model_comparison import (
    activation_profiles,
    check_parameters,
    compare_models,
    comparison_models,
    comparison_report,
    plot_activation_profiles,
    plot_depth_profiles,
    plot_eff_rank_by_type,
    weight_tables,
)
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import save_figure

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML: the reference model
output_root: str = "output"  # outputs go to <output_root>/<model>/07_model_comparison/
compare_with: list = ["gemma3-270m", "minilm-l6"]  # other params names or paths; models not available offline are skipped
recompute: bool = False  # recompute weight spectra even where notebook 01's CSV exists
cache: bool = True  # reuse weight spectra computed here before (utils.paths.cache_dir()/weight_spectra)
depth_bins: int = 10  # relative-depth bins of the profiles (at most the shallowest model's layer count)
heavy_tail_alpha: float = 2.0  # alpha below this counts as very heavy-tailed

# %%
apply_params_file(globals(), "07_model_comparison")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
check_parameters(depth_bins, heavy_tail_alpha)
reference = load_params(model)
out = output_dir(reference, "07_model_comparison", output_root)
model_set = comparison_models(reference, compare_with)  # unknown names fail here, unavailable models are skipped
print("comparing:", [p.name for p in model_set.models])
for line in model_set.skipped:
    print("skipped:", line)

# %% [markdown]
# ## 1. Weight spectra of every model
# Notebook 01's `weight_spectra.csv` of each model when it exists (and `recompute` is off),
# otherwise computed here from the model (one SVD per matrix), or read back from the spectra
# cache when this checkpoint's spectra were computed before with the same code and settings.

# %%
weights = weight_tables(model_set.models, output_root, recompute, cache)
for line in weights.cache_lines:
    print(line)
comparison = compare_models(model_set.models, weights, heavy_tail_alpha, depth_bins)
write_csv(comparison.table, out / "weight_comparison.csv")
write_csv(comparison.summary, out / "model_summary.csv")
comparison.summary

# %% [markdown]
# ## 2. Depth profiles of the weight metrics (mean over a model's block matrices)

# %%
save_figure(plot_depth_profiles(comparison), out / "weight_depth_profiles.png")
comparison.profiles["rel_eff_rank"]  # the numbers of the first panel: bin centres x models

# %% [markdown]
# ## 3. Relative effective rank per weight type (types every model has)

# %%
save_figure(plot_eff_rank_by_type(comparison), out / "eff_rank_by_weight_type.png")
comparison.by_type

# %% [markdown]
# ## 4. Activations and FFN spectra, where notebooks 04 and 05 have run

# %%
profiles = activation_profiles(model_set.models, output_root)
save_figure(plot_activation_profiles(profiles), out / "activation_depth_profiles.png")
for line in profiles.missing:
    print(line)

# %% [markdown]
# ## Findings

# %%
findings = comparison.sentences()
for line in findings:
    print("-", line)

# %%
comparison_report(model_set, comparison, profiles, findings, out).write(out / "report.md")
print(f"wrote {out}")
