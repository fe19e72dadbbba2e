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
from utils import open_model, output_dir
from utils.analyses import ffn_eigenspectrum as ffn
from utils.atomic_io import save_npy, write_csv
from utils.pipeline.notebook_parameters import apply_params_file

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
ffn_memory_mb: int = 0  # memory one layer's FFN statistics may take (refused before the pass if more); 0: half the free memory
accumulator: str = "float32"  # FFN accumulator storage: "float32" (per-batch centring, Chan et al. merge) or "float64"
eigen_solver: str = "float64"  # eigvalsh precision: "float64" or "float32" (~2x faster at D_ff 8192; SE, PR, EEE within ~1e-6 relative)
majority: float = 0.5  # a trend "holds overall" when it holds in more than this fraction of layers
rank_rtol: float = 1e-10  # numerical rank: eigenvalues above this fraction of the largest (at least batches x machine epsilon)
dominant_share: float = 0.5  # a spectrum is dominated by one direction when its top eigenvalue holds more than this share
cache: bool = True  # reuse cached eigenvalues (utils.paths.cache_dir()/ffn_spectra; 4 L D_ff float64, keyed by weights, tokens and settings)

# %%
apply_params_file(globals(), "05_ffn_eigenspectrum")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
p = ffn.FFNParameters.from_namespace(globals())  # bounds checked before the model loads
loaded = open_model(model)  # the checkpoint opened for the layer-major engine (no tensor read yet)
out = output_dir(loaded.params, "05_ffn_eigenspectrum", output_root)
plan = ffn.plan(loaded, p)  # tokens, numerical-rank floor, route and memory of one layer
print(f"{loaded.params.name}: L={loaded.dims.L}, d={loaded.dims.d}, D_ff={loaded.dims.d_ff}, "
      f"gated={loaded.adapter.ffn(0).w_gate is not None}; {p.n_tokens} tokens of '{corpus}' "
      f"({p.n_tokens / loaded.dims.d_ff:.1f} per FFN dimension); on {plan.device}: {plan.describe()}")

# %% [markdown]
# ## 1. Pre/post-activation covariance spectra of every FFN
# The layer-major engine (`utils.engine.layerwise`) runs the model one block at a time over all the
# windows, each block's weights read when it is reached and freed after, and accumulates that
# block's FFN pre- and post-activation covariance (NerVE eq. 1) on the model's device: every batch is
# centred on its own mean and merged exactly (Chan et al. 1979), so float32 storage keeps ~1e-6
# relative accuracy at half the memory of float64. The layer's eigenvalues (`eigvalsh`, values
# only) are taken before the next block runs (NerVE appendix F, Algorithm 1), so one layer's
# statistics exist at a time. With fewer tokens than D_ff the nonzero eigenvalues come from the
# N x N centred Gram of the same rows (exact: the nonzero eigenvalues of X^T X and X X^T agree).
# The pre-activation X W^T + b has rank at most d < D_ff: with W = QR, its covariance is
# Q cov(X R^T) Q^T, so its nonzero eigenvalues are those of the d x d covariance of X R^T and the
# other D_ff - d are exactly zero (`utils.metrics.linear_image`; a quarter of the width at D_ff = 4d).
#
# Sink positions. The first `skip_first` positions of every window stay out of the main statistics,
# but their rows are kept (a few per window) and merged into the same accumulator after the
# sink-free eigenvalues are taken: the all-token spectra NerVE uses come from the same forward pass.

# %%
spectra = ffn.measure(loaded, plan, p)
write_csv(spectra.table, out / "ffn_spectra.csv", float_format="%.10g")  # sink-free: the main statistics
write_csv(spectra.table_all, out / "ffn_spectra_all_tokens.csv", float_format="%.10g")  # every position, as NerVE
save_npy(spectra.eig_pre, out / "eigenvalues_pre.npy")
save_npy(spectra.eig_post, out / "eigenvalues_post.npy")
spectra.table

# %% [markdown]
# ## 2. The metrics across depth, pre vs post
# SE is bounded by ln D_ff (dotted), PR by D_ff, EEE lies in [0, (D_ff - 1)/D_ff]; PR gain = PR_post / PR_pre
# (above 1: the nonlinearity spreads variance over more directions).

# %%
ffn.metrics_by_depth_figure(spectra.table, plan.max_rank,
                            f"NerVE metrics by layer — {loaded.params.name} ({p.n_tokens} tokens)",
                            out / "metrics_by_depth.png")

# %% [markdown]
# ## 3. Jensen-Shannon divergence between the pre and post spectra (rank-matched, NerVE eqs. 4-6)

# %%
ffn.js_figure(spectra.table, loaded.params.name, out / "js_profile.png")

# %% [markdown]
# ## 4. Eigenvalue spectra of selected layers
# Normalised eigenvalues lambda_k / sum lambda against rank k, log-log.

# %%
ffn.selected_spectra_figure(spectra, plan.spectra_layers, out / "spectra_selected_layers.png")

# %% [markdown]
# ## Findings
# NerVE's finding, per layer: SE_post > SE_pre, PR_post > PR_pre and EEE_post < EEE_pre. Each trend
# "holds overall" when it holds in more than `majority` of the layers.

# %%
found = ffn.findings(loaded, spectra, plan, p)
ffn.write_report(loaded, plan, found, p, out)
for line in found.sentences():
    print("-", line)
print(f"wrote {out}")
