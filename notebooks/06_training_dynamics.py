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
import json
import shutil

import numpy as np
import pandas as pd
from scipy import stats

from utils import Report, output_dir
from utils.atomic_io import write_csv
from utils.engine.training import (
    NanoGPTConfig,
    SpectralCallback,
    TokenData,
    TrainConfig,
    byte_tokenizer,
    head_gradient_movement,
    run_config_dict,
    train,
)
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import depth_colors, heatmap, save_figure, subplots

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
out = output_dir(model, "06_training_dynamics", output_root)
for name, value, allowed in (("norm_placement", norm_placement, ("preln", "postln", "none")),
                             ("position_embedding", position_embedding, ("learned", "rope", "none"))):
    if value not in allowed:
        raise ValueError(f"parameter {name}={value!r}: choose one of {allowed}")
if checkpoint_every < 0 or (checkpoint_every and checkpoint_every % log_every):
    raise ValueError(f"checkpoint_every={checkpoint_every} must be 0 or a multiple of log_every={log_every} "
                     "(each checkpoint's trainer_state.json then holds its eval loss)")
if steps < 2 * log_every:
    raise ValueError(f"steps={steps} must be at least 2 * log_every={2 * log_every}")
if any((steps * batch_size) % b for b in batch_sizes):
    raise ValueError(f"steps * batch_size = {steps * batch_size} must be divisible by every batch size in {batch_sizes}")
tokens_budget = steps * batch_size * seq_len
data = TokenData.from_corpus(corpus, byte_tokenizer())
eval_ids = data.eval_windows(eval_windows, seq_len)  # (eval_windows, seq_len)
base = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size, hidden_act="gelu", norm_placement=norm_placement,
            position_embedding=position_embedding, max_position_embeddings=seq_len)
print(f"{len(data.train_ids):,} training and {len(data.eval_ids):,} held-out tokens; "
      f"budget {tokens_budget:,} tokens per run; outputs in {out}")

# %%
runs: dict[str, dict] = {}  # run name -> {"config", "records", "spectra", "eval_loss"}
trained: dict[str, str] = {}  # json of the run's full description -> run name (identical runs are trained once)
base_key = json.dumps(run_config_dict(NanoGPTConfig(**base), TrainConfig(steps=steps, batch_size=batch_size,
                                                                         seq_len=seq_len, lr=lr, seed=seed)), sort_keys=True)


def run(name: str, bs: int = batch_size, **overrides) -> str:
    """Train one run (or reuse an identical one) with a spectral record every log_every * batch_size / bs steps."""
    model_config = NanoGPTConfig(**{**base, **overrides})
    train_config = TrainConfig(steps=steps * batch_size // bs, batch_size=bs, seq_len=seq_len, lr=lr, seed=seed)
    key = json.dumps(run_config_dict(model_config, train_config), sort_keys=True)
    if key in trained:
        return trained[key]
    callback = SpectralCallback(eval_ids, every=log_every * batch_size // bs, grad_samples=grad_samples,
                                tail_window=tuple(tail_window))
    is_base = key == base_key and checkpoint_every > 0
    if is_base:  # a fresh series: no checkpoint of an earlier run with other settings stays beside it
        for stale in (out / "checkpoints" / name).glob("checkpoint-*"):
            shutil.rmtree(stale)
    result = train(model_config, data, train_config, callback=callback, desc=name,
                   checkpoint_every=checkpoint_every if is_base else 0, checkpoint_dir=out / "checkpoints" / name)
    if save_checkpoints:
        result.model.save_pretrained(out / "checkpoints" / name)
        byte_tokenizer().save_pretrained(out / "checkpoints" / name)
    runs[name] = {"config": run_config_dict(model_config, train_config), "records": result.records,
                  "spectra": callback.spectra, "D": model_config.intermediate_size}
    trained[key] = name
    return name


def log_frame(names: list[str]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame(runs[n]["records"]).assign(run=n) for n in names], ignore_index=True)


# %% [markdown]
# ## 1. Activation functions: GELU vs ReLU vs SwiGLU (NerVE sec. 3)

# %%
act_runs = {act: run(act, hidden_act=act) for act in activations}
metrics = ["se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js"]
L = num_hidden_layers


def layer_matrix(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """(layers, logged steps) values of one NerVE metric."""
    return frame[[f"{metric}_l{i}" for i in range(L)]].to_numpy().T


shown = ["se_post", "pr_post", "eee_post", "js"]
fig, axes = subplots(len(act_runs), len(shown), width=4.2, height=2.8)
for row, (act, name) in enumerate(act_runs.items()):
    frame = log_frame([name])
    for col, metric in enumerate(shown):
        ax = axes[row, col]
        heatmap(ax, layer_matrix(frame, metric), f"{act}: {metric}", "logged step", "layer")
        ticks = np.linspace(0, len(frame) - 1, min(5, len(frame))).astype(int)
        ax.set_xticks(ticks, frame["step"].to_numpy()[ticks])
fig.tight_layout()
save_figure(fig, out / "nerve_heatmaps_activation.png")

# %%
corr_rows = []
for act, name in act_runs.items():
    frame = log_frame([name])
    for metric in metrics:
        layer_mean = layer_matrix(frame, metric).mean(0)  # (logged steps,)
        r = stats.pearsonr(layer_mean, frame["eval_loss"]).statistic if np.ptp(layer_mean) > 0 else np.nan
        corr_rows.append({"activation": act, "metric": metric, "pearson_r": r})
corr = pd.DataFrame(corr_rows).pivot(index="metric", columns="activation", values="pearson_r")[list(act_runs)]
final = {act: runs[name]["records"][-1]["eval_loss"] for act, name in act_runs.items()}
corr

# %%
fig, axes = subplots(1, 3, width=4.5, height=3.2)
for act, name in act_runs.items():
    frame = log_frame([name])
    axes[0, 0].plot(frame["tokens"], frame["eval_loss"], marker=".", label=act)
    axes[0, 1].plot(frame["tokens"], layer_matrix(frame, "pr_post").mean(0) / runs[name]["D"], marker=".", label=act)
    axes[0, 2].plot(frame["tokens"], frame["act_eff_rank"], marker=".", label=act)
for ax, title in zip(axes[0], ["eval loss", "PR_post / D (layer mean)", "residual-stream effective rank"]):
    ax.set_title(title)
    ax.set_xlabel("tokens")
    ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "activation_curves.png")

# %% [markdown]
# ## 2. Batch size at equal loss, and the early tail as a forecast (Spectral Lens findings 1 and 2)
# Every run sees the same token budget. The target loss is the highest of the runs' best eval
# losses, so every run reaches it; we compare the activation spectra at the first record where
# each run is at or below it, and the number of tokens each needed to get there.

# %%
bs_runs = {bs: run(f"bs{bs}", bs=bs) for bs in batch_sizes}  # the base batch size reuses the GELU run
target = max(min(r["eval_loss"] for r in runs[name]["records"]) for name in bs_runs.values())
bs_rows = []
for bs, name in bs_runs.items():
    frame = log_frame([name])
    hit = frame[frame["eval_loss"] <= target].iloc[0]
    early = frame[frame["tokens"] >= forecast_fraction * tokens_budget].iloc[0]
    bs_rows.append({"batch_size": bs, "run": name, "tokens_to_target": int(hit["tokens"]), "step_at_target": int(hit["step"]),
                    "eval_loss_at_target": hit["eval_loss"], "act_eff_rank_at_target": hit["act_eff_rank"],
                    "act_tail_slope_at_target": hit["act_tail_slope"], "grad_eff_rank_at_target": hit["grad_eff_rank"],
                    "early_tokens": int(early["tokens"]), "early_act_tail_slope": early["act_tail_slope"],
                    "early_act_eff_rank": early["act_eff_rank"], "final_eval_loss": frame["eval_loss"].iloc[-1]})
bs_table = pd.DataFrame(bs_rows)
bs_table

# %%
fig, axes = subplots(1, 2, width=5.5, height=3.8)
for bs, name in bs_runs.items():
    step = int(bs_table.set_index("batch_size").loc[bs, "step_at_target"])
    eig = runs[name]["spectra"][step]["act"]
    axes[0, 0].loglog(np.arange(1, eig.size + 1), eig / eig.sum(), label=f"batch {bs} (step {step})")
    frame = log_frame([name])
    axes[0, 1].plot(frame["tokens"], frame["act_tail_slope"], marker=".", label=f"batch {bs}")
axes[0, 0].axvspan(tail_window[0] + 1, tail_window[1], alpha=0.1, color="gray")
axes[0, 0].set(title=f"residual covariance spectrum at eval loss ≤ {target:.3f}", xlabel="rank k", ylabel="λ_k / Σλ")
axes[0, 1].axvline(forecast_fraction * tokens_budget, ls="--", color="gray")
axes[0, 1].set(title=f"tail slope over ranks [{tail_window[0]}, {tail_window[1]})", xlabel="tokens", ylabel="slope")
for ax in axes[0]:
    ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "batch_size_spectra.png")

# %%
if len(bs_table) >= 3:
    forecast_rho = stats.spearmanr(bs_table["early_act_tail_slope"], bs_table["tokens_to_target"]).statistic
else:
    forecast_rho = np.nan
spread_at_target = np.ptp(bs_table["act_tail_slope_at_target"])
# within-run movement of the slope across the last three records of the slowest run: a yardstick for "distinct"
slowest = bs_table.sort_values("tokens_to_target").iloc[-1]["run"]
jitter = np.ptp(log_frame([slowest])["act_tail_slope"].to_numpy()[-3:])
print(f"target loss {target:.4f}; spread of tail slope at target across batch sizes {spread_at_target:.3f} "
      f"vs movement within the last 3 records of {slowest}: {jitter:.3f}; Spearman(early slope, tokens to target) = {forecast_rho:.2f}")

# %% [markdown]
# ## 3. Further NerVE sweeps (`extra_sweeps`)
# Each entry varies one architecture field of the GELU base run; PR is also reported normalised
# by the FFN width (NerVE's width-normalised PR, Fig. 6). Empty by default.

# %%
sweep_rows = []
for field_name, values in extra_sweeps.items():
    for value in values:
        name = run(f"{field_name}={value}", **{field_name: value})
        last = runs[name]["records"][-1]
        D = runs[name]["D"]
        sweep_rows.append({"field": field_name, "value": value, "run": name, "final_eval_loss": last["eval_loss"],
                           **{f"pr_post_over_D_l{i}": last[f"pr_post_l{i}"] / D for i in range(L)},
                           **{f"se_post_l{i}": last[f"se_post_l{i}"] for i in range(L)}})
sweep_table = pd.DataFrame(sweep_rows)
sweep_table

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
movement = pd.DataFrame([{"activation": act, "run": name, **head_gradient_movement(log_frame([name]))}
                         for act, name in act_runs.items()])
separation = {col: (np.ptp(movement[f"final_{col}"]), movement[f"jitter_{col}"].max())
              for col in ("act_head_share", "grad_eff_rank", "grad_stable_rank", "grad_topk_share")}  # (spread, yardstick)
fig, axes = subplots(1, 4, width=4.0, height=3.0)
for act, name in act_runs.items():
    frame = log_frame([name])
    for ax, col in zip(axes[0], separation):
        ax.plot(frame["tokens"], frame[col], marker=".", label=act)
titles = [f"activation head share (top {tail_window[0]} modes)", "gradient effective rank", "gradient stable rank",
          "gradient top-4 energy share"]
for ax, title in zip(axes[0], titles):
    ax.set(title=title, xlabel="tokens")
    ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "gradient_curves.png")
fig, axes = subplots(len(act_runs), 2, width=4.5, height=3.0)
for row, (act, name) in enumerate(act_runs.items()):
    steps_logged = sorted(runs[name]["spectra"])
    for color, step in zip(depth_colors(len(steps_logged)), steps_logged):
        eig, sv = runs[name]["spectra"][step]["act"], runs[name]["spectra"][step]["grad"]
        axes[row, 0].loglog(np.arange(1, eig.size + 1), eig / eig.sum(), color=color, linewidth=0.8)
        axes[row, 1].semilogy(np.arange(1, sv.size + 1), sv**2 / (sv**2).sum(), color=color, linewidth=0.8, marker=".")
    axes[row, 0].axvline(tail_window[0] + 0.5, color="gray", linestyle=":")
    axes[row, 0].set(title=f"{act}: residual covariance spectrum", xlabel="rank k", ylabel="λ_k / Σλ")
    axes[row, 1].set(title=f"{act}: per-sample gradient spectrum", xlabel="rank k", ylabel="σ_k² / Σσ²")
fig.suptitle("Spectra at every logged step (blue: first, red: last); dotted: end of the head")
fig.tight_layout()
save_figure(fig, out / "gradient_spectra.png")
write_csv(movement, out / "head_gradient_movement.csv")
movement

# %%
log = log_frame(list(runs))
columns = ["run", "step", "tokens", "train_loss", "eval_loss"] + [c for c in log.columns if c not in
                                                                   ("run", "step", "tokens", "train_loss", "eval_loss")]
log = log[columns]
write_csv(log, out / "training_log.csv")
write_csv(pd.DataFrame([{"run": n, **r["config"], "final_eval_loss": r["records"][-1]["eval_loss"]}
                        for n, r in runs.items()]), out / "runs.csv")
write_csv(bs_table, out / "batch_size_summary.csv")
write_csv(corr.reset_index(), out / "activation_loss_correlation.csv")
if len(sweep_table):
    write_csv(sweep_table, out / "extra_sweeps.csv")

# %% [markdown]
# ## Findings

# %%
rhos = movement["rho"].dropna()
co_moving = int((rhos.abs() >= 0.5).sum())
distinct = {col: spread > yardstick for col, (spread, yardstick) in separation.items()}
grad_distinct = [col for col in ("grad_eff_rank", "grad_stable_rank", "grad_topk_share") if distinct[col]]
head_gradient_verdict = ("reproduced" if distinct["act_head_share"] and grad_distinct and co_moving > len(rhos) / 2
                         else "not reproduced" if not (distinct["act_head_share"] or grad_distinct or co_moving)
                         else "partly reproduced")
head_gradient_finding = (
    f"Spectral Lens finding 3 (head of the activation spectrum alongside gradient spectra) is {head_gradient_verdict} "
    f"on the activation sweep: across {', '.join(act_runs)} the late head share spans "
    f"{separation['act_head_share'][0]:.3f} ({'more' if distinct['act_head_share'] else 'not more'} than the "
    f"{separation['act_head_share'][1]:.3f} one run moves over its last 3 records) and the gradient stable rank "
    f"{separation['grad_stable_rank'][0]:.2f} (yardstick {separation['grad_stable_rank'][1]:.2f}); gradient "
    f"statistics that separate the activations: {', '.join(grad_distinct) if grad_distinct else 'none'}. "
    f"Record-to-record changes of head share and gradient stable rank correlate with |Spearman ρ| ≥ 0.5 in "
    f"{co_moving} of {len(rhos)} runs (ρ = " + ", ".join(f"{r:+.2f}" for r in movement["rho"]) + "). "
    "The execution-side half of the claim is not tested (no run changes only the execution).")
n_strong = int((corr.abs() >= 0.94).sum().sum())
best_act = min(final, key=final.get)
se_r = corr.loc["se_post"]
findings = [
    f"Final eval loss after {tokens_budget:,} tokens: " + ", ".join(f"{a} {v:.3f}" for a, v in final.items())
    + f" (nats per byte); {best_act} is lowest.",
    f"{n_strong} of {corr.size} (metric, activation) Pearson correlations with eval loss reach |r| ≥ 0.94, "
    f"the level NerVE reports at 125M scale; SE_post gives r = " + ", ".join(f"{a} {v:+.2f}" for a, v in se_r.items()) + ".",
    f"Batch sizes {list(bs_runs)} reach eval loss {target:.3f} after " + ", ".join(
        f"{int(t):,}" for t in bs_table["tokens_to_target"]) + " tokens; the residual tail slope there is "
    + ", ".join(f"{s:.2f}" for s in bs_table["act_tail_slope_at_target"]) + f" (spread {spread_at_target:.2f}, "
    + ("larger" if spread_at_target > jitter else "not larger") + f" than the {jitter:.2f} a single run moves over its last three records), "
    + "so at this scale the spectra at equal loss " + ("do" if spread_at_target > jitter else "do not") + " look distinct.",
    (f"Early tail slope (first record after {forecast_fraction:.0%} of the budget) vs tokens to target: Spearman ρ = {forecast_rho:+.2f} "
     f"over {len(bs_table)} runs; with this few runs and one seed this is an anecdote, not a forecast test."
     if np.isfinite(forecast_rho) else "Fewer than 3 batch sizes: no forecast correlation computed."),
    head_gradient_finding,
    "Caveat of scale: byte-level models of ~1M parameters trained for minutes on one seed; NerVE and "
    "Spectral Lens report 70M-1.5B models trained on billions of tokens. Treat agreements as consistency checks.",
]
report = Report.for_notebook("06_training_dynamics", model, note="Small models trained here (below); the params name only names the output folder.")
report.model_section(None, **{"corpus": corpus, "layers": L, "width": hidden_size, "FFN width": intermediate_size,
                               "norm": norm_placement, "positions": position_embedding, "steps (batch 16 equiv.)": steps,
                               "seq_len": seq_len, "lr": lr, "seed": seed, "tokens per run": tokens_budget,
                               "tokens in the spectra": f"all {eval_windows} x {seq_len} positions of the held-out "
                               "windows, position 0 included (NerVE's setting; notebook 05 also reports sink-free)"})
report.heading("Findings").bullets(findings)
report.heading("Activation sweep: Pearson r of layer-mean metric with eval loss").table(corr.reset_index(), digits=3)
report.figure(out / "nerve_heatmaps_activation.png", "NerVE metrics, layers × logged steps, per activation")
report.figure(out / "activation_curves.png", "eval loss, width-normalised PR_post and residual effective rank")
report.heading("Batch size at equal loss").table(bs_table, digits=4)
report.figure(out / "batch_size_spectra.png", "residual covariance spectra at equal loss, and tail slope over training")
report.heading("Gradient spectra and the head of the activation spectrum")
report.paragraph(f"Per record in `training_log.csv`: `act_head_share` (share of residual variance in the first "
                 f"{tail_window[0]} modes), `grad_eff_rank`, `grad_stable_rank`, `grad_topk_share` (top-4 share of "
                 f"sum sigma^2) of the per-sample gradient matrix ({grad_samples} sequences x the last FFN's output "
                 "projection). `rho`: Spearman correlation of record-to-record changes of head share and gradient "
                 "stable rank; `final_*`: mean of the last 3 records; `jitter_*`: their peak-to-peak range.")
report.table(movement, digits=3)
report.figure(out / "gradient_curves.png", "activation head share and gradient spectrum statistics over training")
report.figure(out / "gradient_spectra.png", "activation and per-sample gradient spectra at every logged step")
if len(sweep_table):
    report.heading("Further sweeps").table(sweep_table, digits=4)
report.write(out / "report.md")
print("\n".join(findings))
