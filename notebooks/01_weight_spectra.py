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
# # 01 · Weight spectra: how is each weight matrix's spectrum shaped, layer by layer?
#
# For every block and every weight type (Q, K, V, O, FFN gate/in/out) and for the embedding and
# unembedding: effective rank (seed `1.py`), stable rank, spectral norm, two exponents (the
# power-law alpha of the eigenvalues sigma^2, WeightWatcher's number, and the rank slope of
# sigma_k against k, the quantity the Prisma write-up calls alpha) and the fraction of singular
# values above the Marchenko-Pastur noise edge (Prisma); every column of WeightWatcher 0.7.7's
# `analyze()` frame under its names (its options `mp_fit`, `randomize`, `fix_fingers`, `fit` as parameters),
# bootstrap intervals and a goodness-of-fit p-value for alpha, and the spectra of fine-tuning
# deltas (`base`) or of a LoRA adapter's updates (`lora`). Then the seed's statistics table,
# encode/compute/decode phase analysis and sharpest transitions.

# %%
import pandas as pd

from utils import Report, load_weights, output_dir, write_csv
from utils.analyses.weight_spectra import (
    alpha_interval_figure,
    column_sources,
    eff_rank_figure,
    esd_figure,
    findings_sentences,
    fit_sentence,
    layerwise_figure,
    spectra_figure,
    spectra_table_name,
    summary_table,
    weight_spectra_findings,
)
from utils.metrics.spectra import RANK_SLOPE_TOP_FRACTION
from utils.metrics.weight_spectra import (
    PRISMA_ALPHA_RANGE,
    SpectraOptions,
    lora_spectra,
    phase_table,
    sharpest_transitions,
    weight_spectra,
    weight_type_statistics,
)
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import save_figure

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML
output_root: str = "output"  # outputs go to <output_root>/<model>/01_weight_spectra/
heavy_tail_alpha: float = 2.0  # alpha below this counts as very heavy-tailed (WeightWatcher's bound)
bootstrap: int = 50  # resamples for alpha's bootstrap interval and synthetic samples for its p-value (0: off)
level: float = 0.95  # coverage of the bootstrap interval
seed: int = 0  # seed of the bootstrap and of randomize's shuffles
mp_fit: bool = False  # WeightWatcher's mp_fit: Marchenko-Pastur fit of each ESD (num_spikes, mp_softrank, ...)
randomize: bool = False  # WeightWatcher's randomize: ESD of the shuffled matrix, correlation traps (one more pass)
fix_fingers: str = ""  # WeightWatcher's fix_fingers: "" (off), "clip_xmax" or "xmin_peak"
fit: str = "PL"  # WeightWatcher's fit: "PL" or "TPL" (truncated power law, adds Lambda; slow: seconds per matrix)
base: str = ""  # params name or YAML of a base checkpoint: analyse W - W_base ("" for W itself)
lora: str = ""  # PEFT LoRA adapter directory of this model: analyse each update s B A ("" for W itself)

# %%
apply_params_file(globals(), "01_weight_spectra")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
options = SpectraOptions(mp_fit=mp_fit, randomize=randomize, fix_fingers=fix_fingers, fit=fit, bootstrap=bootstrap,
                         level=level, seed=seed)  # checks the options before any tensor is read
if base and lora:
    raise ValueError("set either base (W - W_base) or lora (a LoRA adapter's updates), not both")
loaded = load_weights(model)  # streamed from safetensors when on disk, else the loaded model
base_loaded = load_weights(base) if base else None
adapter, dims = loaded.adapter, loaded.dims
out = output_dir(loaded.params, "01_weight_spectra", output_root)
subject = f"W - W_base ({base_loaded.params.name})" if base else (f"LoRA updates ({lora})" if lora else "W")
table_name = spectra_table_name(base, lora)  # weight_spectra.csv only for W itself: notebooks 03 and 07 read it as W's
print(f"{loaded.params.name}: {loaded.origin}; loaded in {loaded.load_seconds:.1f} s; analysing {subject}")
pd.DataFrame([loaded.describe()]).T

# %% [markdown]
# ## 1. Metrics of every matrix
# One Gram eigendecomposition per matrix (a LoRA update through its r x r factors); WeightWatcher's
# columns from the same eigenvalues.

# %%
if lora:
    df, spectra = lora_spectra(lora, adapter, options=options)
else:
    df, spectra = weight_spectra(adapter, options=options, base=base_loaded.adapter if base else None)
if df.empty:  # weight_spectra leaves out every matrix equal to the base's
    raise ValueError(f"W - W_base is zero for every matrix: base={base!r} holds the same weights as model={model!r}; "
                     "name the checkpoint the model was fine-tuned from (or leave base empty)")
write_csv(df, out / table_name)
weight_types = [w for w in df.weight.unique() if w not in ("embed", "unembed")]
findings = weight_spectra_findings(df, dims.L, heavy_tail_alpha, level)
summary_table(findings)

# %% [markdown]
# ## 2. Effective rank by layer, per weight type (seed `1.py`)

# %%
save_figure(eff_rank_figure(df, weight_types, loaded.params.name), out / "eff_rank_by_layer.png")
stats = weight_type_statistics(df, "eff_rank")
stats

# %% [markdown]
# ## 3. Layer-wise spectral properties (Prisma): effective rank, stable rank, two exponents, signal ratio
# `alpha`: WeightWatcher's power-law exponent of the density of the eigenvalues sigma^2 (equal to
# `weightwatcher` 0.7.7 `analyze()`); `rank_slope`: b in sigma_k ~ k^-b over the upper half of the
# ranks, the magnitude the Prisma write-up reports as alpha (0.25-0.35, grey band). Where sigma^2
# has a power-law tail the two are tied by alpha = 1 + 1 / (2 b) (last panel, dashed curve).

# %%
save_figure(layerwise_figure(df, weight_types, heavy_tail_alpha), out / "layerwise_metrics.png")
save_figure(alpha_interval_figure(df, weight_types, heavy_tail_alpha), out / "alpha_intervals.png")

# %% [markdown]
# ## 4. Spectra per component, and the ESDs as WeightWatcher draws them
# Colour runs from the first layer (blue) to the last (red). Singular values with the median MP edge
# sigma (sqrt(rows) + sqrt(cols)); then per weight type the log-log density of lambda = sigma^2 with
# the fitted power law from xmin (one figure per weight type, all layers).

# %%
components = weight_types + [w for w in ("embed", "unembed") if w in set(df.weight)]
save_figure(spectra_figure(df, spectra, components, dims.L), out / "spectra_by_component.png")
for wt in components:
    save_figure(esd_figure(df, spectra, wt, dims.L), out / f"esd_{wt}.png", close=wt != components[0])

# %% [markdown]
# ## 5. Phases (early / middle / late thirds) and sharpest transitions (seed `1.py`)

# %%
phases = phase_table(df, dims.L, "eff_rank")
transitions = sharpest_transitions(df, "eff_rank")
grid = df[df.layer >= 0].pivot(index="layer", columns="weight", values="eff_rank")[weight_types]
display(phases)
display(transitions)

# %% [markdown]
# ## Findings

# %%
sentences = findings_sentences(findings)
for line in sentences:
    print("-", line)

# %%
lo, hi = PRISMA_ALPHA_RANGE
report = Report.for_notebook("01_weight_spectra", loaded)
report.model_section(loaded, analysed=subject)
report.heading("Findings").bullets(sentences)
report.heading("WeightWatcher summary (get_summary: means over matrices)").table(summary_table(findings), digits=4)
report.bullets([
    f"Every column of WeightWatcher 0.7.7's `analyze()` frame is in {table_name} under its name and formula "
    "(`utils.metrics.weightwatcher`; tests/test_weightwatcher.py compares them with the installed weightwatcher).",
    "Differences on purpose: matrices with more than WeightWatcher's max_N = 50,000 rows are fitted here (it skips "
    f"them): {', '.join(findings.beyond_max_n) or 'none in this model'}; WeightWatcher's `spectral_norm` is lambda_max "
    "(our `lambda_max`), our `spectral_norm` is s_1 (= its `sv_max`); a fused QKV matrix is split into q, k, v and a "
    "tied LM head is analysed once.",
    fit_sentence(fix_fingers, fit),
])
report.heading("Column sources").table(column_sources(df.columns))
report.heading("Effective rank statistics by weight type").table(stats, digits=4)
report.figure(out / "eff_rank_by_layer.png", "Effective rank by layer and weight type")
report.heading("Layer-wise spectral properties")
report.bullets([
    "Stable rank = sum sigma^2 / max sigma^2.",
    "`alpha`: WeightWatcher's power-law exponent, equal to `weightwatcher` 0.7.7 `analyze()` with its defaults: "
    "continuous MLE alpha = 1 + n / sum log(lambda_i / xmin) on the tail of the eigenvalues lambda = sigma^2 "
    "(unnormalised, those above 1e-5), xmin chosen among all eigenvalues but the largest by the smallest "
    "one-sided KS distance max_j |F(lambda_j) - j/n|; matrices with min(rows, cols) < 8 are skipped as WW does. "
    "`alpha_xmin`, `alpha_ks`: the chosen xmin and KS distance.",
    f"`alpha_low`, `alpha_high`: {level:.0%} percentile interval of alpha over {bootstrap} bootstrap resamples of the "
    "eigenvalues, xmin refitted each time (Clauset et al. 2009, section 3.5); `alpha_p`: goodness-of-fit p-value "
    "over as many semi-parametric synthetic samples (section 4.1; p < 0.1 rules the power law out).",
    f"`rank_slope`: b = minus the least-squares slope of log sigma_k on log k over ranks k = 1..floor("
    f"{RANK_SLOPE_TOP_FRACTION:g} r) (r = min(rows, cols); the lower ranks are left out, where sigma_k falls "
    f"towards the hard edge). The Prisma write-up's 'alpha about {lo:g}-{hi:g}' has this magnitude; no MLE alpha "
    "of an eigenvalue density is below 1. Over a power-law tail, alpha = 1 + 1/(2b) (Zipf).",
    "Signal ratio: fraction of singular values above the Marchenko-Pastur edge sigma (sqrt(rows) + sqrt(cols)).",
])
report.figure(out / "layerwise_metrics.png", "Effective rank, stable rank, alpha, rank slope and MP signal ratio by layer; "
              "alpha against rank slope")
report.figure(out / "alpha_intervals.png", "alpha by layer with its bootstrap intervals")
report.figure(out / "spectra_by_component.png", "Singular value spectra per component (linear and log-log)")
for wt in components:
    report.figure(out / f"esd_{wt}.png", f"ESD of {wt} (log-log), fitted power law from xmin, layers by depth")
extras = df[df.layer < 0][["weight", "rows", "cols", "eff_rank", "stable_rank", "alpha", "rank_slope", "mp_signal_ratio"]]
tied = " (the unembedding is tied to it)" if adapter.unembedding_is_tied() else ""
report.heading("Embedding and unembedding").paragraph(f"Matrices outside the blocks{tied}:").table(extras)
report.heading("Phases: early, middle and late thirds").table(phases)
report.heading("Sharpest transitions").table(transitions)
report.heading("Effective rank per layer").table(grid.reset_index())
report.write(out / "report.md")
print(f"wrote {out}")
