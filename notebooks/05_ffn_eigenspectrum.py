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
# # 05 · FFN eigenspectrum: does the nonlinearity spread variance across the FFN's latent space?
# For every FFN, the covariance eigenspectrum of its pre-activation (gate projection output for
# gated FFNs, input projection output otherwise) and post-activation (input of the output
# projection), and the NerVE metrics (NerVE, sec. 2): spectral entropy SE, participation ratio PR,
# early eigenvalue enrichment EEE, and the Jensen-Shannon divergence between the two spectra.
# NerVE's finding on trained models: the nonlinearity raises SE and PR and lowers EEE. We test it
# here, layer by layer, on a trained model over offline text.

# %%
import math
import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from utils import Report, load_model, output_dir, sample_tokens
from utils.atomic_io import save_npy, write_csv
from utils.engine.activations import collect_activations, default_ffn_budget, ffn_pass_plan
from utils.metrics.spectra import nerve_metrics, normalized
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import save_figure, subplots

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML
output_root: str = "output"  # outputs go to <output_root>/<model>/05_ffn_eigenspectrum/
corpus: str = "stdlib-docs"  # "stdlib-docs" (offline), "file:<path or glob>", or "wikitext-103"
n_sequences: int = 64  # token windows; 64 x 128 gives 8192 tokens, at least 4 per FFN dimension up to D_ff 2048
seq_len: int = 128  # tokens per window
seed: int = 0  # window choice
# skip_first: the all-token metrics (NerVE's setting) are reported beside the sink-free ones, from the same pass
skip_first: int = 1  # first positions of every window left out of the main statistics (attention sinks)
batch_size: int = 8  # windows per forward pass
spectra_layers: list = []  # layers whose spectra are plotted (negative counts from the end); empty list: first, middle, last
ffn_memory_mb: int = 0  # budget for the FFN accumulators held at once (2 D_ff^2 4 bytes per layer in float32); 0: half the memory free after loading
accumulator: str = "float32"  # FFN accumulator storage: "float32" (per-batch centring, Chan et al. merge) or "float64"
majority: float = 0.5  # a trend "holds overall" when it holds in more than this fraction of layers
rank_rtol: float = 1e-10  # numerical rank: eigenvalues above this fraction of the largest (at least batches x machine epsilon)
dominant_share: float = 0.5  # a spectrum is dominated by one direction when its top eigenvalue holds more than this share
cache: bool = False  # cache the accumulators (utils.paths.cache_dir()/activations; 2 D_ff^2 8 bytes per layer)

# %%
apply_params_file(globals(), "05_ffn_eigenspectrum")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
loaded = load_model(model)
out = output_dir(loaded.params, "05_ffn_eigenspectrum", output_root)
adapter = loaded.adapter
L, d, d_ff = adapter.dims.L, adapter.dims.d, adapter.dims.d_ff
for name, value, low in [("n_sequences", n_sequences, 1), ("seq_len", seq_len, 2), ("batch_size", batch_size, 1),
                         ("ffn_memory_mb", ffn_memory_mb, 0)]:
    if value < low:
        raise ValueError(f"parameter {name} must be >= {low}, got {value}")
if not 0.0 <= majority < 1.0:
    raise ValueError(f"parameter majority must be in [0, 1), got {majority}")
if not 0.0 < rank_rtol < 1.0 or not 0.0 < dominant_share < 1.0:
    raise ValueError(f"parameters rank_rtol and dominant_share must be in (0, 1), got {rank_rtol}, {dominant_share}")
if not spectra_layers:
    spectra_layers = sorted({0, L // 2, L - 1})
for i in spectra_layers:
    try:
        adapter.check_layer(i)
    except IndexError as err:
        raise ValueError(f"parameter spectra_layers: {err}") from None
spectra_layers = sorted({i % L for i in spectra_layers})
tokens = sample_tokens(loaded.tokenizer, corpus, n_sequences, seq_len, seed)
if not 0 <= skip_first < seq_len:
    raise ValueError(f"parameter skip_first={skip_first} must be in [0, seq_len)")
n_tokens = n_sequences * (seq_len - skip_first)  # tokens entering the statistics
max_rank = min(d_ff, n_tokens - 1)  # rank of a covariance of n_tokens rows
rank_deficient = n_tokens - 1 < d_ff
if rank_deficient:
    warnings.warn(f"{n_tokens} tokens < D_ff + 1 = {d_ff + 1}: the covariances have rank <= {n_tokens - 1}, which caps "
                  f"SE at ln({n_tokens - 1}) and PR at {n_tokens - 1}; raise n_sequences or seq_len")
n_all_tokens = n_sequences * seq_len  # NerVE's setting: every position
if accumulator not in ("float32", "float64"):
    raise ValueError(f"parameter accumulator must be 'float32' or 'float64', got {accumulator!r}")
# Each batch folds into the accumulator with one rounding (relative eps of its storage), so eigenvalues
# below n_batches x eps of the largest are rounding noise (float32, 64 windows in batches of 8: 9.5e-7;
# SmolLM2's measured float32 noise floor is 1.9e-8) and are not counted in the numerical rank.
n_batches = math.ceil(n_sequences / batch_size)
rank_floor = max(rank_rtol, n_batches * torch.finfo(getattr(torch, accumulator)).eps)
device = next(loaded.model.parameters()).device
budget = (ffn_memory_mb << 20) or default_ffn_budget(device)
plan = ffn_pass_plan(L, d_ff, budget, accumulator)
groups = [list(range(s, min(s + plan.layers_per_pass, L))) for s in range(0, L, plan.layers_per_pass)]
plan_3b = ffn_pass_plan(36, 11008, budget, accumulator)  # a Qwen2.5-3B shape at the same budget
print(f"{loaded.params.name}: L={L}, d={d}, D_ff={d_ff}, gated={adapter.ffn(0).w_gate is not None}; "
      f"{n_tokens} tokens of '{corpus}' ({n_tokens / d_ff:.1f} per FFN dimension); on {device}: {plan.describe()}")
print(f"Qwen2.5-3B shape (L=36, D_ff=11008) at this budget: {plan_3b.describe()}")

# %% [markdown]
# ## 1. Pre/post-activation covariance spectra of every FFN
# The activation engine streams the model over the windows and accumulates each FFN's pre- and
# post-activation covariance (NerVE eq. 1) on the model's device: every batch is centred on its own
# mean and merged exactly (Chan et al. 1979), so float32 storage keeps ~1e-6 relative accuracy at
# half the memory of float64. Layers go in groups whose accumulators fit the budget; each group's
# eigenvalues (`eigvalsh`, values only) are taken layer by layer and the accumulator freed at once
# (NerVE appendix F, Algorithm 1).
#
# Sink positions. The first `skip_first` positions of every window stay out of the main statistics,
# but their rows are kept (a few per window) and merged into the same accumulator after the
# sink-free eigenvalues are taken: the all-token spectra NerVE uses come from the same forward pass.

# %%
def layer_row(i: int, pre: np.ndarray, post: np.ndarray) -> dict:
    return {"layer": i, **nerve_metrics(pre, post), "top1_pre": pre[0] / pre.sum(), "top1_post": post[0] / post.sum(),
            "rank_pre": int((pre > rank_floor * pre[0]).sum()), "rank_post": int((post > rank_floor * post[0]).sum())}


def metrics_table(rows: list, tokens_used: int) -> pd.DataFrame:
    t = pd.DataFrame(rows)
    t["pr_gain"] = t.pr_post / t.pr_pre
    t["se_up"] = t.se_post > t.se_pre
    t["pr_up"] = t.pr_post > t.pr_pre
    t["eee_down"] = t.eee_post < t.eee_pre
    t["holds"] = t.se_up & t.pr_up & t.eee_down
    t["n_tokens"], t["d_ff"] = tokens_used, d_ff
    return t[["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js", "pr_gain", "se_up",
              "pr_up", "eee_down", "holds", "top1_pre", "top1_post", "rank_pre", "rank_post", "n_tokens", "d_ff"]]


rows, rows_all, eig_pre, eig_post = [], [], np.zeros((L, d_ff)), np.zeros((L, d_ff))
with tqdm(total=L, desc="FFN spectra", unit="layer") as bar:
    for group in groups:
        stats = collect_activations(loaded, tokens, residual=False, ffn_layers=group, batch_size=batch_size,
                                    ffn_memory_bytes=budget, cache=cache, skip_first=skip_first,
                                    ffn_dtype=accumulator, keep_skipped=skip_first > 0)
        for i in group:
            acc_pre, acc_post = stats.ffn_pre.pop(i), stats.ffn_post.pop(i)
            eig_pre[i] = acc_pre.eigenvalues().numpy()
            eig_post[i] = acc_post.eigenvalues().numpy()
            rows.append(layer_row(i, eig_pre[i], eig_post[i]))
            if skip_first:  # all tokens: merge the sink rows into the same accumulators (exact)
                acc_pre.update(stats.ffn_pre_skipped.pop(i))
                acc_post.update(stats.ffn_post_skipped.pop(i))
                rows_all.append(layer_row(i, acc_pre.eigenvalues().numpy(), acc_post.eigenvalues().numpy()))
            else:
                rows_all.append(rows[-1])
            del acc_pre, acc_post
            bar.update()
        del stats
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
df = metrics_table(rows, n_tokens)  # sink-free: the main statistics
df_all = metrics_table(rows_all, n_all_tokens)  # every position, as NerVE
write_csv(df, out / "ffn_spectra.csv", float_format="%.10g")
write_csv(df_all, out / "ffn_spectra_all_tokens.csv", float_format="%.10g")
save_npy(eig_pre, out / "eigenvalues_pre.npy")
save_npy(eig_post, out / "eigenvalues_post.npy")
df

# %% [markdown]
# ## 2. The metrics across depth, pre vs post
# SE is bounded by ln D_ff (dotted), PR by D_ff, EEE lies in [0, (D_ff - 1)/D_ff]; PR gain = PR_post / PR_pre
# (above 1: the nonlinearity spreads variance over more directions).

# %%
panels = [("se", "spectral entropy SE", math.log(max_rank)), ("pr", "participation ratio PR", None),
          ("eee", "early eigenvalue enrichment EEE", None)]
fig, axes = subplots(1, 4, width=3.6, height=3.2)
for ax, (key, title, bound) in zip(axes.flat, panels):
    ax.plot(df.layer, df[f"{key}_pre"], marker=".", label="pre")
    ax.plot(df.layer, df[f"{key}_post"], marker=".", label="post")
    if bound is not None:
        ax.axhline(bound, color="gray", linestyle=":", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layer")
axes.flat[0].legend(fontsize=8)
ax = axes.flat[3]
ax.plot(df.layer, df.pr_gain, marker=".", color="C2")
ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
ax.set_yscale("log")
ax.set_title("PR gain post / pre", fontsize=10)
ax.set_xlabel("layer")
fig.suptitle(f"NerVE metrics by layer — {loaded.params.name} ({n_tokens} tokens)")
fig.tight_layout()
save_figure(fig, out / "metrics_by_depth.png")

# %% [markdown]
# ## 3. Jensen-Shannon divergence between the pre and post spectra (rank-matched, NerVE eqs. 4-6)

# %%
fig, axes = subplots(1, 1, width=6.0, height=3.2)
ax = axes.flat[0]
ax.plot(df.layer, df.js, marker="o", markersize=4, color="C3")
ax.set_ylim(0, max(df.js.max() * 1.15, 1e-3))
ax.set_xlabel("layer")
ax.set_ylabel("JS(pre || post)  [0, ln 2]")
ax.set_title(f"Spectral shift caused by the nonlinearity — {loaded.params.name}")
fig.tight_layout()
save_figure(fig, out / "js_profile.png")

# %% [markdown]
# ## 4. Eigenvalue spectra of selected layers
# Normalised eigenvalues lambda_k / sum lambda against rank k, log-log.

# %%
fig, axes = subplots(1, len(spectra_layers), width=3.6, height=3.2)
k = np.arange(1, d_ff + 1)
for ax, i in zip(axes.flat, spectra_layers):
    for eigs, label in ((eig_pre[i], "pre"), (eig_post[i], "post")):
        p = normalized(eigs)
        keep = p > 0
        ax.loglog(k[keep], p[keep], label=label, linewidth=1)
    r = df.iloc[i]
    ax.set_title(f"layer {i}: PR {r.pr_pre:.0f} -> {r.pr_post:.0f}, JS {r.js:.3f}", fontsize=9)
    ax.set_xlabel("rank k")
axes.flat[0].set_ylabel("lambda_k / sum lambda")
axes.flat[0].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, out / "spectra_selected_layers.png")

# %% [markdown]
# ## Findings
# NerVE's finding, per layer: SE_post > SE_pre, PR_post > PR_pre and EEE_post < EEE_pre. Each trend
# "holds overall" when it holds in more than `majority` of the layers.

# %%
def nerve_verdict(t: pd.DataFrame) -> tuple[str, dict, dict]:
    """HOLDS / HOLDS PARTLY / DOES NOT HOLD, per-trend layer counts, per-trend majority flags."""
    c = {"SE rises": int(t.se_up.sum()), "PR rises": int(t.pr_up.sum()), "EEE falls": int(t.eee_down.sum())}
    o = {name: k > majority * L for name, k in c.items()}
    return ("HOLDS" if all(o.values()) else "HOLDS PARTLY" if any(o.values()) else "DOES NOT HOLD"), c, o


verdict, counts, overall = nerve_verdict(df)
verdict_all, counts_all, _ = nerve_verdict(df_all)
n_all = int(df.holds.sum())
failing = df.layer[~df.holds].tolist()
flipped = df.layer[df.holds != df_all.holds].tolist()
js_max = df.loc[df.js.idxmax()]
median_gain = float(df.pr_gain.median())
findings = [
    f"Verdict: NerVE's finding (the nonlinearity raises SE and PR and lowers EEE) {verdict} on "
    f"{loaded.params.name}: all three trends together hold in {n_all} of {L} layers "
    f"(sink-free: the first {skip_first} position(s) of every window left out, {n_tokens} tokens).",
    f"Verdict on all {n_all_tokens} tokens (NerVE's setting, sink positions included, same forward pass): "
    f"{verdict_all}; all three trends hold in {int(df_all.holds.sum())} of {L} layers ("
    + "; ".join(f"{name} in {c}/{L}" for name, c in counts_all.items()) + "). "
    + ("The sink positions do not change the verdict" if verdict_all == verdict else
       f"The sink positions change the verdict ({verdict} without them, {verdict_all} with them)")
    + (f"; the per-layer outcome differs in layer(s) {', '.join(map(str, flipped))}." if flipped
       else "; no layer's outcome changes.")
    + f" Median PR gain {df_all.pr_gain.median():.2f}x with them, {df.pr_gain.median():.2f}x without; largest "
      f"post-activation top-eigenvalue share {df_all.top1_post.max():.1%} with them, {df.top1_post.max():.1%} without.",
    "Per trend: " + "; ".join(f"{name} in {c}/{L} layers ({'majority' if overall[name] else 'not a majority'})"
                              for name, c in counts.items()) + ".",
    (f"Layers where at least one trend fails: {', '.join(map(str, failing))}." if failing
     else "No layer breaks any of the three trends."),
    f"PR gain post/pre: median {median_gain:.2f}x (range {df.pr_gain.min():.2f}x at layer "
    f"{int(df.layer[df.pr_gain.idxmin()])} to {df.pr_gain.max():.2f}x at layer {int(df.layer[df.pr_gain.idxmax()])}); "
    f"PR pre averages {df.pr_pre.mean():.1f} and post {df.pr_post.mean():.1f} of D_ff = {d_ff}.",
    f"SE averages {df.se_pre.mean():.3f} pre and {df.se_post.mean():.3f} post (max ln D_ff = {math.log(d_ff):.3f}); "
    f"EEE averages {df.eee_pre.mean():.3f} pre and {df.eee_post.mean():.3f} post.",
    f"The largest spectral shift (JS) is at layer {int(js_max.layer)} ({js_max.js:.4f} of at most ln 2 = "
    f"{math.log(2):.4f}); median JS over layers {df.js.median():.4f}.",
]
dominated = df.layer[df.top1_post > dominant_share].tolist()
if dominated:
    overlap = sorted(set(dominated) & set(failing))
    findings.append(
        f"In {len(dominated)} layer(s) ({', '.join(map(str, dominated))}) one direction holds more than "
        f"{dominant_share:.0%} of the post-activation variance (up to {df.top1_post.max():.1%}, layer "
        f"{int(df.layer[df.top1_post.idxmax()])}); {len(overlap)} of them are among the layers where a trend fails. "
        f"A single dominant post-activation direction (e.g. a few outlier tokens with very large activations) "
        f"collapses SE and PR there, whatever happens to the rest of the spectrum.")
else:
    findings.append(f"No post-activation spectrum is dominated by one direction (largest top-eigenvalue share "
                    f"{df.top1_post.max():.1%}).")
findings.append(
    f"The pre-activation is a linear map of the d = {d} dimensional FFN input, so its covariance has rank <= "
    f"min(d, D_ff) = {min(d, d_ff)} (numerical rank measured: at most {int(df.rank_pre.max())}), capping SE_pre at "
    f"ln {min(d, d_ff)} = {math.log(min(d, d_ff)):.3f} and PR_pre at {min(d, d_ff)}; the post-activation reaches "
    f"numerical rank {int(df.rank_post.min())}-{int(df.rank_post.max())} of {max_rank} (eigenvalues above "
    f"{rank_floor:.1e} of the largest). Part of any SE/PR rise is the "
    f"nonlinearity lifting this linear rank cap, as in NerVE's setting.")
if rank_deficient:
    findings.append(f"Caution: {n_tokens} tokens < D_ff + 1, so every covariance has rank <= {n_tokens - 1}; "
                    f"SE and PR are capped and the comparison is biased toward the cap.")
for line in findings:
    print("-", line)

# %%
report = Report.for_notebook("05_ffn_eigenspectrum", loaded)
report.model_section(loaded)
report.heading("Data").paragraph(
    f"Corpus `{corpus}`: {n_sequences} windows x {seq_len} tokens, the first {skip_first} position(s) of each "
    f"left out of the main statistics (attention sinks) = {n_tokens} tokens (seed {seed}), "
    f"{n_tokens / d_ff:.1f} tokens per FFN dimension (D_ff = {d_ff}); the all-token metrics (NerVE's setting, "
    f"{n_all_tokens} tokens, `ffn_spectra_all_tokens.csv`) merge the left-out rows into the same accumulators. "
    f"Pre-activation: "
    f"{'gate projection output (gated FFN)' if adapter.ffn(0).w_gate is not None else 'input projection output'}; "
    f"post-activation: input of the output projection. Covariances accumulated in {accumulator} with per-batch "
    f"centring merged exactly (Chan et al. 1979), eigenvalues by float64 eigvalsh; natural logarithms; JS "
    f"rank-matched (NerVE eqs. 4-6); EEE divided by D/2 as "
    f"NerVE eq. (3) writes it (a rank-one spectrum gives (D-1)/D).")
report.heading("Passes and memory").paragraph(
    f"On {device}: {plan.describe()}. A Qwen2.5-3B shape (L = 36, D_ff = 11008) at the same budget: "
    f"{plan_3b.describe()}.")
report.heading("Findings").bullets(findings)
report.heading("Per layer").table(df[["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post",
                                      "js", "pr_gain", "top1_post", "rank_pre", "rank_post", "holds"]], digits=4)
report.heading("Per layer, all tokens (NerVE's setting)").table(
    df_all[["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js", "pr_gain", "top1_post",
            "holds"]], digits=4)
report.figure(out / "metrics_by_depth.png", "SE, PR, EEE pre vs post, and PR gain, by layer")
report.figure(out / "js_profile.png", "JS divergence between pre and post spectra by layer")
report.figure(out / "spectra_selected_layers.png",
              f"Normalised eigenvalue spectra of layers {', '.join(map(str, spectra_layers))} (log-log)")
report.write(out / "report.md")
print(f"wrote {out}")
