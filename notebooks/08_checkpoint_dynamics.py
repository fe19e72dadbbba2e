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
# # 08 · Checkpoint dynamics: how do weight, FFN and activation spectra move across a training run's checkpoints?
# For every checkpoint of one run (a folder of `checkpoint-<step>/` directories, hub revisions such
# as Pythia's `step1000`, or a list of params files), the weight metrics of notebook 01, the NerVE
# metrics of every FFN (notebook 05) and the residual activation spectra (notebook 04), from one
# forward pass per checkpoint; then NerVE's training-time claims (post-activation SE and PR rise,
# EEE falls, JS settles) and the Spectral Lens claim that early spectra forecast later loss are
# re-tested on the run. Default series: the checkpoints notebook 06 saves of its base run.
#
# Outputs go to `<output_root>/<model>/08_checkpoint_dynamics/`: `model` names the series (a params
# file, e.g. one whose `notebooks: {08_checkpoint_dynamics: {checkpoints: ...}}` names the run)
# and gives dtype/device/task for loading every checkpoint.

# %%
from utils import load_params, output_dir
from utils.analyses import checkpoint_dynamics as cd
from utils.atomic_io import write_csv
from utils.models.checkpoint_series import series_from_parameters
from utils.pipeline.notebook_parameters import apply_params_file

# %% tags=["parameters"]
# model names the output folder <output_root>/<model>/08_checkpoint_dynamics/; its dtype/device/task load every checkpoint
model: str = "smollm2-135m"  # params name or path
output_root: str = "output"  # root of all outputs (the default series is read from <output_root>/<model>/06_training_dynamics/checkpoints/)
# checkpoints: relative to the repository root; "" with no revisions/params_list: notebook 06's base run
checkpoints: str = ""  # glob of local checkpoint directories, e.g. "runs/my-run/checkpoint-*"
revisions: list = []  # hub revisions of one model, e.g. ["step1000", "step8000", "step143000"] (Pythia); steps from the names
hub_id: str = ""  # hub id for `revisions`; "": the params file's own hub id
params_list: list = []  # params names or paths, one checkpoint each
corpus: str = "stdlib-docs"  # token sample text (utils.engine.corpus spec), the same tokens for every checkpoint
n_sequences: int = 64  # windows in the token sample
seq_len: int = 64  # tokens per window (notebook 06's models have 64 positions)
seed: int = 0  # window choice
skip_first: int = 1  # first positions of every window left out of the statistics (attention sinks)
batch_size: int = 8  # windows per forward pass
tail_window: list = [8, 64]  # rank window [start, stop) of the activation-spectrum power-law tail slope (Spectral Lens)
ffn_memory_mb: int = 0  # memory one layer's FFN statistics may take (refused before the pass if more); 0: half the free memory
cache: bool = True  # keep each checkpoint's measurements (cache_dir()/checkpoint_series): a rerun measures only new checkpoints
rho_min: float = 0.5  # a layer follows a trend when its Spearman correlation with the step, signed as claimed, is at least this
majority: float = 0.5  # a claim HOLDS when more than this fraction of layers follows it
settle_fraction: float = 0.34  # JS settles: its range over this last fraction of the step span ...
settle_tolerance: float = 0.25  # ... is at most this fraction of its range over the whole series
forecast_lag: int = 2  # forecast: spectrum at checkpoint i against eval loss at checkpoint i + forecast_lag
early_fraction: float = 0.5  # forecast: 'early' checkpoints lie in this first fraction of the step span
from_step: int = 1  # verdicts use the checkpoints at or after this step (1: all but a step-0 random initialisation; 0: all); figures show all

# %%
apply_params_file(globals(), "08_checkpoint_dynamics")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
p = cd.CheckpointParameters.from_namespace(globals())  # bounds checked before any checkpoint loads
params = load_params(model)
out = output_dir(params, "08_checkpoint_dynamics", output_root)
series = series_from_parameters(params, checkpoints=checkpoints, revisions=revisions, hub_id=hub_id,
                                params_list=params_list, output_root=output_root)
print(f"series: {series.description}\n{len(series.steps)} checkpoints at steps {series.steps} "
      f"(step from {sorted({c.step_from for c in series.checkpoints})}); outputs in {out}")

# %% [markdown]
# ## 1. Measure every checkpoint
# One checkpoint at a time: load, weight SVDs, one streaming pass of the activation engine over
# the fixed token sample (FFN pre/post and residual covariances in float64), free. Cached
# checkpoints are read back without loading.

# %%
result = cd.measure(series, p)
write_csv(result.trajectory, out / "trajectory.csv", float_format="%.10g")
write_csv(result.checkpoints, out / "checkpoints.csv", float_format="%.10g")
print(f"{int(result.checkpoints.from_cache.sum())} of {len(series.steps)} checkpoints from the cache; "
      f"{len(result.trajectory)} trajectory rows")
result.checkpoints

# %% [markdown]
# ## 2. Layer x step heatmaps
# NerVE metrics of every FFN (layer = FFN index) and residual activation effective rank
# (layer = residual state: 0 embeddings, i = output of block i-1, last = final-normed).

# %%
cd.heatmaps_figure(result.trajectory, out / "heatmaps.png")

# %% [markdown]
# ## 3. Per-metric curves (layer means) against the step

# %%
cd.curves_figure(result, series.steps, out / "curves.png")

# %% [markdown]
# ## Findings
# NerVE (sec. 3.1, figs. 1 and 3): over training, post-activation SE and PR rise, EEE falls and
# the JS divergence between pre and post spectra settles into its band. Each claim is tested per
# FFN layer (Spearman correlation with the step, sign as claimed, |rho| >= `rho_min`; JS: late
# range against whole range). Spectral Lens: the early activation-covariance tail forecasts
# later loss; within one run we correlate the tail slope of the final state at an early checkpoint
# with the eval loss `forecast_lag` checkpoints later, beside the loss's own persistence.

# %%
verdicts = cd.judge(result, series.steps, p)
write_csv(verdicts.table(), out / "verdicts.csv")
found = cd.findings(series, result, verdicts, p)
for line in found.sentences():
    print("-", line)
verdicts.table()

# %%
cd.write_report(params, series, result, found, verdicts.table(), out)
print(f"wrote {out}")
