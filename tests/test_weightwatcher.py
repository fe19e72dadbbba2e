"""Notebook 01's WeightWatcher columns against the installed weightwatcher 0.7.7, column by column.

Models: torch Linear layers holding heavy-tailed matrices of several shapes (square: the
quarter-circle path of mp_fit; fewer than 20 eigenvalues: WW's small-N fit), real SmolLM2-135M
matrices, and a tiny Llama end to end. randomize: WW's shuffles come from numpy's global
generator, so `np.random.seed(s)` before analyze() and our RandomState(s) draw the same
permutations: compared value for value, not in distribution.

fix_fingers="xmin_peak" and fit="TPL" run in WW only through `pl_package="powerlaw"`, and WW 0.7.7
hands `powerlaw.Fit` a `distribution=` keyword that the installed powerlaw 2.0.0 refuses (every
layer "failed": `test_weightwatcher_as_installed_fails_xmin_peak_and_tpl`). The references below
run WW's own analyze() with that keyword dropped (`_powerlaw_as_ww_calls_it`); for xmin_peak also
with powerlaw's power-law estimator back to the closed-form MLE at every alpha, as powerlaw 1.x
and WW's own fit compute it (powerlaw 2.0 bounds alpha to (0, 3) and refits numerically outside
(1.5, 3]); WW's window, powerlaw's candidates, KS distance and choice stay theirs.
"""

from __future__ import annotations

import contextlib
import logging
import types

import numpy as np
import pytest
import torch

from utils.metrics.spectra import entry_std, fit_power_law, singular_values
from utils.metrics.weight_spectra import FINGER_COLUMNS, MP_COLUMNS, RANDOMIZE_COLUMNS, SpectraOptions, matrix_row, refitted_columns, weight_spectra
from utils.metrics.weightwatcher import WW_DEFAULT_COLUMNS, clipped_power_law_fit, matrix_rank, peak_power_law_fit, ww_summary, xmin_peak_range

ww = pytest.importorskip("weightwatcher")
logging.getLogger("weightwatcher").setLevel(logging.ERROR)
SEED = 3
STRINGS = {"status", "warning", "has_esd"}


def _model(mats: list[torch.Tensor]) -> torch.nn.Sequential:
    layers = []
    for W in mats:
        layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        layer.weight.data = W.detach().float().clone()
        layers.append(layer)
    return torch.nn.Sequential(*layers)


def _ours(mats, options: SpectraOptions) -> list[dict]:
    rng = np.random.RandomState(SEED)
    return [matrix_row(singular_values(W).numpy(), *W.shape, entry_std(W), options, W, rng) for W in mats]


def _heavy_tailed() -> list[torch.Tensor]:
    torch.manual_seed(7)
    shapes = [(300, 120), (64, 256), (40, 15), (9, 30), (128, 128), (90, 60)]
    mats = [torch.distributions.StudentT(torch.tensor(2.5)).sample(s).float() for s in shapes]
    spiked = mats[0].clone()
    spiked[:3, :3] += 200.0  # a few huge eigenvalues: fingers for clip_xmax
    return mats + [spiked]


def _smollm2() -> list[torch.Tensor]:
    from utils import load_weights

    adapter = load_weights("smollm2-135m").adapter
    return [adapter.weight_matrices(layer)[name] for layer, name in [(0, "q"), (5, "k"), (12, "ffn_gate"), (29, "ffn_out")]]


@pytest.fixture(scope="module")
def frames():
    """WW's frames and ours for both matrix sets, every option on (fix_fingers in its own run)."""
    out = {}
    for label, mats in (("heavy", _heavy_tailed()), ("smollm2", _smollm2())):
        watcher = ww.WeightWatcher(model=_model(mats))
        np.random.seed(SEED)
        full = watcher.analyze(mp_fit=True, randomize=True)
        summary = watcher.get_summary()
        fingers = watcher.analyze(fix_fingers="clip_xmax")
        out[label] = {"mats": mats, "ww": full, "summary": summary, "ww_fingers": fingers,
                      "ours": _ours(mats, SpectraOptions(mp_fit=True, randomize=True, seed=SEED)),
                      "ours_fingers": _ours(mats, SpectraOptions(fix_fingers="clip_xmax"))}
    return out


def _compare(ours: list[dict], theirs, column: str, skipped: set[int] = frozenset()) -> None:
    kept = [r for i, r in enumerate(ours) if i not in skipped]
    assert len(kept) == len(theirs)
    for mine, (_, ref) in zip(kept, theirs.iterrows()):
        if column in STRINGS:
            assert str(mine[column]) == str(ref[column]), column
        else:
            assert mine[column] == pytest.approx(float(ref[column]), rel=1e-6, abs=1e-12), column


@pytest.mark.parametrize("label", ["heavy", "smollm2"])
@pytest.mark.parametrize("column", WW_DEFAULT_COLUMNS + ["alpha", "stable_rank"])
def test_default_column_equals_weightwatcher(frames, label, column):
    f = frames[label]
    skipped = {i for i, W in enumerate(f["mats"]) if min(W.shape) < 8}
    _compare(f["ours"], f["ww"], column, skipped)


@pytest.mark.parametrize("label", ["heavy", "smollm2"])
@pytest.mark.parametrize("column", MP_COLUMNS)
def test_mp_fit_column_equals_weightwatcher(frames, label, column):
    _compare(frames[label]["ours"], frames[label]["ww"], column)


@pytest.mark.parametrize("label", ["heavy", "smollm2"])
@pytest.mark.parametrize("column", RANDOMIZE_COLUMNS)
def test_randomize_column_equals_weightwatcher_same_seed(frames, label, column):
    _compare(frames[label]["ours"], frames[label]["ww"], column)


@pytest.mark.parametrize("label", ["heavy", "smollm2"])
@pytest.mark.parametrize("column", FINGER_COLUMNS + ["alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "warning",
                                                     "alpha_weighted", "log_alpha_norm"])
def test_clip_xmax_column_equals_weightwatcher(frames, label, column):
    f = frames[label]
    skipped = {i for i, W in enumerate(f["mats"]) if min(W.shape) < 8}
    _compare(f["ours_fingers"], f["ww_fingers"], column, skipped)


@pytest.mark.parametrize("seed", range(4))
def test_clipped_fit_equals_weightwatchers_fit_clipped_powerlaw(seed):
    """The clipping loop itself against RMT_Util.fit_clipped_powerlaw (WW's fit), on spectra with a
    cluster of large eigenvalues on top of a log-normal or Pareto body. (No test spectrum here
    triggers a clip: the num_fingers > 0 branch is compared only through analyze() above.)"""
    from weightwatcher.RMT_Util import fit_clipped_powerlaw

    g = np.random.default_rng(seed)
    body = np.exp(g.normal(0, 0.3, 400)) if seed % 2 else g.pareto(1.0 + seed / 2, 300) + 1.0
    x = np.sort(np.r_[body, 3 * body.max() * np.exp(g.normal(0, 0.02, 3 + seed))])
    ours = clipped_power_law_fit(x)
    fit, fingers, raw = fit_clipped_powerlaw(x, logger=logging.getLogger("weightwatcher"))
    assert ours.num_fingers == fingers and ours.fit.alpha == pytest.approx(fit.alpha, rel=1e-10)
    assert ours.raw_alpha == pytest.approx(raw.alpha, rel=1e-10) and ours.fit.xmin == fit.xmin


def test_summary_equals_get_summary(frames):
    import pandas as pd

    for f in frames.values():
        skipped = {i for i, W in enumerate(f["mats"]) if min(W.shape) < 8}
        df = pd.DataFrame([r for i, r in enumerate(f["ours"]) if i not in skipped])
        ours = ww_summary(df)
        for key, value in f["summary"].items():
            assert ours[key] == pytest.approx(float(value), rel=1e-6), key


def test_weight_spectra_equals_analyze_on_tiny_llama():
    """End to end: weight_spectra's table against analyze() on a tiny Llama, rows matched by module name."""
    from utils.models.loading import load_model

    from .conftest import TESTS_DIR

    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    df, _ = weight_spectra(loaded.adapter, progress=False)
    details = ww.WeightWatcher(model=loaded.model).analyze()
    paths = {p: (layer, w) for layer in range(loaded.dims.L) for w, p in loaded.adapter.family.block_paths(layer).items()}
    matched = 0
    for _, ref in details.iterrows():
        key = next((v for p, v in paths.items() if str(ref.longname).endswith(p)), None)
        if key is None:
            continue
        row = df[(df.layer == key[0]) & (df.weight == key[1])].iloc[0]
        for column in WW_DEFAULT_COLUMNS + ["alpha"]:
            if column in STRINGS:
                assert str(row[column]) == str(ref[column]), column
            else:
                assert row[column] == pytest.approx(float(ref[column]), rel=1e-6, abs=1e-12), column
        matched += 1
    assert matched == len(df[df.layer >= 0])


def test_columns_that_existed_keep_their_numbers():
    """weight_spectra's old columns are weight_metrics' numbers, and alpha is the plain fit."""
    from utils.metrics.spectra import weight_metrics

    W = _heavy_tailed()[0]
    row = _ours([W], SpectraOptions())[0]
    old = weight_metrics(W)
    for key in ("eff_rank", "stable_rank", "spectral_norm", "fro_norm", "alpha", "alpha_xmin", "alpha_ks", "rank_slope",
                "mp_edge", "mp_signal_ratio"):
        assert row[key] == old[key]
    assert row["alpha"] == fit_power_law(singular_values(W).numpy() ** 2).alpha


def test_matrix_rank_of_a_rank_deficient_matrix_uses_an_svd():
    """The Gram cannot resolve singular values below ~1e-8 s_1; a rank-3 matrix still has rank 3."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(200, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 50, generator=g, dtype=torch.float64)
    row = _ours([W], SpectraOptions())[0]
    assert row["matrix_rank"] == 3 and row["rank_loss"] == 47
    assert matrix_rank(np.linalg.svd(W.numpy(), compute_uv=False), 200) == 3


def test_clip_xmax_without_fingers_keeps_the_fit():
    x = np.random.default_rng(1).pareto(2.0, 400) + 1.0
    clipped = clipped_power_law_fit(x)
    assert clipped.num_fingers == 0 and clipped.fit == fit_power_law(x)


def test_bad_options_fail_before_any_work():
    with pytest.raises(ValueError, match="xmin_peak"):
        SpectraOptions(fix_fingers="xmin_max")
    with pytest.raises(ValueError, match="TPL"):
        SpectraOptions(fit="tpl")
    with pytest.raises(ValueError, match="clip_xmax"):
        SpectraOptions(fit="TPL", fix_fingers="clip_xmax")
    with pytest.raises(ValueError, match="bootstrap"):
        SpectraOptions(bootstrap=1)


# --- fix_fingers="xmin_peak" and fit="TPL" ----------------------------------------------------------

PEAK_COLUMNS = ["alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "status", "warning", "alpha_weighted",
                "log_alpha_norm"]


@contextlib.contextmanager
def _powerlaw_as_ww_calls_it(closed_form: bool):
    """WW's powerlaw path runnable on powerlaw 2.0.0: `distribution=` dropped from Fit(...); with
    `closed_form`, Power_Law's alpha is the closed-form MLE (its initial value) at every alpha > 1."""
    import powerlaw
    from weightwatcher import WW_powerlaw

    ranges = {"parameter_ranges": {"alpha": [1, None]}} if closed_form else {}

    def fit(data, distribution=None, **kwargs):
        return powerlaw.Fit(data, **ranges, **kwargs)

    saved_module, saved_fit = WW_powerlaw.powerlaw, powerlaw.Power_Law.fit
    WW_powerlaw.powerlaw = types.SimpleNamespace(Fit=fit)
    if closed_form:
        powerlaw.Power_Law.fit = lambda self, data=None: self.compute_distance_metrics()
    try:
        yield
    finally:
        WW_powerlaw.powerlaw, powerlaw.Power_Law.fit = saved_module, saved_fit


def _small() -> list[torch.Tensor]:
    """Matrices with few eigenvalues (the TPL fit grows with the square of their number: ~1 s for 60,
    ~10 s for 192) and one SmolLM2 key head (64 x 576 rows of layer 5's W_K: 64 eigenvalues)."""
    torch.manual_seed(11)
    mats = [torch.distributions.StudentT(torch.tensor(2.5)).sample(s).float() for s in [(90, 60), (64, 24), (40, 15)]]
    from utils import load_weights

    return mats + [load_weights("smollm2-135m").adapter.weight_matrices(5)["k"][:64].clone()]


@pytest.fixture(scope="module")
def peak_frames():
    out = {}
    for label, mats in (("heavy", _heavy_tailed()), ("smollm2", _smollm2())):
        with _powerlaw_as_ww_calls_it(closed_form=True):
            theirs = ww.WeightWatcher(model=_model(mats)).analyze(fix_fingers="xmin_peak", pl_package="powerlaw")
        out[label] = {"mats": mats, "ww": theirs, "ours": _ours(mats, SpectraOptions(fix_fingers="xmin_peak"))}
    return out


@pytest.fixture(scope="module")
def tpl_frames():
    mats = _small()
    watcher = ww.WeightWatcher(model=_model(mats))
    with _powerlaw_as_ww_calls_it(closed_form=False):
        tpl = watcher.analyze(fit="TPL", pl_package="powerlaw")
        etpl = watcher.analyze(fit="E_TPL", pl_package="powerlaw")
    return {"TPL": {"mats": mats, "ww": tpl, "ours": _ours(mats, SpectraOptions(fit="TPL"))},
            "E_TPL": {"mats": mats, "ww": etpl, "ours": _ours(mats, SpectraOptions(fit="TPL", fix_fingers="xmin_peak"))}}


def _compare_fit(ours: list[dict], theirs, column: str) -> None:
    """As `_compare`, where WW fails a fit (status "failed": it writes -1 and columns derived from
    -1; ours NaN, num_pl_spikes -1), writes None for xmax (ours NaN) and NaN for a TPL's sigma."""
    assert len(ours) == len(theirs)
    for mine, (_, ref) in zip(ours, theirs.iterrows()):
        if column in ("status", "num_pl_spikes") or (column == "warning" and ref["status"] != "failed"):
            assert str(mine[column]) == str(ref[column]), column
        elif ref["status"] == "failed" or column == "xmax":
            assert mine["status"] == ref["status"] and (column == "warning" or np.isnan(mine[column])), column
            assert column != "xmax" or ref[column] is None or float(ref[column]) == -1, column
        elif np.isnan(float(ref[column])):
            assert np.isnan(mine[column]), column
        else:
            assert mine[column] == pytest.approx(float(ref[column]), rel=1e-6, abs=1e-12), column


@pytest.mark.parametrize("label", ["heavy", "smollm2"])
@pytest.mark.parametrize("column", PEAK_COLUMNS)
def test_xmin_peak_column_equals_weightwatcher(peak_frames, label, column):
    f = peak_frames[label]
    skipped = {i for i, W in enumerate(f["mats"]) if min(W.shape) < 8}
    _compare_fit([r for i, r in enumerate(f["ours"]) if i not in skipped], f["ww"], column)


def test_xmin_peak_fits_where_weightwatcher_fits(peak_frames):
    """The comparison above is not vacuous: most matrices are fitted, xmin moved off the default one."""
    for f in peak_frames.values():
        fitted = [r for r in f["ours"] if r["status"] == "success"]
        assert len(fitted) >= len(f["ours"]) - 2
    assert any(r["xmin"] != d["xmin"] for r, d in zip(peak_frames["heavy"]["ours"], frames_default(peak_frames["heavy"])))


def frames_default(f) -> list[dict]:
    return _ours(f["mats"], SpectraOptions())


def test_xmin_peak_window_is_weightwatchers():
    """WW's peak: the left edge of the fullest of 100 log10 bins; its range mixes log10 and linear ends."""
    x = np.exp(np.random.default_rng(0).normal(3.0, 1.0, 500))
    counts, edges = np.histogram(np.log10(x), bins=100)
    peak = 10 ** edges[np.argmax(counts)]
    assert xmin_peak_range(x) == pytest.approx((np.log10(0.95 * peak), 1.5 * peak))
    fit = peak_power_law_fit(x)
    assert fit.xmin < 1.5 * peak and fit.n_tail == (x >= fit.xmin).sum()


@pytest.mark.parametrize("label", ["TPL", "E_TPL"])
@pytest.mark.parametrize("column", PEAK_COLUMNS + ["Lambda"])
def test_truncated_power_law_column_equals_weightwatcher(tpl_frames, label, column):
    f = tpl_frames[label]
    _compare_fit(f["ours"], f["ww"], column)


def test_truncated_power_law_is_fitted(tpl_frames):
    """The comparison above is not vacuous: TPL fits every matrix, E_TPL all but those whose peak
    window holds fewer than 2 eigenvalues (WW fails them too), and the fit is not the power law's."""
    for label, f in tpl_frames.items():
        fitted = [r for r in f["ours"] if r["status"] == "success"]
        assert len(fitted) >= len(f["ours"]) - (label == "E_TPL"), [r["status"] for r in f["ours"]]
        assert all(r["Lambda"] >= 0 and np.isfinite(r["alpha"]) and np.isnan(r["sigma"]) for r in fitted)
    default = _ours(tpl_frames["TPL"]["mats"], SpectraOptions())
    assert any(r["alpha"] != pytest.approx(d["alpha"], rel=1e-3) for r, d in zip(tpl_frames["TPL"]["ours"], default))


def test_weightwatcher_as_installed_fails_xmin_peak_and_tpl():
    """Why the references above patch powerlaw's call: as installed, WW 0.7.7 fails every layer with
    xmin_peak (its own package cannot take a range, powerlaw 2.0 refuses `distribution=`) and TPL.
    When this fails, WW or powerlaw changed: compare without `_powerlaw_as_ww_calls_it`."""
    model = _model(_heavy_tailed()[:2])
    watcher = ww.WeightWatcher(model=model)
    assert set(watcher.analyze(fix_fingers="xmin_peak").status) == {"failed"}
    assert set(watcher.analyze(fix_fingers="xmin_peak", pl_package="powerlaw").status) == {"failed"}
    assert set(watcher.analyze(fit="TPL", pl_package="powerlaw").status) == {"failed"}


def test_refitted_columns_recompute_the_alpha_columns():
    W = _heavy_tailed()[1]
    s = singular_values(W).numpy()
    row = refitted_columns(s**2, s, *W.shape, SpectraOptions(fix_fingers="xmin_peak"))
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * np.log10(s[0] ** 2))
    assert row["alpha_xmin"] == row["xmin"] and row["alpha_ks"] == row["D"]
