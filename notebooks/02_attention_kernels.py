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
# # 02 · Attention kernels: how low-rank, asymmetric and rotational is each head's score kernel?
#
# The kernel A_h = W_Q_h^T W_K_h (d x d, rank <= d_head) of every head in every layer, computed
# in factored form (`utils.metrics.kernels`: eigenvalues of W_K_h W_Q_h^T, SVD via thin QR factors):
# eigenvalues, asymmetry, complex eigenvalues, spectral energy and effective rank, plus the
# W_down SVD of one layer. From the attention-kernel sections of seed `1.py`, for all heads.

# %%
import pandas as pd

from utils import load_weights, output_dir, write_csv
from utils.analyses.attention_kernels import (
    check_parameters,
    down_projection,
    head_spectrum,
    kernel_survey,
    kernels_report,
    plot_down_projection,
    plot_head_spectrum,
    plot_kernel_survey,
)
from utils.pipeline.notebook_parameters import apply_params_file
from utils.reporting.plotting import save_figure

# %% tags=["parameters"]
model: str = "smollm2-135m"  # params name (params/<name>.yaml) or path to a params YAML
output_root: str = "output"  # outputs go to <output_root>/<model>/02_attention_kernels/
layer: int = -1  # layer of the single-head deep dive and the W_down SVD; -1: the middle layer L // 2
head: int = 0  # query head of the single-head deep dive
complex_rtol: float = 1e-6  # an eigenvalue counts as complex when |Im| > complex_rtol * max |lambda| of its head

# %%
apply_params_file(globals(), "02_attention_kernels")  # papermill -f params/<name>.yaml; the params file's overrides

# %%
loaded = load_weights(model)  # streamed from safetensors when on disk, else the loaded model
out = output_dir(loaded.params, "02_attention_kernels", output_root)
layer = check_parameters(loaded.params.name, loaded.dims, layer, head, complex_rtol)  # -1 -> L // 2; range checks
attn = loaded.adapter.attention(layer)
print(f"{loaded.params.name}: {loaded.origin}; deep dive on layer {layer}, head {head} "
      f"(KV head {int(attn.kv_head_of[head])}); score scale {attn.scale:.4g}")
pd.DataFrame([loaded.describe()]).T

# %% [markdown]
# ## 1. One head: layer `layer`, head `head`
# Magnitudes include the score scale (they are those of the pre-softmax bilinear form
# scale * x_i^T A x_j); the seed left it out, which multiplies every eigenvalue and singular
# value by one constant and changes nothing else below. Only d_head eigenvalues of the d x d
# kernel can be nonzero; the other d - d_head are exactly zero and are not listed.

# %%
spectrum = head_spectrum(attn, layer, head, complex_rtol)
save_figure(plot_head_spectrum(spectrum), out / "head_kernel_spectrum.png")
print(pd.Series(spectrum.summary()).to_string())
spectrum.top_eigenvalues(20)

# %% [markdown]
# ## 2. Every layer x head
# Effective rank (seed definition: exp-entropy of the singular values, in [1, d_head]),
# asymmetry (in [0, 2]; sqrt(2 (1 - 1/d)) for independent random W_Q, W_K) and the fraction of
# each head's d_head possibly-nonzero eigenvalues that are complex.

# %%
survey = kernel_survey(loaded.adapter, complex_rtol)
write_csv(survey.table, out / "attn_kernel_heads.csv")
save_figure(plot_kernel_survey(survey), out / "heads_heatmaps.png")

# %%
print(f"effective rank over all {survey.table.shape[0]} heads: "
      + ", ".join(f"{k} {v:.2f}" for k, v in survey.global_stats.items()))
print(f"head categories: 25th percentile of per-head means {survey.low_threshold:.2f}, 75th {survey.high_threshold:.2f}")
display(survey.per_head)
survey.per_layer

# %% [markdown]
# ## 3. W_down (FFN output) SVD of layer `layer` (seed `1.py`)

# %%
down = down_projection(loaded.adapter, layer)
save_figure(plot_down_projection(down), out / "w_down_svd.png")
down.milestones()

# %% [markdown]
# ## Findings

# %%
findings = spectrum.sentences() + survey.sentences() + down.sentences()
for line in findings:
    print("-", line)

# %%
kernels_report(loaded, attn, spectrum, survey, down, findings, out).write(out / "report.md")
print(f"wrote {out}")
