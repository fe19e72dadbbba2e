"""All figures go through this module: one style, deterministic files, atomic writes.

`save_figure` strips the PNG metadata that would carry a timestamp or version string, so that
re-running a notebook on the same numbers produces byte-identical images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from utils.atomic_io import atomic_path

STYLE = "seaborn-v0_8-whitegrid"
DPI = 110
plt.style.use(STYLE)


def save_figure(fig, path: str | Path, close: bool = False) -> Path:
    """Save `fig` as PNG at `path` deterministically (no timestamp or software metadata)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png", metadata={"Software": None})
    if close:
        plt.close(fig)
    return path


def subplots(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.0, **kwargs):
    """plt.subplots with a size per panel; always returns an ndarray of axes."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    return fig, axes


def heatmap(ax, matrix: np.ndarray, title: str, xlabel: str, ylabel: str, cbar_label: str = "",
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis"):
    """imshow heatmap with a colour bar; rows are the y axis (e.g. layers), columns the x axis. The
    style's grid is switched off: its lines would cross the cells."""
    im = ax.imshow(matrix, aspect="auto", cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax, origin="upper")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return im


def depth_colors(n: int, cmap: str = "coolwarm") -> list:
    """n colours from early (blue) to late (red) layers."""
    return [plt.get_cmap(cmap)(x) for x in np.linspace(0, 1, max(n, 2))][:n]


def depth_colorbar(fig, axes, n: int, cmap: str = "coolwarm", label: str = "layer"):
    """The colour bar of `depth_colors(n, cmap)`: layer 0 to n - 1, beside `axes` (one or many)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0, max(n - 1, 1)), cmap=plt.get_cmap(cmap))
    columns = np.atleast_2d(np.asarray(axes, dtype=object)).shape[1]  # a bar as wide as for one panel
    return fig.colorbar(mappable, ax=axes, label=label, fraction=0.15 / columns, pad=0.1 / columns)


def line_panel(ax, x: Sequence, series: dict, title: str, xlabel: str, ylabel: str, marker: str = "."):
    """Several labelled lines on one axis."""
    for label, y in series.items():
        ax.plot(x, y, marker=marker, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
