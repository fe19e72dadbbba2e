"""Notebook 01's table: one row per matrix, metrics from one SVD each, phase rules as in the seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils.metrics.spectra import effective_rank, fit_power_law
from utils.metrics.weight_spectra import phase_trend, sharpest_transitions, weight_spectra
from utils.models.loading import load_model

from .conftest import tiny_models


@pytest.mark.parametrize("path", tiny_models[:2])
def test_weight_spectra_rows_and_values(path):
    loaded = load_model(path)
    df, spectra = weight_spectra(loaded.adapter, progress=False)
    per_layer = len(loaded.adapter.weight_matrices(0))
    extras = 1 if loaded.adapter.unembedding() is None or loaded.adapter.unembedding_is_tied() else 2
    assert len(df) == loaded.dims.L * per_layer + extras
    q = loaded.adapter.weight_matrices(1)["q"]
    row = df[(df.layer == 1) & (df.weight == "q")].iloc[0]
    assert row.eff_rank == pytest.approx(effective_rank(torch.linalg.svdvals(q.double())), rel=1e-8)
    assert (df.eff_rank <= df.max_rank + 1e-9).all() and (df.eff_rank >= 1).all()
    assert len(spectra[(1, "q")]) == row.max_rank
    s = torch.linalg.svdvals(q.double()).numpy()  # independent SVD
    assert row.alpha == pytest.approx(fit_power_law(s**2).alpha, rel=1e-8)
    r = s.size // 2
    slope = -np.polyfit(np.log(np.arange(1, r + 1)), np.log(s[:r]), 1)[0]
    assert row.rank_slope == pytest.approx(slope, rel=1e-8)


def test_phase_trend_rules():
    assert phase_trend(5, 2, 6) == "U-shape"
    assert phase_trend(5, 4, 3) == "monotone down"
    assert phase_trend(1, 2, 3) == "monotone up"
    assert phase_trend(1, 3, 2) == "inverted U"


def test_sharpest_transitions():
    df = pd.DataFrame({"layer": [0, 1, 2, 3], "weight": ["q"] * 4, "eff_rank": [5.0, 9.0, 2.0, 3.0]})
    row = sharpest_transitions(df).iloc[0]
    assert row.max_drop == "1->2" and row["drop"] == -7.0 and row.max_jump == "0->1"


def test_findings_fields_from_the_table():
    """utils.analyses.weight_spectra's findings are computed from the table's columns."""
    from utils.analyses.weight_spectra import findings_sentences, weight_spectra_findings
    from utils.metrics.weight_spectra import SpectraOptions

    loaded = load_model(tiny_models[0])
    df, _ = weight_spectra(loaded.adapter, progress=False, options=SpectraOptions(bootstrap=10))
    f = weight_spectra_findings(df, loaded.dims.L, heavy_tail_alpha=3.0)
    alphas = df.alpha.dropna()
    assert f.n_alpha == len(alphas) and f.heavy_share == pytest.approx((alphas < 3.0).mean())
    assert f.alpha_median == pytest.approx(alphas.median()) and f.summary["alpha"] == pytest.approx(alphas.mean())
    ci = df.dropna(subset=["alpha_low"])
    assert f.below_bound == int((ci.alpha_high < 3.0).sum()) and f.above_bound == int((ci.alpha_low > 3.0).sum())
    assert f.mp_signal_max == df.mp_signal_ratio.max() and f.beyond_max_n == []
    assert any(f"median alpha {f.alpha_median:.2f}" in s for s in findings_sentences(f))
