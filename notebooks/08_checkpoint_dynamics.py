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
import math

import numpy as np
import pandas as pd

from utils import Report, load_params, output_dir
from utils.analyses.checkpoint_dynamics import (
    forecast_verdict,
    layer_step_matrix,
    measure_series,
    series_from_parameters,
    settle_verdict,
    trend_verdict,
)
from utils.atomic_io import write_csv
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import heatmap, line_panel, save_figure, subplots

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
ffn_memory_mb: int = 0  # FFN accumulator budget of one pass (more layers: more passes); 0: half the memory free after loading
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
params = load_params(model)
out = output_dir(params, "08_checkpoint_dynamics", output_root)
for name, value, low in [("n_sequences", n_sequences, 1), ("seq_len", seq_len, 2), ("batch_size", batch_size, 1),
                         ("ffn_memory_mb", ffn_memory_mb, 0), ("forecast_lag", forecast_lag, 1)]:
    if value < low:
        raise ValueError(f"parameter {name} must be >= {low}, got {value}")
if not 0 <= skip_first < seq_len:
    raise ValueError(f"parameter skip_first={skip_first} must be in [0, seq_len)")
if len(tail_window) != 2 or not 0 <= tail_window[0] < tail_window[1] - 1:
    raise ValueError(f"parameter tail_window={tail_window} must be [start, stop) with stop - start >= 2")
for name, value in [("rho_min", rho_min), ("majority", majority), ("settle_fraction", settle_fraction),
                    ("settle_tolerance", settle_tolerance), ("early_fraction", early_fraction)]:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"parameter {name} must be in (0, 1], got {value}")
series = series_from_parameters(params, checkpoints=checkpoints, revisions=revisions, hub_id=hub_id,
                                params_list=params_list, output_root=output_root)
steps = series.steps
n_ck = len(steps)
print(f"series: {series.description}\n{n_ck} checkpoints at steps {steps} "
      f"(step from {sorted({c.step_from for c in series.checkpoints})}); outputs in {out}")

# %% [markdown]
# ## 1. Measure every checkpoint
# One checkpoint at a time: load, weight SVDs, one streaming pass of the activation engine over
# the fixed token sample (FFN pre/post and residual covariances in float64), free. Cached
# checkpoints are read back without loading.

# %%
result = measure_series(series, corpus=corpus, n_sequences=n_sequences, seq_len=seq_len, seed=seed,
                        skip_first=skip_first, batch_size=batch_size, tail_window=tuple(tail_window),
                        ffn_memory_mb=ffn_memory_mb, cache=cache)
trajectory, ck_table = result.trajectory, result.checkpoints
n_tokens = n_sequences * (seq_len - skip_first)
write_csv(trajectory, out / "trajectory.csv", float_format="%.10g")
write_csv(ck_table, out / "checkpoints.csv", float_format="%.10g")
has_loss = int(np.isfinite(ck_table.eval_loss).sum())
print(f"{int(ck_table.from_cache.sum())} of {n_ck} checkpoints from the cache; {has_loss} carry an eval loss; "
      f"{len(trajectory)} trajectory rows")
ck_table

# %% [markdown]
# ## 2. Layer x step heatmaps
# NerVE metrics of every FFN (layer = FFN index) and residual activation effective rank
# (layer = residual state: 0 embeddings, i = output of block i-1, last = final-normed).

# %%
shown = ["nerve.se_post", "nerve.pr_post", "nerve.eee_post", "nerve.js", "act.eff_rank", "w.ffn_in.eff_rank"]
shown = [m for m in shown if m in set(trajectory.metric)]
fig, axes = subplots(2, math.ceil(len(shown) / 2), width=4.2, height=3.0)
for ax, metric in zip(axes.flat, shown):
    M, layers, cols = layer_step_matrix(trajectory, metric)
    heatmap(ax, M, metric, "step", "layer")
    ticks = np.linspace(0, len(cols) - 1, min(5, len(cols))).astype(int)
    ax.set_xticks(ticks, cols[ticks])
    ax.set_yticks(range(len(layers)), layers)
for ax in list(axes.flat)[len(shown):]:
    ax.axis("off")
fig.tight_layout()
save_figure(fig, out / "heatmaps.png")

# %% [markdown]
# ## 3. Per-metric curves (layer means) against the step

# %%
def layer_mean(metric: str, layer: int | None = None) -> np.ndarray:
    """(checkpoints,) mean over layers of one metric (or one layer's values)."""
    M, layers, _ = layer_step_matrix(trajectory, metric)
    return M[list(layers).index(layer)] if layer is not None else np.nanmean(M, axis=0)


final_state = int(trajectory[trajectory.metric == "act.eff_rank"].layer.max())
weight_types = sorted({m.split(".")[1] for m in trajectory.metric if m.startswith("w.")})
panels = [
    ("eval loss", {"eval loss": ck_table.eval_loss.to_numpy()}),
    ("spectral entropy SE", {"pre": layer_mean("nerve.se_pre"), "post": layer_mean("nerve.se_post")}),
    ("participation ratio PR", {"pre": layer_mean("nerve.pr_pre"), "post": layer_mean("nerve.pr_post")}),
    ("EEE", {"pre": layer_mean("nerve.eee_pre"), "post": layer_mean("nerve.eee_post")}),
    ("JS(pre, post)", {"js": layer_mean("nerve.js")}),
    (f"activations, state {final_state}", {"eff rank": layer_mean("act.eff_rank", final_state)}),
    (f"tail slope, state {final_state}", {"slope": layer_mean("act.tail_slope", final_state)}),
    ("weight eff rank", {w: layer_mean(f"w.{w}.eff_rank") for w in weight_types}),
    ("weight stable rank", {w: layer_mean(f"w.{w}.stable_rank") for w in weight_types}),
    ("weight alpha", {w: layer_mean(f"w.{w}.alpha") for w in weight_types}),
]
fig, axes = subplots(2, 5, width=3.6, height=2.9)
for ax, (title, curves) in zip(axes.flat, panels):
    line_panel(ax, steps, curves, title, "step", "")
fig.tight_layout()
save_figure(fig, out / "curves.png")

# %% [markdown]
# ## Findings
# NerVE (sec. 3.1, figs. 1 and 3): over training, post-activation SE and PR rise, EEE falls and
# the JS divergence between pre and post spectra settles into its band. Each claim is tested per
# FFN layer (Spearman correlation with the step, sign as claimed, |rho| >= `rho_min`; JS: late
# range against whole range). Spectral Lens: the early activation-covariance tail forecasts
# later loss; within one run we correlate the tail slope of the final state at an early checkpoint
# with the eval loss `forecast_lag` checkpoints later, beside the loss's own persistence.

# %%
tested = np.asarray(steps) >= from_step  # (checkpoints,) the checkpoints the verdicts rest on
if tested.sum() < 2:
    raise ValueError(f"parameter from_step={from_step} leaves {int(tested.sum())} checkpoint(s) of steps {steps}")
v_steps = [s for s, t in zip(steps, tested) if t]


def matrix(metric: str) -> np.ndarray:
    return layer_step_matrix(trajectory, metric)[0][:, tested]


claims = {
    "SE_post rises": trend_verdict(matrix("nerve.se_post"), v_steps, +1, rho_min, majority),
    "PR_post rises": trend_verdict(matrix("nerve.pr_post"), v_steps, +1, rho_min, majority),
    "EEE_post falls": trend_verdict(matrix("nerve.eee_post"), v_steps, -1, rho_min, majority),
    "JS settles": settle_verdict(matrix("nerve.js"), v_steps, settle_fraction, settle_tolerance, majority),
}
loss = ck_table.eval_loss.to_numpy()[tested]
forecasts = {m: forecast_verdict(layer_mean(m, final_state)[tested], loss, v_steps, forecast_lag, early_fraction,
                                 rho_min)
             for m in ("act.tail_slope", "act.eff_rank")}
verdict_rows = [{"claim": c, "verdict": v["verdict"], "layers following": f"{v['layers_following']}/{v['layers']}",
                 "checkpoints": v["checkpoints"],
                 "statistic": (f"rho(step, layer mean) {v['rho_layer_mean']:+.2f}; {v['first']:.4g} -> {v['last']:.4g}"
                               if "rho_layer_mean" in v else
                               f"median late/whole range {v['late_range_ratio_median']:.2f} over {v['late_checkpoints']} late checkpoints")}
                for c, v in claims.items()]
verdict_rows += [{"claim": f"early {m} (state {final_state}) forecasts eval loss", "verdict": f["verdict"],
                  "layers following": "-", "checkpoints": f["pairs"],
                  "statistic": f"rho {f['rho']:+.2f} vs persistence {f['rho_persistence']:+.2f} ({f['pairs']} pairs, lag {f['lag']})"}
                 for m, f in forecasts.items()]
verdicts = pd.DataFrame(verdict_rows)
write_csv(verdicts, out / "verdicts.csv")

findings = [
    f"Series: {series.description}; {n_ck} checkpoints at steps {steps[0]}-{steps[-1]} ({', '.join(map(str, steps))}); "
    f"{has_loss} carry an eval loss; the verdicts rest on the {len(v_steps)} at steps >= {from_step}.",
]
for claim, v in claims.items():
    if "rho_layer_mean" in v:
        findings.append(
            f"NerVE: {claim} — {v['verdict']} on {v['checkpoints']} checkpoints (steps {v_steps[0]}-{v_steps[-1]}): "
            f"{v['layers_following']} of {v['layers']} FFN layers follow (Spearman with step at least {rho_min} in the "
            f"claimed direction and net change first -> last in that direction; the net change alone agrees in "
            f"{v['layers_net_as_claimed']}); the layer mean goes {v['first']:.4g} -> {v['last']:.4g} "
            f"(Spearman with step {v['rho_layer_mean']:+.2f}).")
    else:
        findings.append(
            f"NerVE: {claim} — {v['verdict']} on {v['checkpoints']} checkpoints ({v['late_checkpoints']} in the last "
            f"{settle_fraction:.0%} of the steps): in {v['layers_following']} of {v['layers']} layers JS moves over that "
            f"late span by at most {settle_tolerance:.0%} of its whole range (median ratio {v['late_range_ratio_median']:.2f}).")
left_out = [s for s, t in zip(steps, tested) if not t]
if left_out:
    first_in = steps.index(v_steps[0])
    moves = ", ".join(f"{m.split('.')[1]} {layer_mean(m)[0]:.4g} -> {layer_mean(m)[first_in]:.4g}"
                      for m in ("nerve.se_post", "nerve.pr_post", "nerve.eee_post", "nerve.js"))
    findings.append(f"Left out of the verdicts (from_step = {from_step}): step(s) {left_out}. From step {steps[0]} to step "
                    f"{v_steps[0]} the layer means move: {moves}; the verdicts with them included follow from "
                    "trajectory.csv (set from_step = 0).")
for m, f in forecasts.items():
    if f["verdict"] == "NOT TESTABLE":
        findings.append(f"Spectral Lens forecast with {m}: NOT TESTABLE — {f['pairs']} (early checkpoint, later loss) "
                        f"pairs with an eval loss (at least 4 needed).")
    else:
        findings.append(
            f"Spectral Lens forecast: early {m} of state {final_state} against eval loss {forecast_lag} checkpoints later — "
            f"{f['verdict']} (Spearman {f['rho']:+.2f} over {f['pairs']} pairs; the loss itself gives "
            f"{f['rho_persistence']:+.2f}, so the spectrum {'beats' if f['beats_persistence'] else 'does not beat'} "
            f"persistence).")
findings.append(
    "Caveat: within one run every quantity moves with the step, so a correlation with the step or with later loss "
    "shows co-movement, not cause; Spectral Lens's forecast is a claim across runs (notebook 06 section 2 tests "
    "that form). Verdicts on fewer than about 10 checkpoints are anecdotes.")
for line in findings:
    print("-", line)
verdicts

# %%
report = Report.for_notebook("08_checkpoint_dynamics", params)
report.model_section(None, **{"params": params.name, "series": series.description, "checkpoints": n_ck,
                                "steps": ", ".join(map(str, steps)),
                                "step from": ", ".join(sorted({c.step_from for c in series.checkpoints})),
                                "eval losses": has_loss, "dtype": params.dtype, "device": params.device,
                                "tokens": f"{n_sequences} x {seq_len} of '{corpus}' (seed {seed}), first {skip_first} "
                                          f"position(s) skipped = {n_tokens}",
                                "from cache": int(ck_table.from_cache.sum())})
report.heading("Findings").bullets(findings)
report.heading("Verdicts").table(verdicts)
report.heading("Checkpoints").table(ck_table, digits=5)
report.figure(out / "heatmaps.png", "layers x steps: NerVE metrics, activation effective rank, FFN input weight effective rank")
report.figure(out / "curves.png", "layer means against the step")
report.write(out / "report.md")
print(f"wrote {out}")
