"""Figure helpers: heatmaps without grid lines across the cells; a depth colour bar that matches
the depth colours; wide grids laid out in rows; text legible at the page's width; the minor-tick
shortcut changes no pixel."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.ticker import LogFormatterSciNotation

from utils.reporting.plotting import (
    DPI,
    MAX_WIDTH_IN,
    MIN_FONT_PT,
    MIN_TEXT_PX,
    TEXT_SIZE_KEY,
    UnicodeLogFormatter,
    depth_colorbar,
    depth_colors,
    heatmap,
    png_facts,
    save_figure,
    subplots,
    text_px_on_page,
)


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


def test_a_wide_grid_is_laid_out_in_rows_keeping_its_shape():
    fig, axes = subplots(2, 9, width=3.2, height=3.0)
    assert axes.shape == (2, 9) and len(set(axes.flat)) == 18 and len(fig.axes) == 18
    assert fig.get_figwidth() <= MAX_WIDTH_IN
    spec = {(r, c): (ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start)
            for (r, c), ax in np.ndenumerate(axes)}
    columns = 1 + max(col for _, col in spec.values())
    for c in range(9):  # each component's two panels stay stacked, groups follow one another
        assert spec[(1, c)] == (spec[(0, c)][0] + 1, spec[(0, c)][1])
        assert spec[(0, c)] == (2 * (c // columns), c % columns)
    plt.close(fig)


def test_a_narrow_grid_is_left_as_asked_a_little_wide_one_narrowed():
    fig, axes = subplots(2, 3, width=4.0, height=3.0)
    assert axes.shape == (2, 3) and fig.get_size_inches().tolist() == [12.0, 6.0]
    plt.close(fig)
    fig, axes = subplots(2, 3, width=5.0, height=3.0)  # 15 in: panels of 4.5 in rather than rows
    assert fig.get_size_inches().tolist() == [MAX_WIDTH_IN, 6.0] and len({ax.get_subplotspec().rowspan.start for ax in axes.flat}) == 2
    plt.close(fig)


@pytest.mark.parametrize("share", [True, "row", "col"])
def test_sharing_keeps_its_meaning_in_a_wrapped_grid(share):
    fig, axes = subplots(2, 8, width=3.0, sharey=share, sharex=share)
    for (r, c), ax in np.ndenumerate(axes):
        lead = {"row": axes[r, 0], "col": axes[0, c]}.get(share, axes[0, 0])
        assert ax.get_shared_y_axes().joined(ax, lead) and ax.get_shared_x_axes().joined(ax, lead)
    assert not axes[0, 0].get_shared_y_axes().joined(axes[0, 0], axes[1, 1]) or share is True
    plt.close(fig)


def test_saved_text_is_legible_at_page_width(tmp_path):
    fig, axes = subplots(1, 6, width=4.0, height=3.0)
    for ax in axes.flat:
        ax.plot([1, 2, 3], label="a series")
        ax.legend(fontsize=5)
        ax.tick_params(labelsize=4)
    path = save_figure(fig, tmp_path / "wide.png", close=True)
    facts = png_facts(path)
    assert round(facts["dpi"]) == DPI and float(facts["text"][TEXT_SIZE_KEY]) == MIN_FONT_PT
    assert text_px_on_page(MIN_FONT_PT, facts["width"], facts["dpi"]) >= MIN_TEXT_PX
    assert facts["width"] <= MAX_WIDTH_IN * DPI * 1.05  # tight bbox: a little padding at most


def test_text_px_on_page_closed_form():
    assert text_px_on_page(9, 500, dpi=72, page_px=1000) == 9  # shown at natural size
    assert text_px_on_page(8, 2200, dpi=110, page_px=1100) == pytest.approx(8 * 110 / 72 / 2)


def test_figure_saved_at_1100_px_has_readable_numbers():
    """MAX_WIDTH_IN is where MIN_FONT_PT text, scaled to the page width, is MIN_TEXT_PX high."""
    assert text_px_on_page(MIN_FONT_PT, MAX_WIDTH_IN * DPI) >= MIN_TEXT_PX
    assert text_px_on_page(MIN_FONT_PT, (MAX_WIDTH_IN + 0.5) * DPI) < MIN_TEXT_PX + 0.5


@pytest.mark.parametrize("span", [0.5, 1e3, 1e9])
def test_sparse_log_minor_ticks_change_no_pixel(tmp_path, span):
    """Log axes of `subplots` make no minor ticks over 1-6 decades: the minor ticks matplotlib
    makes there have no label (and this style draws no mark), and the image equals matplotlib's
    own with the same tick labels; under a decade (labelled minor ticks) and over 6 decades
    LogLocator's ticks are kept."""
    def draw(fig, axes, unicode_labels=False):
        x = np.arange(1, 200)
        axes[0, 0].loglog(x, 1.0 / x ** 1.5)
        axes[0, 1].semilogy(x, span ** (x / x.max()))  # log10(span) decades
        for axis in (a for ax in axes.flat for a in (ax.xaxis, ax.yaxis) if unicode_labels and a.get_scale() == "log"):
            axis.set_major_formatter(UnicodeLogFormatter())
            axis.set_minor_formatter(UnicodeLogFormatter(labelOnlyBase=False))
        fig.canvas.draw()  # the tight layout is applied at each draw: once here for both figures
        return fig, axes
    fig, axes = draw(*subplots(1, 2, width=4.0, height=3.0))
    ref_fig, ref_axes = draw(*plt.subplots(1, 2, figsize=(8.0, 3.0), squeeze=False, layout="tight"), unicode_labels=True)
    assert len(axes[0, 0].xaxis.get_minorticklocs()) == 0 < len(ref_axes[0, 0].xaxis.get_minorticklocs())
    for ours, theirs in zip(axes.flat, ref_axes.flat):
        for a, b in ((ours.xaxis, theirs.xaxis), (ours.yaxis, theirs.yaxis)):
            if len(a.get_minorticklocs()) != len(b.get_minorticklocs()):
                assert len(a.get_minorticklocs()) == 0 and not any(t.get_text() for t in b.get_minorticklabels())
    if span < 10:
        assert any(t.get_text() for t in axes[0, 1].yaxis.get_minorticklabels())  # labelled minor ticks kept
    save_figure(fig, tmp_path / "ours.png", close=True)
    ref_fig.savefig(tmp_path / "reference.png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(ref_fig)
    assert np.array_equal(plt.imread(tmp_path / "ours.png"), plt.imread(tmp_path / "reference.png"))


def test_unicode_log_labels_say_what_mathtext_says():
    """UnicodeLogFormatter writes LogFormatterSciNotation's label with superscripts: the same
    base, coefficient and exponent, over many decades (powers) and under one (coefficients)."""
    plain = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b", "0123456789-")
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    cases = {(1e-3, 1e13): {1e-3: "10\u207b\u00b3", 1.0: "10\u2070", 10.0: "10\u00b9", 1e12: "10\u00b9\u00b2"},
             (0.15, 0.7): {2e-1: "2\u00d710\u207b\u00b9", 3e-1: "3\u00d710\u207b\u00b9"}}
    for limits, expected in cases.items():
        ax.set_xlim(*limits)
        ours, theirs = UnicodeLogFormatter(labelOnlyBase=False), LogFormatterSciNotation(labelOnlyBase=False)
        for f in (ours, theirs):
            f.set_axis(ax.xaxis)
            f.set_locs(list(limits))
        for x, label in expected.items():
            assert ours(x) == label
        for x in np.geomspace(*limits, 50):  # any label matplotlib writes (or leaves empty)
            mathtext = theirs(x).removeprefix("$\\mathdefault{").removesuffix("}$")
            assert mathtext.replace("\\times", "\u00d7").replace("^{", "").replace("}", "") == ours(x).translate(plain)
    plt.close(fig)


def test_png_facts_rejects_other_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="not a PNG"):
        png_facts(tmp_path / "x.png")


def test_layer_axes_get_integer_ticks(tmp_path):
    fig, axes = subplots(1, 2, width=4.0, height=3.0)
    axes[0, 0].plot([0, 1, 2, 3], [1, 2, 3, 4])
    axes[0, 0].set(xlabel="layer", ylabel="effective rank")
    axes[0, 1].plot([0, 0.5, 1], [1, 2, 3])
    axes[0, 1].set(xlabel="relative depth")
    save_figure(fig, tmp_path / "layers.png")
    assert all(float(t).is_integer() for t in axes[0, 0].get_xticks())
    assert not all(float(t).is_integer() for t in axes[0, 1].get_xticks())
    assert not all(float(t).is_integer() for t in axes[0, 0].get_yticks())  # 1..4 in halves: left alone
    plt.close(fig)


@pytest.mark.parametrize("n_panels", [1, 3])
def test_depth_colorbar_does_not_overlap_the_panels_after_saving(n_panels, tmp_path):
    """The tight layout engine cannot place a colour bar: left on, it drew the panels over the bar
    at savefig (01's ESD figures); the bar must sit beside every panel in the saved figure."""
    fig, axes = subplots(1, n_panels, width=6.0, height=4.0)
    panels = np.asarray(axes).ravel()
    for ax in panels:
        ax.loglog([1e-3, 1e-1], [1, 1e3])
    bar = depth_colorbar(fig, panels, 5)
    save_figure(fig, tmp_path / "bar.png", close=False)
    bar_box = bar.ax.get_window_extent()
    for ax in panels:
        assert ax.get_window_extent().x1 <= bar_box.x0, "a panel reaches into the colour bar"
    plt.close(fig)
