"""Notebook 05 executed on the tiny random model of every family; assertions on its outputs, and an
independent recomputation of one layer's NerVE metrics (own hooks, torch.cov, eigvalsh, numpy formulas)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from utils import load_model, load_params, sample_tokens

from .conftest import tiny_model_ids, tiny_models

# Every family except qwen2, whose FFN (SwiGLU, gate_proj/up_proj/down_proj) is llama's: each run
# takes 20-50 s on the loaded 2-core machine, mostly kernel start-up.
MODELS = [(m, i) for m, i in zip(tiny_models, tiny_model_ids) if i != "tiny-qwen2"]
PARAMETERS = dict(n_sequences=8, seq_len=64, batch_size=4, cache=False, skip_first=1)
COLUMNS = ["layer", "se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post", "js", "pr_gain", "se_up",
           "pr_up", "eee_down", "holds", "top1_pre", "top1_post", "rank_pre", "rank_post", "n_tokens", "d_ff"]
# Module names of the FFN pre-activation output (gate if gated) and of the module whose input is the
# post-activation, per model type; written out here, independently of utils.models.adapters.
FFN_MODULES = {
    "llama": ("layers.{i}.mlp.gate_proj", "layers.{i}.mlp.down_proj"),
    "qwen2": ("layers.{i}.mlp.gate_proj", "layers.{i}.mlp.down_proj"),
    "gemma3_text": ("layers.{i}.mlp.gate_proj", "layers.{i}.mlp.down_proj"),
    "gpt2": ("h.{i}.mlp.c_fc", "h.{i}.mlp.c_proj"),
    "gpt_neox": ("layers.{i}.mlp.dense_h_to_4h", "layers.{i}.mlp.dense_4h_to_h"),
    "bert": ("layer.{i}.intermediate.dense", "layer.{i}.output.dense"),
}


def find_module(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    found = [m for name, m in model.named_modules() if name == suffix or name.endswith("." + suffix)]
    assert len(found) == 1, f"{suffix}: {len(found)} matches"
    return found[0]


def reference_metrics(pre: torch.Tensor, post: torch.Tensor) -> dict:
    """Straightforward NerVE metrics (sec. 2, natural log) from (N, D) activation matrices."""

    def spectrum(x: torch.Tensor) -> np.ndarray:
        cov = torch.cov(x.double().T)  # rows are variables for torch.cov
        ev = torch.linalg.eigvalsh(cov).numpy()[::-1].clip(min=0)
        return ev / ev.sum()

    def se(p):
        return float(-sum(v * math.log(v) for v in p if v > 0))

    def pr(p):
        return float(1.0 / (p**2).sum())

    def eee(p):
        D = p.size
        return float((np.cumsum(p) - np.arange(1, D + 1) / D).sum() / (D / 2))  # NerVE eq. (3)

    def js(p, q):
        m = (p + q) / 2
        kl = lambda a: sum(a[j] * math.log(a[j] / m[j]) for j in range(a.size) if a[j] > 0)  # noqa: E731
        return float(0.5 * kl(p) + 0.5 * kl(q))

    p, q = spectrum(pre), spectrum(post)
    return {"se_pre": se(p), "se_post": se(q), "pr_pre": pr(p), "pr_post": pr(q), "eee_pre": eee(p),
            "eee_post": eee(q), "js": js(p, q)}


@pytest.mark.parametrize("params", [m for m, _ in MODELS], ids=[i for _, i in MODELS])
def test_notebook_05(run_notebook, params):
    out = run_notebook("05_ffn_eigenspectrum", params, **PARAMETERS)
    p = load_params(params)
    n_tokens = PARAMETERS["n_sequences"] * (PARAMETERS["seq_len"] - PARAMETERS["skip_first"])

    df = pd.read_csv(out / "ffn_spectra.csv")
    assert list(df.columns) == COLUMNS
    loaded = load_model(params)
    L, d_ff = loaded.dims.L, loaded.dims.d_ff
    assert list(df.layer) == list(range(L))
    assert (df.n_tokens == n_tokens).all() and (df.d_ff == d_ff).all()
    assert n_tokens > d_ff  # full-rank regime: no rank-deficiency caveat
    for side in ("pre", "post"):
        assert ((df[f"se_{side}"] >= 0) & (df[f"se_{side}"] <= math.log(d_ff) + 1e-9)).all()
        assert ((df[f"pr_{side}"] >= 1 - 1e-9) & (df[f"pr_{side}"] <= d_ff + 1e-9)).all()
        assert ((df[f"eee_{side}"] >= 0) & (df[f"eee_{side}"] <= 1 + 1e-12)).all()
        # PR <= exp(SE) (Renyi entropies decrease with order)
        assert (df[f"pr_{side}"] <= np.exp(df[f"se_{side}"]) * (1 + 1e-9)).all()
    assert ((df.js >= 0) & (df.js <= math.log(2) + 1e-12)).all()
    np.testing.assert_allclose(df.pr_gain, df.pr_post / df.pr_pre, rtol=1e-8)
    assert (df.holds == (df.se_up & df.pr_up & df.eee_down)).all()
    assert (df.se_up == (df.se_post > df.se_pre)).all() and (df.eee_down == (df.eee_post < df.eee_pre)).all()

    eig_pre, eig_post = np.load(out / "eigenvalues_pre.npy"), np.load(out / "eigenvalues_post.npy")
    assert eig_pre.shape == eig_post.shape == (L, d_ff)
    assert (np.diff(eig_pre, axis=1) <= 0).all() and (eig_post >= 0).all()
    np.testing.assert_allclose(df.top1_pre, eig_pre[:, 0] / eig_pre.sum(1), rtol=1e-8)
    np.testing.assert_allclose(df.top1_post, eig_post[:, 0] / eig_post.sum(1), rtol=1e-8)
    assert ((df.top1_post >= 1 / d_ff) & (df.top1_post <= 1)).all()
    # the pre-activation is linear in the d-dimensional input: rank <= d (< d_ff for every tiny model)
    d = loaded.dims.d
    assert (df.rank_pre <= d).all() and (df.rank_post <= min(d_ff, n_tokens - 1)).all()

    # Independent recomputation of the last layer: own hooks on the model's modules, same tokens.
    layer = L - 1
    pre_name, post_name = FFN_MODULES[p.source["model_type"]]
    tokens = sample_tokens(loaded.tokenizer, "stdlib-docs", PARAMETERS["n_sequences"], PARAMETERS["seq_len"], 0)
    pre_rows, post_rows = [], []
    skip = PARAMETERS["skip_first"]  # the first position of every window enters no statistic
    all_pre, all_post = [], []  # every position (NerVE's setting)

    def on_pre(m, args, output):
        pre_rows.append(output.detach()[:, skip:].reshape(-1, output.shape[-1]))
        all_pre.append(output.detach().reshape(-1, output.shape[-1]))

    def on_post(m, args):
        post_rows.append(args[0].detach()[:, skip:].reshape(-1, args[0].shape[-1]))
        all_post.append(args[0].detach().reshape(-1, args[0].shape[-1]))

    h1 = find_module(loaded.model, pre_name.format(i=layer)).register_forward_hook(on_pre)
    h2 = find_module(loaded.model, post_name.format(i=layer)).register_forward_pre_hook(on_post)
    try:
        with torch.no_grad():
            for start in range(0, tokens.input_ids.shape[0], PARAMETERS["batch_size"]):
                ids = tokens.input_ids[start: start + PARAMETERS["batch_size"]]
                loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        h1.remove()
        h2.remove()
    pre, post = torch.cat(pre_rows), torch.cat(post_rows)
    assert pre.shape == post.shape == (n_tokens, d_ff)
    expected = reference_metrics(pre, post)
    row = df.iloc[layer]
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key  # float32 accumulators: JS ~2e-7 absolute

    # All tokens (NerVE's setting): the sink rows merged into the accumulators equal the metrics of
    # every position computed directly from the same hooks (position 0 included).
    df_all = pd.read_csv(out / "ffn_spectra_all_tokens.csv")
    assert list(df_all.columns) == COLUMNS and (df_all.n_tokens == PARAMETERS["n_sequences"] * PARAMETERS["seq_len"]).all()
    expected_all = reference_metrics(torch.cat(all_pre), torch.cat(all_post))
    for key, value in expected_all.items():
        assert df_all.iloc[layer][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    report = (out / "report.md").read_text()
    assert "stdlib-docs" in report and str(n_tokens) in report
    assert "Verdict: NerVE's finding" in report and "Verdict on all" in report and "Pass and memory" in report and "layer-major" in report
    verdict = ("HOLDS PARTLY" if "HOLDS PARTLY" in report else "DOES NOT HOLD" if "DOES NOT HOLD" in report
               else "HOLDS")
    trends = [int(df.se_up.sum()), int(df.pr_up.sum()), int(df.eee_down.sum())]
    majority = [c > 0.5 * L for c in trends]
    expected_verdict = "HOLDS" if all(majority) else "HOLDS PARTLY" if any(majority) else "DOES NOT HOLD"
    assert verdict == expected_verdict
    assert f"all three trends together hold in {int(df.holds.sum())} of {L} layers" in report
    for name in ("metrics_by_depth.png", "js_profile.png", "spectra_selected_layers.png"):
        assert (out / name).stat().st_size > 0


def test_notebook_05_rejects_bad_layer(run_notebook):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="spectra_layers"):
        run_notebook("05_ffn_eigenspectrum", tiny_models[0], n_sequences=2, seq_len=16, spectra_layers=[99])
