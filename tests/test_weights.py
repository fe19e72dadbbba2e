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
