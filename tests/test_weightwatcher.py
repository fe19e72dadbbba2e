"""Notebook 01's WeightWatcher columns against the installed weightwatcher 0.7.7, column by column.

Models: torch Linear layers holding heavy-tailed matrices of several shapes (square: the
quarter-circle path of mp_fit; fewer than 20 eigenvalues: WW's small-N fit), real SmolLM2-135M
matrices, and a tiny Llama end to end. randomize: WW's shuffles come from numpy's global
generator, so `np.random.seed(s)` before analyze() and our RandomState(s) draw the same
permutations: compared value for value, not in distribution.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from utils.metrics.spectra import entry_std, fit_power_law, singular_values
from utils.metrics.weight_spectra import FINGER_COLUMNS, MP_COLUMNS, RANDOMIZE_COLUMNS, SpectraOptions, matrix_row, weight_spectra
from utils.metrics.weightwatcher import WW_DEFAULT_COLUMNS, clipped_power_law_fit, matrix_rank, ww_summary

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
        SpectraOptions(fix_fingers="xmin_peak")
    with pytest.raises(ValueError, match="bootstrap"):
        SpectraOptions(bootstrap=1)
