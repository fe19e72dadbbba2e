"""Notebook 03 executed on the tiny random model of every family; assertions on its outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils import load_model
from utils.metrics.kernels import kernel_table

from .conftest import tiny_model_ids, tiny_models

K = 4


def check_similarity(S: np.ndarray, L: int):
    assert S.shape == (L, L)
    assert np.isfinite(S).all()
    np.testing.assert_allclose(S, S.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-9)
    assert (S >= -1e-12).all() and (S <= 1 + 1e-9).all()


@pytest.mark.parametrize("params", tiny_models, ids=tiny_model_ids)
def test_notebook_03(tmp_path, params, execute_warm):
    out = execute_warm("03_subspace_geometry", params, tmp_path, dict(k=K))  # its own root: no notebook 04 outputs
    loaded = load_model(params)
    dims = loaded.dims
    for name in ("subspace_similarity", "subspace_similarity_head0", "subspace_similarity_query",
                 "subspace_similarity_query_head0"):
        check_similarity(np.load(out / f"{name}.npy"), dims.L)
    al = pd.read_csv(out / "ffn_attn_alignment.csv")
    assert list(al.columns[:5]) == ["layer", "head", "kv_head", "side", "alignment"]
    assert len(al) == 2 * dims.L * dims.h
    assert set(al.side) == {"key", "query"}
    for col in ("alignment", "alignment_in"):
        assert al[col].between(0, 1).all()
    gated = loaded.adapter.ffn(0).gated
    assert al.alignment_gate.notna().all() if gated else al.alignment_gate.isna().all()
    np.testing.assert_allclose(al.chance, K / dims.d)
    ref = pd.read_csv(out / "similarity_to_reference.csv")
    assert len(ref) == dims.L and ref["head mean"].between(0, 1 + 1e-9).all()
    # "auto" without notebook 04's CSV: the layer of lowest mean kernel effective rank
    means = kernel_table(loaded.adapter, progress=False).groupby("layer").eff_rank.mean()
    candidates = means.index[2:-2] if dims.L >= 5 else means.index  # >= 2 layers on each side
    expected = int(means[candidates].idxmin())
    report = (out / "report.md").read_text()
    assert f"## 2. Convergence to layer {expected}" in report
    assert "lowest mean kernel effective rank over heads" in report
    for verdict in ("Subspace overlap:", f"Convergence to layer {expected}:", "FFN-attention alignment:"):
        assert verdict in report
    key = al[al.side == "key"]
    assert f"{key.alignment.mean() / (K / dims.d):.2f}x" in report
    check_verdicts(out, al, loaded, expected, report)


def check_verdicts(out, al, loaded, ref: int, report: str, head: int = 0):
    """verdicts.csv: each of the seed's experiments on its inputs (head `head`, key side, W_gate) and
    on all heads, recomputed here from the notebook's other outputs with the seed's thresholds."""
    dims, chance = loaded.dims, al.chance.iloc[0]
    v = pd.read_csv(out / "verdicts.csv")
    assert len(v) == 6 and v.seed_inputs.tolist() == [True, False] * 3
    assert all(f"head {head}, key side (seed)" in x for x in v.inputs[v.seed_inputs])
    # 1. overlap on head `head`'s similarity matrix: adjacent mean - distant mean
    S = np.load(out / f"subspace_similarity_head{head}.npy")
    i, j = np.indices(S.shape)
    far = S[np.abs(i - j) > dims.L // 3]
    gap = np.diag(S, 1).mean() - far.mean() if far.size else np.nan
    np.testing.assert_allclose(v.adjacent_minus_distant[0], gap, rtol=1e-5, atol=1e-6, equal_nan=True)  # CSV: 6 digits
    # 2. trends of the similarity to the reference, seed head and head mean
    sims = pd.read_csv(out / "similarity_to_reference.csv")
    for row, col in ((2, f"head {head}"), (3, "head mean")):
        before, after = sims[col].to_numpy()[:ref], sims[col].to_numpy()[ref + 1:]
        pre = np.corrcoef(np.arange(before.size), before)[0, 1] if before.size > 1 else np.nan
        post = np.corrcoef(np.arange(after.size), after)[0, 1] if after.size > 1 else np.nan
        np.testing.assert_allclose(v.loc[row, ["pre_trend_r", "post_trend_r"]].to_numpy(float), [pre, post], rtol=1e-5,
                                   atol=1e-6, equal_nan=True)
        expected = ("not testable" if np.isnan(pre) or np.isnan(post) else "convergence point" if pre > 0.3 and post < -0.3
                    else "partial" if pre > 0.3 else "no clear pattern")
        assert v.verdict[row] == expected
    # 3. the seed's W_gate (W_in without a gate) on head `head`, and the stacked matrix on all heads
    key = al[al.side == "key"]
    seed_col = "alignment_gate" if loaded.adapter.ffn(0).gated else "alignment_in"
    ratios = [key[key["head"] == head][seed_col].mean() / chance, key.alignment.mean() / chance]
    np.testing.assert_allclose(v.alignment_over_chance[4:].to_numpy(float), ratios, rtol=1e-5)
    for row, r in zip((4, 5), ratios):
        assert v.verdict[row] == ("coupled" if r > 1.5 else "avoidance" if r < 0.7 else "near chance")
    assert v.inputs[4].startswith("W_gate" if loaded.adapter.ffn(0).gated else "W_in")
    for inputs in v.inputs:
        assert inputs in report


def test_notebook_03_uses_other_notebooks_outputs(tmp_path, execute_warm):
    """With notebook 04's activation spectra and notebook 01's weight spectra present, "auto" takes the
    block of lowest activation effective rank and the cross-reference section correlates; k is clipped."""
    params = next(p for p in tiny_models if p.endswith("tiny-llama.yaml"))
    loaded = load_model(params)
    L, name = loaded.dims.L, loaded.params.name
    acts = tmp_path / name / "04_representations"
    acts.mkdir(parents=True)
    eff = np.linspace(10.0, 20.0, L + 1)
    eff[2] = 1.0  # lowest after block 2 -> block index 1; the embedding row (0) must be skipped
    eff[0] = 0.5
    pd.DataFrame({"layer": range(L + 1), "eff_rank": eff, "participation_ratio": eff, "n90": 3}).to_csv(
        acts / "activation_spectra.csv", index=False)
    weights = tmp_path / name / "01_weight_spectra"
    weights.mkdir(parents=True)
    rows = [dict(layer=layer, weight=w, rows=64, cols=64, eff_rank=10.0 + layer + (w == "k"), stable_rank=2.0,
                 alpha=3.0, mp_signal_ratio=0.1) for layer in range(L) for w in ("q", "k")]
    rows.append(dict(layer=-1, weight="embed", rows=256, cols=64, eff_rank=50.0, stable_rank=2.0, alpha=3.0,
                     mp_signal_ratio=0.1))
    pd.DataFrame(rows).to_csv(weights / "weight_spectra.csv", index=False)
    out = execute_warm("03_subspace_geometry", params, tmp_path, dict(k=10_000, head=1))
    report = (out / "report.md").read_text()
    assert "## 2. Convergence to layer 1" in report
    assert "lowest activation effective rank" in report
    assert f"clipped to d_head = {loaded.dims.d_head}" in report
    assert "Pearson r over layers" in report and "make MODEL=" not in report
    check_similarity(np.load(out / "subspace_similarity_head1.npy"), L)
    check_verdicts(out, pd.read_csv(out / "ffn_attn_alignment.csv"), loaded, 1, report, head=1)
    al = pd.read_csv(out / "ffn_attn_alignment.csv")
    np.testing.assert_allclose(al.chance, loaded.dims.d_head / loaded.dims.d)
