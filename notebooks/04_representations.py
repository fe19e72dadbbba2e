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
# # 04 · Representations: how does the residual stream change with depth?
# CKA between all layers, the logit lens, representation drift and activation spectra, from one
# streaming pass of the model over offline text (Prisma write-up, "Representation Analysis",
# "Activation Effective Rank", "Activation Eigenspectra", "Embedding vs Final Activation Spectra").
#
# Layer index convention everywhere below: **layer 0 = embeddings** (input of block 1, with any
# embedding scale), **layer i = residual stream after block i** (before the final norm); the
# final-normed state (what the LM head reads) appears as the last drift step and in the
# embedding-vs-final comparison.

# %%
import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from utils import Report, load_model, output_dir, sample_tokens
from utils.atomic_io import save_npy, write_csv
from utils.engine.activations import collect_activations
from utils.engine.representations import Drift, LogitLens, activation_spectra
from utils.metrics.cka import cka_blocks, cka_matrix, cka_sample_warning
from utils.metrics.covariance import StreamingCovariance
from utils.metrics.spectra import cumulative_share, effective_rank, spectrum_metrics
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import depth_colors, heatmap, line_panel, save_figure, subplots
from utils.reporting.report import fmt

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML
output_root: str = "output"  # outputs go to <output_root>/<model>/04_representations/
corpus: str = "stdlib-docs"  # "stdlib-docs" (offline), "file:<path or glob>", or "wikitext-103"
n_sequences: int = 32  # token windows
seq_len: int = 128  # tokens per window
seed: int = 0  # window choice, CKA token subsample, logit-lens token subsample
skip_first: int = 1  # first positions of every window left out of all statistics (attention sinks with massive activations)
batch_size: int = 8  # windows per forward pass
keep_samples: int = 2048  # tokens per layer kept for CKA (same tokens in every layer)
cka_estimator: str = "debiased"  # "debiased" (unbiased HSIC, Song et al. 2012) or "linear" (Kornblith et al. 2019)
block_threshold: float = 0.9  # adjacent-layer CKA at or above this joins layers into one block
lens_tokens: int = 512  # positions the logit lens evaluates; 0 means every position with a next token
max_logit_elements: int = 16777216  # logits held at once; the lens works on this // V tokens at a time
cache: bool = True  # reuse cached activation statistics (utils.paths.cache_dir()/activations)

# %%
apply_params_file(globals(), "04_representations")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
loaded = load_model(model)
out = output_dir(loaded.params, "04_representations", output_root)
adapter = loaded.adapter
L, d, V = adapter.dims.L, adapter.dims.d, adapter.dims.V
for name, value, low in [("n_sequences", n_sequences, 1), ("seq_len", seq_len, 2), ("batch_size", batch_size, 1),
                         ("keep_samples", keep_samples, 4), ("lens_tokens", lens_tokens, 0),
                         ("max_logit_elements", max_logit_elements, 1)]:
    if value < low:
        raise ValueError(f"parameter {name} must be >= {low}, got {value}")
if cka_estimator not in ("debiased", "linear"):
    raise ValueError(f"parameter cka_estimator must be 'debiased' or 'linear', got {cka_estimator!r}")
if not 0.0 < block_threshold <= 1.0:
    raise ValueError(f"parameter block_threshold must be in (0, 1], got {block_threshold}")
debiased = cka_estimator == "debiased"
tokens = sample_tokens(loaded.tokenizer, corpus, n_sequences, seq_len, seed)
layer_names = ["emb"] + [str(i) for i in range(1, L + 1)]
print(f"{loaded.params.name}: L={L}, d={d}, V={V}; {tokens.n_tokens} tokens of '{corpus}'")

# %% [markdown]
# ## 1. One pass over the text
# The engine streams the model once: covariances of every residual state, `keep_samples` tokens
# per layer for CKA, and two per-batch consumers, the logit lens and the drift, in the same
# forward pass. Encoder-only models have no LM head: the logit lens is skipped for them.

# %%
has_lens = adapter.is_causal_lm
stat_mask = torch.ones_like(tokens.input_ids, dtype=torch.bool)
stat_mask[:, :skip_first] = False  # the model still sees these positions; no statistic does
lens = LogitLens(adapter, tuple(tokens.input_ids.shape), lens_tokens, seed, mask=stat_mask,
                 max_logit_elements=max_logit_elements) if has_lens else None
drift = Drift(has_final_norm=adapter.final_norm is not None)
stats = collect_activations(loaded, tokens, keep_samples=keep_samples, batch_size=batch_size, seed=seed,
                            cache=cache, consumers=[c for c in (lens, drift) if c is not None],
                            skip_first=skip_first)
n_cka = stats.samples.shape[1]
print(f"{stats.n_tokens} tokens accumulated ({'cached statistics' if stats.from_cache else 'computed'}); "
      f"{n_cka} tokens per layer for CKA")

# %% [markdown]
# ## 2. CKA between all layer pairs
# Linear CKA (Kornblith et al. 2019) or its debiased version (unbiased HSIC, Song et al. 2012;
# Nguyen et al. 2021) on the same tokens at every layer. Blocks: maximal runs of consecutive
# layers whose adjacent CKA stays at or above `block_threshold`.

# %%
cka_warning = cka_sample_warning(n_cka, d, debiased)
if cka_warning:
    print("WARNING:", cka_warning)
cka = cka_matrix(stats.samples[: L + 1], debiased=debiased)  # (L + 1, L + 1), index 0 = embeddings
save_npy(cka, out / "cka.npy")
blocks = cka_blocks(cka, block_threshold)
adjacent = np.diagonal(cka, offset=1)
fig, axes = subplots(1, 1, 7, 6)
heatmap(axes[0, 0], cka, f"{cka_estimator} CKA ({n_cka} tokens)", "layer", "layer", "CKA", vmin=0, vmax=1)
ticks = np.arange(0, L + 1, max(1, (L + 1) // 12))
for setter in (axes[0, 0].set_xticks, axes[0, 0].set_yticks):
    setter(ticks, [layer_names[t] for t in ticks])
for a, b in blocks:
    if b > a:
        axes[0, 0].add_patch(Rectangle((a - 0.5, a - 0.5), b - a + 1, b - a + 1, fill=False, edgecolor="white", lw=1.5))
save_figure(fig, out / "cka.png")
pd.DataFrame({"first": [a for a, _ in blocks], "last": [b for _, b in blocks]})

# %% [markdown]
# ## 3. Logit lens
# Every residual state through the final norm and the unembedding (`adapter.apply_final_norm`,
# `adapter.logits`; the last layer is the model's own output). Per layer, over `lens_tokens`
# positions: prediction entropy, top-1 probability, median rank of the correct next token,
# agreement of the top-1 with the model's final top-1, KL(final || layer), cross-entropy.

# %%
if has_lens:
    lens_df = lens.result()
    write_csv(lens_df, out / "logit_lens.csv")
    fig, axes = subplots(2, 2, 6, 4)
    x = lens_df.layer.to_numpy()
    line_panel(axes[0, 0], x, {"entropy": lens_df.entropy}, "Prediction entropy", "layer", "nats")
    line_panel(axes[0, 1], x, {"top-1": lens_df.top1_prob}, "Top-1 probability", "layer", "probability")
    line_panel(axes[1, 0], x, {"median rank": lens_df.median_rank}, "Median rank of the correct token", "layer", "rank")
    axes[1, 0].set_yscale("log")
    line_panel(axes[1, 1], x, {"agreement": lens_df.agreement}, "Agreement with the final top-1", "layer", "fraction")
    save_figure(fig, out / "logit_lens.png")
    display(lens_df)
else:
    lens_df = None
    print(f"{adapter.name} is an encoder without an LM head: logit lens skipped")

# %% [markdown]
# ## 4. Representation drift
# Mean over tokens of the cosine similarity and L2 distance between consecutive states; the last
# step (models with a final norm) is the final norm itself.

# %%
drift_df = drift.result()
write_csv(drift_df, out / "drift.csv")
fig, axes = subplots(1, 2, 6, 4)
colors = ["gray" if s == "final_norm" else "C0" for s in drift_df.step]
axes[0, 0].bar(drift_df.layer, drift_df.cosine, color=colors)
axes[0, 0].set(title="Cosine similarity to the previous state", xlabel="layer (gray: final norm)", ylabel="cosine")
axes[0, 1].bar(drift_df.layer, drift_df.l2, color=colors)
axes[0, 1].set(title="L2 distance to the previous state", xlabel="layer (gray: final norm)", ylabel="L2")
save_figure(fig, out / "drift.png")

# %% [markdown]
# ## 5. Activation spectra
# Eigenvalues lambda of each residual-state covariance (float64, streamed). Effective rank
# exp(H(p)), p = lambda / sum lambda (Roy & Vetterli 2007, applied to covariance eigenvalues
# lambda = s^2 / (n - 1), not to the singular values s of the activation matrix as in the seed's
# weight analysis), participation ratio (sum lambda)^2 / sum lambda^2, and n90, the number of
# components holding 90% of the variance.

# %%
spectra_df, eigs = activation_spectra(stats)
write_csv(spectra_df, out / "activation_spectra.csv")
fig, axes = subplots(1, 1, 7, 4)
line_panel(axes[0, 0], spectra_df.layer, {"effective rank": spectra_df.eff_rank,
                                          "participation ratio": spectra_df.participation_ratio,
                                          "n90": spectra_df.n90},
           "Activation dimensionality by depth (0 = embeddings)", "layer", "dimensions")
save_figure(fig, out / "effective_rank.png")

fig, axes = subplots(1, 2, 6, 4)
for j, (e, c) in enumerate(zip(eigs, depth_colors(len(eigs)))):
    share = e / e.sum()
    axes[0, 0].loglog(np.arange(1, e.size + 1), np.clip(share, 1e-12, None), color=c, lw=1)
    axes[0, 1].plot(np.arange(1, e.size + 1), cumulative_share(e), color=c, lw=1)
axes[0, 0].set(title="Eigenvalue spectra (blue: early, red: late)", xlabel="rank", ylabel="variance share")
axes[0, 1].axhline(0.9, color="k", ls=":", lw=1)
axes[0, 1].set(title="Cumulative variance", xlabel="components", ylabel="share", xscale="log")
save_figure(fig, out / "eigenspectra.png")

# %% [markdown]
# ### Embedding matrix vs final activations
# The embedding matrix's spectrum (covariance of its V rows; also its singular values, the seed's
# effective-rank convention) against the covariance spectrum of the final-normed last state.

# %%
emb_acc = StreamingCovariance(d)
for rows in adapter.embedding().split(16384):
    emb_acc.update(rows)
emb_eigs = emb_acc.eigenvalues().numpy()
emb_singular = np.sqrt(np.clip(np.linalg.eigvalsh(emb_acc.sum_outer.cpu().numpy())[::-1], 0, None))  # of E (V, d)
final_eigs = stats.residual[L + 1].eigenvalues().numpy()
emb_metrics, final_metrics = spectrum_metrics(emb_eigs), spectrum_metrics(final_eigs)
comparison = pd.DataFrame([
    {"spectrum": "embedding matrix (row covariance)", **emb_metrics, "eff_rank_singular_values": effective_rank(emb_singular)},
    {"spectrum": "final-normed activations", **final_metrics, "eff_rank_singular_values": float("nan")},
])
fig, axes = subplots(1, 1, 7, 4)
for e, label in [(emb_eigs, "embedding matrix"), (final_eigs, "final activations")]:
    axes[0, 0].loglog(np.arange(1, e.size + 1), np.clip(e / e.sum(), 1e-12, None), label=label)
axes[0, 0].set(title="Embedding vs final activation spectrum", xlabel="rank", ylabel="variance share")
axes[0, 0].legend()
save_figure(fig, out / "embedding_vs_final.png")
comparison

# %% [markdown]
# ## Findings

# %%
report = Report.for_notebook("04_representations", loaded)
report.model_section(loaded, **{"corpus": corpus, "tokens": stats.n_tokens,
              "positions left out per window": skip_first,
              "windows": f"{n_sequences} x {seq_len}", "CKA estimator": cka_estimator, "CKA tokens per layer": n_cka,
              "logit-lens tokens": lens_df.n_tokens.iloc[0] if has_lens else "n/a (no LM head)"})

findings = []
multi = [(a, b) for a, b in blocks if b > a]
if multi:
    described = ", ".join(f"{layer_names[a]}–{layer_names[b]} (mean CKA {fmt(cka[a:b + 1, a:b + 1].mean(), 3)})"
                          for a, b in multi)
    findings.append(f"CKA blocks (adjacent CKA >= {block_threshold}): {described}.")
else:
    findings.append(f"No two adjacent layers reach CKA {block_threshold}: no block structure at this threshold.")
drop = int(np.argmin(adjacent))
findings.append(f"The sharpest boundary is between layers {layer_names[drop]} and {layer_names[drop + 1]} "
                f"(adjacent CKA {fmt(adjacent[drop], 3)}); CKA of the embeddings with the last layer is "
                f"{fmt(cka[0, L], 3)}.")
if cka_warning:
    findings.append(f"Caution: {cka_warning}")
if has_lens:
    at_one = lens_df.index[lens_df.median_rank <= 1].tolist()
    first = lens_df.iloc[0]
    findings.append(
        (f"The correct next token reaches median rank 1 at layer {layer_names[at_one[0]]}"
         if at_one else f"The median rank of the correct token never reaches 1 (final: {fmt(lens_df.median_rank.iloc[-1])})")
        + f"; it starts at median rank {fmt(first.median_rank)} of {V} at the embeddings.")
    half = lens_df.index[lens_df.agreement >= 0.5].tolist()
    findings.append(f"Agreement with the final top-1 first reaches 50% at layer {layer_names[half[0]]}; "
                    f"at layer {layer_names[L // 2]} it is {fmt(lens_df.agreement.iloc[L // 2], 3)}.")
    peak = int(lens_df.entropy.idxmax())
    findings.append(f"Prediction entropy peaks at layer {layer_names[peak]} ({fmt(lens_df.entropy.iloc[peak], 3)} nats) "
                    f"and ends at {fmt(lens_df.entropy.iloc[-1], 3)}; cross-entropy falls from "
                    f"{fmt(first.cross_entropy, 3)} to {fmt(lens_df.cross_entropy.iloc[-1], 3)} nats.")
else:
    findings.append(f"Logit lens skipped: {adapter.name} is an encoder without an LM head.")
blocks_only = drift_df[drift_df.step != "final_norm"]
turn = blocks_only.loc[blocks_only.cosine.idxmin()]
findings.append(f"Block {int(turn.layer)} turns the representation most (cosine {fmt(turn.cosine, 3)} to its input); "
                f"the largest L2 step among blocks is block {int(blocks_only.loc[blocks_only.l2.idxmax()].layer)} "
                f"({fmt(blocks_only.l2.max(), 3)})"
                + (f"; the final norm moves it by {fmt(drift_df.l2.iloc[-1], 3)} (cosine {fmt(drift_df.cosine.iloc[-1], 3)})."
                   if drift.has_final_norm else "."))
inner = spectra_df.iloc[1:]
low = inner.loc[inner.eff_rank.idxmin()]
findings.append(f"Effective-rank bottleneck: layer {int(low.layer)} (eff. rank {fmt(low.eff_rank, 3)}, n90 {int(low.n90)}), "
                f"against {fmt(spectra_df.eff_rank.iloc[0], 3)} at the embeddings and "
                f"{fmt(spectra_df.eff_rank.iloc[-1], 3)} after the last block (width {d}).")
norms = stats.samples[: L + 1].norm(dim=2)  # (L + 1, n_cka) token norms per layer
outlier = norms.max(1).values / norms.median(1).values
worst = int(outlier.argmax())
worst_pos = int(stats.sample_positions[norms[worst].argmax()] % seq_len)
if outlier[worst] > 20:
    findings.append(f"Outlier tokens: at layer {layer_names[worst]} the largest token norm is {fmt(float(outlier[worst]), 3)}x "
                    f"the median (position {worst_pos} of its window); tokens like this dominate the covariances "
                    f"of the layers where the ratio is large, so low effective ranks there reflect a few massive "
                    f"activations rather than all tokens.")
findings.append(f"Embedding matrix eff. rank {fmt(emb_metrics['eff_rank'], 3)} vs final-normed activations "
                f"{fmt(final_metrics['eff_rank'], 3)} (ratio {fmt(emb_metrics['eff_rank'] / final_metrics['eff_rank'], 3)}); "
                f"on the seed's singular-value convention the embedding's eff. rank is "
                f"{fmt(comparison.eff_rank_singular_values.iloc[0], 3)}.")
report.heading("Findings")
report.bullets(findings)
report.heading("CKA")
report.figure(out / "cka.png", f"{cka_estimator} CKA between layers (0 = embeddings); white squares: blocks")
if has_lens:
    report.heading("Logit lens")
    report.figure(out / "logit_lens.png", "Logit lens by layer")
    report.table(lens_df.drop(columns="n_tokens"))
report.heading("Representation drift")
report.figure(out / "drift.png", "Change between consecutive states")
report.heading("Activation spectra")
report.paragraph("Layer 0 = embeddings, layer i = after block i. Effective rank on covariance eigenvalues.")
report.figure(out / "effective_rank.png", "Effective rank, participation ratio and n90 by depth")
report.figure(out / "eigenspectra.png", "Eigenvalue spectra and cumulative variance, coloured by depth")
report.table(spectra_df)
report.figure(out / "embedding_vs_final.png", "Embedding matrix vs final activation spectrum")
report.table(comparison)
report.write(out / "report.md")
print("\n".join(findings))
