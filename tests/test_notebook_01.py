"""Notebook 01 end to end on a tiny model of every family, asserting on the CSV it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from utils.metrics.spectra import singular_values
from utils.metrics.truncated_power_law import truncated_power_law_fit
from utils.metrics.weightwatcher import xmin_peak_range
from utils.models.loading import load_model

from .conftest import TESTS_DIR, tiny_model_ids, tiny_models


@pytest.mark.parametrize("path", tiny_models, ids=tiny_model_ids)
def test_notebook_01(run_notebook, path):
    out = run_notebook("01_weight_spectra", path)
    df = pd.read_csv(out / "weight_spectra.csv")
    for col in ["layer", "weight", "rows", "cols", "eff_rank", "stable_rank", "alpha", "alpha_xmin", "alpha_ks",
                "rank_slope", "mp_signal_ratio"]:
        assert col in df.columns
    adapter = load_model(path).adapter
    types = list(adapter.weight_matrices(0))
    extras = {"embed"} | ({"unembed"} if adapter.unembedding() is not None and not adapter.unembedding_is_tied() else set())
    assert len(df) == adapter.dims.L * len(types) + len(extras)
    assert set(df[df.layer == -1].weight) == extras
    assert set(df[df.layer >= 0].weight) == set(types)
    assert np.isfinite(df[["eff_rank", "stable_rank", "mp_signal_ratio", "spectral_norm"]]).all().all()
    assert (df.eff_rank >= 1).all() and (df.eff_rank <= np.minimum(df.rows, df.cols) + 1e-6).all()
    assert (df.stable_rank >= 1 - 1e-9).all() and (df.stable_rank <= np.minimum(df.rows, df.cols) + 1e-6).all()
    assert df.mp_signal_ratio.between(0, 1).all()
    assert (df.alpha.dropna() > 1).all()
    assert np.isfinite(df.rank_slope).all() and (df.rank_slope > 0).all()
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "random init" in report
    assert f"median {df.rank_slope.median():.2f}, range {df.rank_slope.min():.2f}-{df.rank_slope.max():.2f}" in report
    assert "Prisma's 'alpha' of 0.25-0.35" in report and "`weightwatcher` 0.7.7" in report
    from utils.analyses.weight_spectra import weight_spectra_findings
    from utils.metrics.weightwatcher import WW_DEFAULT_COLUMNS, ww_summary

    assert set(WW_DEFAULT_COLUMNS + ["alpha_low", "alpha_high", "alpha_p"]) <= set(df.columns)
    fitted = df.dropna(subset=["alpha"])
    assert (fitted.alpha_low <= fitted.alpha_high).all() and fitted.alpha_p.between(0, 1).all()
    assert np.allclose(fitted.xmin, fitted.alpha_xmin, rtol=1e-5) and (fitted.status == "success").all()
    f = weight_spectra_findings(df, adapter.dims.L)
    assert f.summary == ww_summary(df) and f.n_interval == len(fitted)
    assert f"{f.interval_width_median:.2f}" in report and "## WeightWatcher summary" in report
    for fig in ["eff_rank_by_layer.png", "layerwise_metrics.png", "spectra_by_component.png", "alpha_intervals.png"] + [
            f"esd_{w}.png" for w in set(df.weight)]:
        assert (out / fig).stat().st_size > 1000
    assert (out / "01_weight_spectra.ipynb").exists()


def test_notebook_01_with_weightwatchers_xmin_peak_and_tpl(run_notebook, tmp_path):
    """fit="TPL" with fix_fingers="xmin_peak" (WW's E_TPL) end to end: the CSV's fit columns are the
    TPL's over the peak window (`refitted_columns`, compared with WW in tests/test_weightwatcher.py).
    On a one-block tiny Llama half as wide (32): powerlaw's TPL fitter grows with the square of the
    number of eigenvalues (about a second per matrix at width 64)."""
    spec = yaml.safe_load((TESTS_DIR / "params" / "tiny-llama.yaml").read_text())
    spec["source"]["config"].update(num_hidden_layers=1, hidden_size=32, intermediate_size=48)
    path = str(tmp_path / "tiny-llama-one-block.yaml")
    Path(path).write_text(yaml.safe_dump(spec))
    out = run_notebook("01_weight_spectra", path, fit="TPL", fix_fingers="xmin_peak", bootstrap=0)
    df = pd.read_csv(out / "weight_spectra.csv")
    assert "Lambda" in df.columns and "num_fingers" not in df.columns
    fitted = df[df.status == "success"]
    assert len(fitted) >= len(df) - 2 and (fitted.Lambda >= 0).all() and fitted.sigma.isna().all()
    r = fitted[fitted.layer >= 0].iloc[0]
    evals = singular_values(load_model(path).adapter.weight_matrices(int(r.layer))[r.weight]).numpy() ** 2
    ref = truncated_power_law_fit(evals, xmin_peak_range(evals))
    assert r.alpha == pytest.approx(ref.alpha, rel=1e-5) and r.Lambda == pytest.approx(ref.Lambda, rel=1e-4, abs=1e-9)
    assert "truncated power law" in (out / "report.md").read_text()
