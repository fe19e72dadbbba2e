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
# # 06 · Training dynamics: do FFN and activation spectra track, and forecast, how a small LM learns?
# We train small NanoGPT-style decoders from scratch on CPU and record, every few steps, the NerVE
# metrics of every FFN (spectral entropy, participation ratio, early eigenvalue enrichment, JS
# divergence pre → post activation; NerVE sec. 2), the residual-stream covariance spectrum and the
# per-sample gradient spectrum (Spectral Lens). Experiments: (a) GELU vs ReLU vs SwiGLU, (b) batch
# size at equal loss and the early spectral tail as a forecast of token efficiency.
#
# **Cost** (2 CPU cores, measured): one default run (4 layers, width 128, FFN 512, 240 steps of
# 16 × 64 tokens, logging every 20 steps) takes about 30–40 s, so the default notebook (5 runs)
# takes about 3–4 minutes. Time scales linearly with `steps × batch_size × seq_len` and roughly
# with `hidden_size² × num_hidden_layers`; every entry of `extra_sweeps` adds one run per value
# (e.g. the NerVE LayerNorm sweep `{"norm_placement": ["preln", "postln", "none"]}` adds 2 runs,
# ~1 minute; the width sweep `{"intermediate_size": [256, 1024, 2048]}` ~2.5 minutes, the 2048-wide
# run costing about 2× a default one; RoPE vs NoPE `{"position_embedding": ["rope", "none"]}` ~1 minute).

# %%
from utils import output_dir
from utils.analyses import training_dynamics as td
from utils.atomic_io import write_csv
from utils.pipeline.notebook_parameters import apply_params_file

# %% tags=["parameters"]
model: str = "smollm2-135m"  # only names the output folder: <output_root>/<model>/06_training_dynamics/ (06 trains its own models)
output_root: str = "output"  # root of all outputs
corpus: str = "stdlib-docs"  # training text (utils.engine.corpus spec); byte-level tokens, the last 5% held out for eval
hidden_size: int = 128  # model width d
num_hidden_layers: int = 4  # number of blocks L
num_attention_heads: int = 4  # attention heads
intermediate_size: int = 512  # FFN width D
norm_placement: str = "preln"  # preln | postln | none (base of every run)
position_embedding: str = "learned"  # learned | rope | none (base of every run)
steps: int = 240  # optimizer steps of a run at batch size `batch_size`
batch_size: int = 16  # sequences per step of the base runs
seq_len: int = 64  # tokens per training sequence
lr: float = 2e-3  # peak AdamW learning rate (linear warmup, cosine decay to 10%)
seed: int = 0  # seed of weights and data order
log_every: int = 20  # spectral record every this many steps at batch size `batch_size` (scaled to equal tokens otherwise)
eval_windows: int = 64  # held-out windows of seq_len tokens for eval loss and activation spectra (every position, as NerVE)
grad_samples: int = 16  # sequences in the per-sample gradient matrix
tail_window: list = [8, 64]  # rank window [start, stop) of the activation-spectrum power-law slope
activations: list = ["gelu", "relu", "swiglu"]  # sweep (a)
batch_sizes: list = [8, 16, 32]  # sweep (b), GELU; every run sees steps * batch_size sequences
forecast_fraction: float = 0.2  # sweep (b): the 'early' spectrum is the first record after this fraction of the token budget
extra_sweeps: dict = {}  # further NerVE sweeps on the GELU base run, field -> values, e.g. {"norm_placement": ["preln", "postln", "none"]}
save_checkpoints: bool = True  # save every run in HF format under checkpoints/<run>/
# checkpoint_every: the base run (GELU, batch_size) saves checkpoints/<run>/checkpoint-<step>/ (Trainer layout) for notebook 08
checkpoint_every: int = 20  # at step 0 and every this many steps, a multiple of log_every; 0: none

# %%
apply_params_file(globals(), "06_training_dynamics")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
p = td.TrainingParameters.from_namespace(globals())  # bounds checked before any training
out = output_dir(model, "06_training_dynamics", output_root)
runs = td.Runs(p, out)  # the corpus tokenised once, the held-out eval windows, the runs trained so far
print(f"{len(runs.data.train_ids):,} training and {len(runs.data.eval_ids):,} held-out tokens; "
      f"budget {p.tokens_budget:,} tokens per run; outputs in {out}")

# %% [markdown]
# ## 1. Activation functions: GELU vs ReLU vs SwiGLU (NerVE sec. 3)

# %%
act_runs = {act: runs.run(act, hidden_act=act) for act in activations}
td.nerve_heatmaps_figure(runs, act_runs, out / "nerve_heatmaps_activation.png")

# %%
corr = td.loss_correlations(runs, act_runs)
corr

# %%
td.activation_curves_figure(runs, act_runs, out / "activation_curves.png")

# %% [markdown]
# ## 2. Batch size at equal loss, and the early tail as a forecast (Spectral Lens findings 1 and 2)
# Every run sees the same token budget. The target loss is the highest of the runs' best eval
# losses, so every run reaches it; we compare the activation spectra at the first record where
# each run is at or below it, and the number of tokens each needed to get there.

# %%
batch = td.batch_size_summary(runs, {bs: runs.run(f"bs{bs}", bs=bs) for bs in batch_sizes})  # base batch size: the GELU run
batch.table

# %%
td.batch_size_figure(runs, batch, out / "batch_size_spectra.png")
print(f"target loss {batch.target:.4f}; spread of tail slope at target across batch sizes {batch.spread_at_target:.3f} "
      f"vs movement within the last 3 records of {batch.slowest}: {batch.jitter:.3f}; "
      f"Spearman(early slope, tokens to target) = {batch.forecast_rho:.2f}")

# %% [markdown]
# ## 3. Further NerVE sweeps (`extra_sweeps`)
# Each entry varies one architecture field of the GELU base run; PR is also reported normalised
# by the FFN width (NerVE's width-normalised PR, Fig. 6). Empty by default.

# %%
sweeps = td.extra_sweep_table(runs)
sweeps

# %% [markdown]
# ## 4. Gradient spectra and the head of the activation spectrum (Spectral Lens finding 3)
# Spectral Lens: movement of the activation spectrum's head (leading modes), together with the
# gradient spectra, characterises learning-dynamics changes, separating learning-side
# (architectural) improvements from execution-side gains. Per record: the share of residual
# variance in the head, the modes before the tail window (ranks 1..`tail_window[0]`), and the
# per-sample gradient spectrum of the last FFN's output projection (`grad_samples` sequences):
# effective rank, stable rank, top-4 energy share. The activation sweep is an architectural
# change. We test (i) co-movement: Spearman ρ between record-to-record changes of the head share
# and of the gradient stable rank, per run; (ii) separation: the spread across activations of the
# late values (mean of the last 3 records) against the largest movement of one run over its last 3
# records. No run here is an execution-side change (same maths, faster execution), so the other
# half of the claim is not tested.

# %%
head = td.head_gradient_table(runs, act_runs)
td.gradient_curves_figure(runs, act_runs, out / "gradient_curves.png")
td.gradient_spectra_figure(runs, act_runs, out / "gradient_spectra.png")
write_csv(head.movement, out / "head_gradient_movement.csv")
head.movement

# %%
write_csv(runs.log(), out / "training_log.csv")
write_csv(runs.table(), out / "runs.csv")
write_csv(batch.table, out / "batch_size_summary.csv")
write_csv(corr.reset_index(), out / "activation_loss_correlation.csv")
if len(sweeps):
    write_csv(sweeps, out / "extra_sweeps.csv")

# %% [markdown]
# ## Findings
# Final losses per activation, how many (metric, activation) correlations with eval loss reach
# NerVE's |r| >= 0.94, the batch-size comparison at equal loss and its forecast, and the verdict
# on Spectral Lens finding 3.

# %%
found = td.findings(runs, act_runs, corr, batch, head)
td.write_report(model, p, found, sweeps, out)
print("\n".join(found.sentences()))
