"""All figures go through this module: one style, one font scheme, legible widths, deterministic
files, atomic writes, one rendering per figure.

Legibility. The HTML pages show a figure at most `utils.reporting.index.CONTENT_WIDTH_PX` wide
(1100 px), so a PNG w px wide at `DPI` is scaled by min(1, 1100 / w) and text of s points is
shown s DPI / 72 min(1, 1100 / w) px high (`text_px_on_page`). With every text at least
`MIN_FONT_PT` (8 pt) and every figure at most `MAX_WIDTH_IN` (13.5 in) wide, text is at least
`MIN_TEXT_PX` (9 px) on the page. `subplots` keeps a figure within that width, with narrower
panels or, for a grid much too wide, by laying it out in rows of panels (the axes array keeps the
shape asked for); `save_figure` raises smaller text to `MIN_FONT_PT` and records the smallest
text size in the PNG (`TEXT_SIZE_KEY`, read back by `png_facts`), which the tests check on every
figure a report page shows.

Speed (bench/bench_figures.py). In a Jupyter kernel `save_figure` shows the PNG it wrote and
closes the figure, so the inline backend does not render it a second time; log axes make no
invisible minor ticks (`SparseLogMinorLocator`). Together they halve a figure cell's time
(notebook 01's spectra_by_component.png on SmolLM2: 3.6 s to 1.9 s of kernel CPU).

`save_figure` strips the PNG metadata that would carry a timestamp or version string, so that
re-running a notebook on the same numbers produces byte-identical images.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.text import Text
from matplotlib.ticker import AutoLocator, LogFormatterSciNotation, LogLocator, MaxNLocator

from utils.atomic_io import atomic_path
from utils.reporting.index import CONTENT_WIDTH_PX

STYLE = "seaborn-v0_8-whitegrid"
DPI = 110
MIN_TEXT_PX = 9  # the smallest text on the page, in CSS px
MIN_FONT_PT = 8.0
MAX_WIDTH_IN = 13.5  # MIN_FONT_PT pt at this width shown CONTENT_WIDTH_PX wide is >= MIN_TEXT_PX
SHRINK_LIMIT = 0.8  # a grid too wide gets panels down to this fraction of the width asked, else rows
TEXT_SIZE_KEY = "Smallest text (pt)"  # PNG tEXt chunk written by save_figure
FONTS = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 12}
plt.style.use(STYLE)
plt.rcParams.update(FONTS)


def text_px_on_page(font_pt: float, png_width_px: int, dpi: float = DPI, page_px: int = CONTENT_WIDTH_PX) -> float:
    """Height in CSS px of `font_pt` text in a PNG `png_width_px` wide at `dpi`, shown at most
    `page_px` wide: font_pt dpi / 72 min(1, page_px / png_width_px)."""
    return font_pt * dpi / 72 * min(1.0, page_px / png_width_px)


def _raise_small_text(fig) -> float:
    """Raise every visible text below MIN_FONT_PT to it; return the smallest size (pt) left. Tick
    labels are made at draw time: their size is read from one tick of each axis."""
    sizes = []
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            ticks = axis.get_major_ticks(1)
            if ticks and ticks[0].label1.get_fontsize() < MIN_FONT_PT:
                ax.tick_params(axis=name, which="both", labelsize=MIN_FONT_PT)
            if ticks and axis.get_visible() and ticks[0].label1.get_visible():
                sizes.append(ticks[0].label1.get_fontsize())
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip():
            if text.get_fontsize() < MIN_FONT_PT:
                text.set_fontsize(MIN_FONT_PT)
            sizes.append(text.get_fontsize())
    return min(sizes, default=MIN_FONT_PT)


class SparseLogMinorLocator(LogLocator):
    """Log-axis minor ticks, none where none would show: over 1 to 6 decades LogFormatter labels
    no minor tick, and this style draws no minor tick mark or grid line; elsewhere (under a
    decade, where minor ticks are labelled, or another style) those of LogLocator."""

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((vmin, vmax))
        invisible = not (plt.rcParams["xtick.minor.size"] or plt.rcParams["ytick.minor.size"]) \
            and plt.rcParams["axes.grid.which"] == "major"
        if invisible and lo > 0 and 1 < math.log10(hi / lo) <= 6:
            return np.array([])
        return super().tick_values(vmin, vmax)


_SUPERSCRIPT = str.maketrans("0123456789-+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺")
_MATHTEXT_POWER = re.compile(r"^\$\\mathdefault\{(?:(?P<coeff>[0-9.]+)\\times)?(?P<base>\d+)\^\{(?P<exp>[-+]?\d+)\}\}\$$")


class UnicodeLogFormatter(LogFormatterSciNotation):
    """LogFormatterSciNotation's labels (10^-2, 2 x 10^-2) written with Unicode superscripts instead
    of mathtext: the same text, without parsing a mathtext expression per tick label (pyparsing
    took about a sixth of the drawing time of the ESD figures). Labels of another form (a base
    other than an integer, a fractional exponent) stay mathtext."""

    def __call__(self, x, pos=None):
        label = super().__call__(x, pos)
        match = _MATHTEXT_POWER.match(label)
        if not match:
            return label
        power = match["base"] + match["exp"].translate(_SUPERSCRIPT)
        return f"{match['coeff']}×{power}" if match["coeff"] else power


def _sparse_log_minor_ticks(ax) -> None:
    """Give ax's log axes a SparseLogMinorLocator in place of LogLocator's minor ticks, and
    UnicodeLogFormatter labels in place of LogFormatterSciNotation's."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() != "log":
            continue
        locator = axis.get_minor_locator()
        if type(locator) is LogLocator:
            axis.set_minor_locator(SparseLogMinorLocator(base=axis.get_transform().base, subs="auto"))
        for formatter, setter in ((axis.get_major_formatter(), axis.set_major_formatter),
                                  (axis.get_minor_formatter(), axis.set_minor_formatter)):
            if type(formatter) is LogFormatterSciNotation:
                setter(UnicodeLogFormatter(base=formatter._base, labelOnlyBase=formatter.labelOnlyBase,
                                           minor_thresholds=formatter.minor_thresholds, linthresh=formatter._linthresh))


class SpectraAxes(Axes):
    """Axes whose log scales take `SparseLogMinorLocator`: the minor ticks LogLocator makes there
    are invisible and took about 40 % of the layout and drawing time of a grid of log-log panels."""

    def set_xscale(self, value, **kwargs):
        super().set_xscale(value, **kwargs)
        _sparse_log_minor_ticks(self)

    def set_yscale(self, value, **kwargs):
        super().set_yscale(value, **kwargs)
        _sparse_log_minor_ticks(self)


def _integer_layer_ticks(ax) -> None:
    """Layers are whole numbers: an axis labelled 'layer...' on a linear scale gets integer ticks."""
    for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
        if label.startswith("layer") and axis.get_scale() == "linear" and isinstance(axis.get_major_locator(), AutoLocator):
            axis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path: str | Path, close: bool = False) -> Path:
    """Save `fig` as PNG at `path` deterministically (no timestamp or software metadata), with text
    no smaller than MIN_FONT_PT and integer ticks on axes labelled 'layer...'; in a Jupyter kernel
    also show that PNG and close the figure."""
    path = Path(path)
    smallest = _raise_small_text(fig)
    for ax in fig.axes:
        _sparse_log_minor_ticks(ax)  # figures not made by `subplots`
        _integer_layer_ticks(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, bbox_inches="tight", format="png",
                metadata={"Software": None, TEXT_SIZE_KEY: f"{smallest:g}"})
    png = buffer.getvalue()
    shown = text_px_on_page(smallest, struct.unpack(">I", png[16:20])[0])
    if shown < MIN_TEXT_PX:
        warnings.warn(f"{path.name}: its smallest text is {shown:.1f} px high on the page (under {MIN_TEXT_PX} px): "
                      f"keep figures at most {MAX_WIDTH_IN} in wide (utils.reporting.plotting.subplots does)", stacklevel=2)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    if "inline" in matplotlib.get_backend():
        from IPython.display import Image, display

        display(Image(data=png, format="png"))
        close = True
    if close:
        plt.close(fig)
    return path


def png_facts(path: str | Path) -> dict:
    """Width, height (px), dpi and the tEXt entries of a PNG file (standard library only)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    facts, pos = {"text": {}}, 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            facts["width"], facts["height"] = struct.unpack(">II", body[:8])
        elif kind == b"pHYs":
            per_metre = struct.unpack(">I", body[:4])[0]
            facts["dpi"] = per_metre * 0.0254 if body[8] == 1 else None
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            facts["text"][key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            facts["text"][key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        pos += 12 + length
    return facts


def _wrapped_grid(ncols: int, width: float) -> tuple[int, int, float]:
    """(groups, columns per group, panel width) of a grid of `ncols` panels `width` wide: as asked
    when it fits MAX_WIDTH_IN; narrower panels when they keep SHRINK_LIMIT of the width asked;
    else the columns split into groups laid out one below the other, as few groups as fit."""
    if ncols * width <= MAX_WIDTH_IN:
        return 1, ncols, width
    if MAX_WIDTH_IN / ncols >= SHRINK_LIMIT * width:
        return 1, ncols, MAX_WIDTH_IN / ncols
    per_row = max(1, int(MAX_WIDTH_IN // width))
    groups = math.ceil(ncols / per_row)
    columns = math.ceil(ncols / groups)
    return groups, columns, min(width, MAX_WIDTH_IN / columns)


def subplots(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.0, sharex=False, sharey=False, **kwargs):
    """plt.subplots with a size per panel; always returns an ndarray of axes of shape (nrows, ncols).

    A grid wider than MAX_WIDTH_IN is laid out in groups of columns, one group below the other
    (logical column c in group c // columns), so that its text stays legible on the page; sharing
    keeps its meaning (True, 'row', 'col'). The figure's layout engine is tight_layout's, applied
    when it is drawn unless the notebook lays it out itself."""
    groups, columns, width = _wrapped_grid(ncols, width)
    kwargs.setdefault("layout", "tight")
    kwargs["subplot_kw"] = {"axes_class": SpectraAxes, **kwargs.get("subplot_kw", {})}
    if groups == 1:
        return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                            sharex=sharex, sharey=sharey, **kwargs)
    fig, grid = plt.subplots(groups * nrows, columns, figsize=(width * columns, height * nrows * groups),
                             squeeze=False, **kwargs)
    axes = np.empty((nrows, ncols), dtype=object)
    for c in range(ncols):
        for r in range(nrows):
            axes[r, c] = grid[(c // columns) * nrows + r, c % columns]
    for ax in set(grid.flat) - set(axes.flat):
        fig.delaxes(ax)
    _share(axes, sharex, "x")
    _share(axes, sharey, "y")
    return fig, axes


def _share(axes: np.ndarray, share, which: str) -> None:
    """Share x or y limits among logical axes as plt.subplots does (True/'all', 'row', 'col'),
    hiding the inner tick labels: x below all but the last logical row, y right of column 0."""
    if share in (False, "none"):
        return
    for (r, c), ax in np.ndenumerate(axes):
        lead = {"row": axes[r, 0], "col": axes[0, c]}.get(share, axes[0, 0])
        if ax is not lead:
            getattr(ax, f"share{which}")(lead)
        if which == "x" and share in (True, "all", "col") and r < axes.shape[0] - 1:
            ax.tick_params(labelbottom=False)
        if which == "y" and share in (True, "all", "row") and ax.get_subplotspec().colspan.start > 0:
            ax.tick_params(labelleft=False)


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
    first = np.asarray(axes, dtype=object).flat[0]
    columns = first.get_subplotspec().get_gridspec().ncols  # as laid out: a bar as wide as for one panel
    # Lay the panels out first, then let the bar take its space from them: the tight layout engine
    # cannot place a colour bar axes and, left on, would draw the panels over it at savefig.
    if fig.get_layout_engine() is not None:
        fig.get_layout_engine().execute(fig)
        fig.set_layout_engine("none")
    return fig.colorbar(mappable, ax=axes, label=label, fraction=0.15 / columns, pad=0.1 / columns)


def line_panel(ax, x: Sequence, series: dict, title: str, xlabel: str, ylabel: str, marker: str = "."):
    """Several labelled lines on one axis."""
    for label, y in series.items():
        ax.plot(x, y, marker=marker, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
