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
import pandas as pd

from utils import open_model, output_dir
from utils.analyses import representations as rep
from utils.atomic_io import save_npy, write_csv
from utils.engine.representations import activation_spectra
from utils.pipeline.notebook_parameters import apply_params_file

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
p = rep.RepresentationsParameters.from_namespace(globals())  # bounds checked before the model loads
loaded = open_model(model)  # the checkpoint opened for the layer-major engine (no tensor read yet)
out = output_dir(loaded.params, "04_representations", output_root)
L, d, V = loaded.dims.L, loaded.dims.d, loaded.dims.V

# %% [markdown]
# ## 1. One pass over the text, block by block
# The layer-major engine (`utils.engine.layerwise`) runs the model one block at a time over the
# whole token sample, reading each block's weights from the checkpoint when it is reached and
# freeing them after (memory of one block, not the model): covariances of every residual state,
# `keep_samples` tokens per layer for CKA, the logit lens, the drift and the embedding's
# covariance, all in the same pass. Encoder-only models have no LM head: the logit lens is skipped.

# %%
run = rep.measure(loaded, p)
print(f"{loaded.params.name}: L={L}, d={d}, V={V}; {run.tokens.n_tokens} tokens of '{corpus}'")
print(f"{run.n_tokens} tokens accumulated ({'cached statistics' if run.from_cache else 'computed'}); "
      f"{run.n_cka} tokens per layer for CKA; weights {run.engine}")

# %% [markdown]
# ## 2. CKA between all layer pairs
# Linear CKA (Kornblith et al. 2019) or its debiased version (unbiased HSIC, Song et al. 2012;
# Nguyen et al. 2021) on the same tokens at every layer. Blocks: maximal runs of consecutive
# layers whose adjacent CKA stays at or above `block_threshold`.

# %%
cka = rep.cka_structure(run, d, p)
if cka.warning:
    print("WARNING:", cka.warning)
save_npy(cka.matrix, out / "cka.npy")
rep.cka_figure(cka, run, p, out / "cka.png")
pd.DataFrame({"first": [a for a, _ in cka.blocks], "last": [b for _, b in cka.blocks]})

# %% [markdown]
# ## 3. Logit lens
# Every residual state through the final norm and the unembedding (`adapter.apply_final_norm`,
# `adapter.logits`; the last layer is the model's own output). Per layer, over `lens_tokens`
# positions: prediction entropy, top-1 probability, median rank of the correct next token,
# agreement of the top-1 with the model's final top-1, KL(final || layer), cross-entropy.

# %%
if run.lens is not None:
    write_csv(run.lens, out / "logit_lens.csv")
    rep.lens_figure(run.lens, out / "logit_lens.png")
    display(run.lens)
else:
    print(f"{loaded.adapter.name} is an encoder without an LM head: logit lens skipped")

# %% [markdown]
# ## 4. Representation drift
# Mean over tokens of the cosine similarity and L2 distance between consecutive states; the last
# step (models with a final norm) is the final norm itself.

# %%
write_csv(run.drift, out / "drift.csv")
rep.drift_figure(run.drift, out / "drift.png")

# %% [markdown]
# ## 5. Activation spectra
# Eigenvalues lambda of each residual-state covariance (float64, streamed). Effective rank
# exp(H(p)), p = lambda / sum lambda (Roy & Vetterli 2007, applied to covariance eigenvalues
# lambda = s^2 / (n - 1), not to the singular values s of the activation matrix as in the seed's
# weight analysis), participation ratio (sum lambda)^2 / sum lambda^2, and n90, the number of
# components holding 90% of the variance.

# %%
spectra, eigs = activation_spectra(run.eigenvalues)
write_csv(spectra, out / "activation_spectra.csv")
rep.dimensionality_figure(spectra, out / "effective_rank.png")
rep.eigenspectra_figure(eigs, out / "eigenspectra.png")

# %% [markdown]
# ### Embedding matrix vs final activations
# The embedding matrix's spectrum (covariance of its V rows; also its singular values, the seed's
# effective-rank convention) against the covariance spectrum of the final-normed last state.

# %%
embedding = rep.embedding_vs_final(run)
rep.embedding_figure(embedding, out / "embedding_vs_final.png")
embedding.table()

# %% [markdown]
# ## Findings
# CKA blocks and the sharpest boundary, logit-lens landmarks, the block that turns the
# representation most, the effective-rank bottleneck, outlier tokens (a token norm more than 20x
# its layer's median) and the embedding against the final state.

# %%
found = rep.findings(loaded, run, cka, spectra, embedding, p)
rep.write_report(loaded, run, spectra, found, p, out)
print("\n".join(found.sentences()))
