"""Depth alignment of models with different numbers of layers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.analyses.model_comparison import depth_profile, model_summary, relative_depth, weight_comparison


def _table(n_layers: int, width: int, rank_share: float, alpha: float) -> pd.DataFrame:
    rows = [{"layer": layer, "weight": w, "rows": width, "cols": width, "eff_rank": rank_share * width,
             "stable_rank": 2.0, "alpha": alpha, "mp_signal_ratio": 0.1}
            for layer in range(n_layers) for w in ("q", "ffn_out")]
    rows.append({"layer": -1, "weight": "embed", "rows": 100, "cols": width, "eff_rank": 5.0, "stable_rank": 1.0,
                 "alpha": np.nan, "mp_signal_ratio": 0.0})
    return pd.DataFrame(rows)


def test_relative_depth():
    assert relative_depth(np.arange(5), 5).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert np.isnan(relative_depth(np.array([-1]), 5)[0])
    assert relative_depth(np.array([0]), 1).tolist() == [0.0]


def test_weight_comparison_and_summary():
    comparison = weight_comparison({"a": _table(4, 64, 0.5, 3.0), "b": _table(10, 128, 0.8, 1.5)})
    assert len(comparison) == (4 * 2 + 1) + (10 * 2 + 1)
    blocks = comparison[comparison.layer >= 0]
    assert blocks.rel_depth.between(0, 1).all()
    assert np.allclose(blocks[blocks.model == "a"].rel_eff_rank, 0.5)
    summary = model_summary(comparison).set_index("model")
    assert summary.loc["a", "layers"] == 4 and summary.loc["b", "matrices"] == 20
    assert summary.loc["b", "heavy_tailed"] == 1.0 and summary.loc["a", "heavy_tailed"] == 0.0
    assert summary.loc["b", "rel_eff_rank"] == pytest.approx(0.8)


def test_depth_profile_puts_models_on_one_grid():
    a, b = _table(4, 64, 0.5, 3.0), _table(10, 64, 0.5, 3.0)
    a["eff_rank"] = a.layer.clip(lower=0) * 64 / 3  # rises linearly with depth, 0..64
    b["eff_rank"] = b.layer.clip(lower=0) * 64 / 9
    profile = depth_profile(weight_comparison({"a": a, "b": b}), "rel_eff_rank", bins=5)
    assert list(profile.columns) == ["a", "b"] and len(profile) == 5
    both = profile.dropna()
    assert np.allclose(both.a, both.index, atol=0.2) and np.allclose(both.b, both.index, atol=0.12)
