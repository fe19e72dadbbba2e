"""Figure helpers: heatmaps without grid lines across the cells; a depth colour bar that matches
the depth colours."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from utils.reporting.plotting import depth_colorbar, depth_colors, heatmap, subplots


def _grid_visible(ax) -> list[bool]:
    return [line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines()]


def test_heatmap_draws_no_grid_lines():
    fig, axes = subplots(1, 2)
    axes[0, 1].plot([0, 1], [0, 1])  # the style's grid stays on for line plots
    heatmap(axes[0, 0], np.arange(12.0).reshape(3, 4), "t", "x", "y", "value")
    assert not any(_grid_visible(axes[0, 0]))
    assert any(_grid_visible(axes[0, 1]))
    plt.close(fig)


@pytest.mark.parametrize("n", [1, 2, 30])
def test_depth_colorbar_matches_depth_colors(n):
    fig, axes = subplots(2, 3)
    bar = depth_colorbar(fig, axes, n)
    assert bar.ax.get_ylabel() == "layer"
    for layer, color in enumerate(depth_colors(n)):
        assert np.allclose(bar.mappable.to_rgba(layer), color)
    assert bar.mappable.norm.vmin == 0 and bar.mappable.norm.vmax == max(n - 1, 1)
    plt.close(fig)
