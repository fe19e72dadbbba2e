"""Notebook 02 executed on the tiny random model of every family; assertions on its outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from utils import load_model

from .conftest import tiny_model_ids, tiny_models


@pytest.mark.parametrize("params", tiny_models, ids=tiny_model_ids)
def test_notebook_02(run_notebook, params):
    out = run_notebook("02_attention_kernels", params)
    dims = load_model(params).dims
    df = pd.read_csv(out / "attn_kernel_heads.csv")
    assert list(df.columns[:7]) == ["layer", "head", "kv_head", "eff_rank", "asymmetry", "frac_complex", "top_eig_abs"]
    assert len(df) == dims.L * dims.h
    assert sorted(zip(df.layer, df["head"])) == [(i, j) for i in range(dims.L) for j in range(dims.h)]
    np.testing.assert_array_equal(df.kv_head, df["head"] // (dims.h // dims.h_kv))  # HF repeat_kv grouping
    numeric = df.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy()).all()
    assert df.eff_rank.between(1, dims.d_head + 1e-9).all()
    assert df.asymmetry.between(0, 2).all()  # ||A - A^T|| / ||A|| <= 2 (Cauchy-Schwarz)
    assert df.frac_complex.between(0, 1).all()
    np.testing.assert_allclose(df.frac_complex, df.n_complex / dims.d_head)
    assert (df.top_eig_abs > 0).all() and (df.top_eig_abs <= df.top_sv * (1 + 1e-9)).all()  # |lambda| <= sigma_1
    assert df.n99_energy.between(1, dims.d_head).all()
    for name in ("head_kernel_spectrum.png", "heads_heatmaps.png", "w_down_svd.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "rotary position embeddings" in report
    assert f"kernel effective rank is {df.eff_rank.mean():.1f} on average" in report
    assert f"Mean asymmetry is {df.asymmetry.mean():.3f}" in report
    assert f"Layer {dims.L // 2}, head 0" in report  # default layer: L // 2
    row = df[(df.layer == dims.L // 2) & (df["head"] == 0)].iloc[0]
    assert f"asymmetry {row.asymmetry:.3f}" in report
    assert math.isfinite(row.eff_rank) and f"effective rank {row.eff_rank:.1f} of at most {dims.d_head}" in report


def test_notebook_02_rejects_out_of_range_layer(run_notebook):
    params = next(p for p in tiny_models if p.endswith("tiny-llama.yaml"))
    L = load_model(params).dims.L
    with pytest.raises(PapermillExecutionError, match=f"parameter layer={L} is out of range"):
        run_notebook("02_attention_kernels", params, layer=L)
