"""utils.analyses.subspace_geometry (notebook 03, seed `2.py`): the seed's summaries and verdicts on
closed forms, and each result's fields recomputed from the metrics they rest on."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils import load_model
from utils.analyses.subspace_geometry import (
    alignment_survey,
    alignment_verdict,
    choose_reference_layer,
    convergence_verdict,
    cross_reference,
    index_trend,
    layer_overlap,
    overlap_statistics,
    overlap_verdict,
    phase_boundaries,
    reference_candidates,
    reference_convergence,
    seed_verdicts,
    subspace_setup,
)
from utils.metrics.subspaces import energy_in_subspace, layer_subspaces, subspace_similarity

PARAMS = Path(__file__).parent / "params"


def test_overlap_statistics_closed_form():
    L = 6
    i, j = np.indices((L, L))
    S = np.exp(-np.abs(i - j))  # similarity decays with layer distance
    stats = overlap_statistics(S, distant_gap=2)
    assert stats["adjacent mean"] == pytest.approx(np.exp(-1))
    assert stats["distant (> 2 apart) mean"] == pytest.approx(np.mean(np.exp(-np.abs(i - j)[np.abs(i - j) > 2])))
    assert stats["off-diagonal max"] == pytest.approx(np.exp(-1))
    assert stats["adjacent - distant"] > 0


def test_index_trend_and_reference_choice():
    assert index_trend([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert index_trend([3.0, 1.0]) == pytest.approx(-1.0)  # two points, as the seed computes them
    assert np.isnan(index_trend([1.0, 1.0, 1.0])) and np.isnan(index_trend([2.0]))
    x = np.array([0.3, 0.1, 0.4, 0.2, 0.9])
    assert index_trend(x) == pytest.approx(np.corrcoef(np.arange(5), x)[0, 1])
    assert reference_candidates(10).tolist() == [2, 3, 4, 5, 6, 7] and reference_candidates(4).tolist() == [0, 1, 2, 3]
    assert 33 in reference_candidates(36) and 34 not in reference_candidates(36)  # the seed's layer 33 of 36
    kernel = np.array([1.0, 9, 9, 9, 5, 9, 9, 9, 9, 9])  # layer 0 is lowest but has no layers before it
    ref, rule = choose_reference_layer(kernel)
    assert ref == 4 and "kernel effective rank" in rule
    kernel[7] = 2.0  # two layers after it: allowed
    assert choose_reference_layer(kernel)[0] == 7
    kernel[8] = 1.5  # one layer after it: not a candidate
    assert choose_reference_layer(kernel)[0] == 7
    acts = pd.DataFrame({"layer": range(11), "eff_rank": [50, 40, 40, 40, 40, 40, 40, 3, 40, 40, 40]})
    ref, rule = choose_reference_layer(kernel, acts)
    assert ref == 6 and "activation effective rank" in rule  # row 7 = after block 6
    ref, rule = choose_reference_layer(kernel, acts.iloc[:5])  # does not cover every block: fall back
    assert ref == 7


def test_phase_boundaries_are_the_largest_drops():
    S = np.eye(6)
    adjacent = [0.9, 0.8, 0.3, 0.7, 0.2]  # a_i = S[i, i + 1]
    S[np.arange(5), np.arange(1, 6)] = adjacent
    table = phase_boundaries(S, n=2)
    # drops a_{i+1} - a_i: -0.1, -0.5, +0.4, -0.5: the first two -0.5 (i = 1, 3) -> boundaries 2->3, 4->5
    assert table.boundary.tolist() == ["2->3", "4->5"]
    np.testing.assert_allclose(table["change from previous pair"], [-0.5, -0.5])
    np.testing.assert_allclose(table["adjacent similarity"], [0.3, 0.2])


def test_seed_verdict_thresholds():
    L = 9
    i, j = np.indices((L, L))
    assert overlap_verdict(overlap_statistics(np.exp(-np.abs(i - j)), 3), 0.1)[0] == "phase structure"
    assert overlap_verdict(overlap_statistics(np.full((L, L), 0.8), 3), 0.1)[0] == "uniformly high"
    assert overlap_verdict(overlap_statistics(np.full((L, L), 0.3), 3), 0.1)[0] == "moderate"
    assert convergence_verdict(0.5, -0.5)[0] == "convergence point"
    assert convergence_verdict(0.5, 0.1)[0] == "partial"
    assert convergence_verdict(0.2, -0.9)[0] == "no clear pattern"
    assert convergence_verdict(np.nan, -0.9)[0] == "not testable"
    assert [alignment_verdict(r)[0] for r in (1.6, 1.5, 0.7, 0.69)] == ["coupled", "near chance", "near chance", "avoidance"]


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model(str(PARAMS / "tiny-llama.yaml"))


def test_subspace_setup_checks_and_clips(tiny_llama):
    dims = tiny_llama.dims
    setup = subspace_setup("m", dims, 1, 10_000)
    assert (setup.k, setup.k_requested, setup.distant_gap, setup.reference) == (dims.d_head, 10_000, dims.L // 3, None)
    assert setup.chance == dims.d_head / dims.d
    assert f"clipped to d_head = {dims.d_head}" in setup.k_note and "whole row space" in setup.k_note
    small = subspace_setup("m", dims, 0, 2, reference_layer="1")
    assert (small.k, small.k_note, small.reference) == (2, "", 1)
    with pytest.raises(ValueError, match=f"parameter head={dims.h} is out of range"):
        subspace_setup("m", dims, dims.h, 2)
    with pytest.raises(ValueError, match="parameter k=0 must be at least 1"):
        subspace_setup("m", dims, 0, 0)
    for bad in (str(dims.L), "-1", "middle"):
        with pytest.raises(ValueError, match=f"parameter reference_layer='{bad}' is out of range"):
            subspace_setup("m", dims, 0, 2, reference_layer=bad)


@pytest.fixture(scope="module")
def analysed(tiny_llama, tmp_path_factory):
    """Every result of notebook 03 on tiny-llama (k = 3, head 1), without notebook 01 and 04 outputs."""
    missing = tmp_path_factory.mktemp("none")
    setup = subspace_setup("tiny-llama", tiny_llama.dims, 1, 3)
    overlap = layer_overlap(tiny_llama.adapter, setup)
    conv = reference_convergence(tiny_llama.adapter, overlap, missing / "activation_spectra.csv")
    align = alignment_survey(tiny_llama.adapter, overlap)
    cross = cross_reference(overlap, conv, align, missing / "weight_spectra.csv", "tiny-llama")
    return setup, overlap, conv, align, cross, seed_verdicts(overlap, conv, align)


def test_layer_overlap_fields(tiny_llama, analysed):
    setup, overlap = analysed[0], analysed[1]
    adapter, L = tiny_llama.adapter, setup.L
    U = layer_subspaces(adapter, 0, 3, "key")[1]
    V = layer_subspaces(adapter, L - 1, 3, "key")[1]
    assert overlap.similarity["key"].shape == (setup.h, L, L)
    assert overlap.similarity["key"][1, 0, L - 1] == pytest.approx(subspace_similarity(U, V), rel=1e-12)
    np.testing.assert_allclose(overlap.head_mean["query"], overlap.similarity["query"].mean(axis=0))
    assert set(overlap.arrays()) == {"subspace_similarity", "subspace_similarity_head1", "subspace_similarity_query",
                                     "subspace_similarity_query_head1"}
    for name, S in overlap.matrices().items():
        assert overlap.statistics[name].to_dict() == overlap_statistics(S, setup.distant_gap)
    row = overlap.by_distance.iloc[0]
    assert row.distance == 1 and row["head mean, key"] == pytest.approx(np.diag(overlap.head_mean["key"], 1).mean())
    assert set(overlap.boundaries.inputs) == {"head 1, key (seed)", "head mean, key"}


def test_convergence_and_alignment_fields(tiny_llama, analysed):
    setup, overlap, conv, align = analysed[:4]
    assert conv.ref == choose_reference_layer(conv.kernel_eff_rank)[0] and "not available" in conv.rule
    np.testing.assert_allclose(conv.to_ref["head 1"], overlap.similarity["key"][1][conv.ref])
    pre, post = conv.trends("head mean")
    assert np.isnan(pre) or pre == index_trend(conv.to_ref["head mean"].to_numpy()[:conv.ref])
    assert np.isnan(post) or post == index_trend(conv.to_ref["head mean"].to_numpy()[conv.ref + 1:])
    t = align.table
    assert len(t) == 2 * setup.L * setup.h and align.gated
    ffn = tiny_llama.adapter.ffn(2)
    row = t[(t.layer == 2) & (t["head"] == 1) & (t.side == "key")].iloc[0]
    assert row.alignment_gate == pytest.approx(float(energy_in_subspace(ffn.w_gate, overlap.subspaces["key"][2][1])))
    assert align.over_chance("key") == pytest.approx(t[t.side == "key"].alignment.mean() / setup.chance)
    assert align.key_grid.shape == (setup.L, setup.h)


def test_seed_verdicts_fields(analysed):
    setup, overlap, conv, align, cross, verdicts = analysed
    v = verdicts.verdicts
    assert [x.seed_inputs for x in v] == [True, False] * 3
    stats = overlap.statistics["head 1, key"]
    assert v[0].adjacent_minus_distant == stats["adjacent - distant"] or math.isnan(stats["adjacent - distant"])
    assert v[0].verdict == overlap_verdict(stats, setup.chance)[0]
    assert (v[3].pre_trend_r, v[3].post_trend_r) == pytest.approx(conv.trends("head mean"), nan_ok=True)
    assert v[3].verdict == convergence_verdict(*conv.trends("head mean"))[0]
    key = align.table[align.table.side == "key"]
    assert v[4].alignment_over_chance == pytest.approx(key[key["head"] == 1].alignment_gate.mean() / setup.chance)
    assert v[5].verdict == alignment_verdict(v[5].alignment_over_chance)[0]
    table = verdicts.table()
    assert list(table.columns)[:4] == ["experiment", "inputs", "seed_inputs", "verdict"] and len(table) == 6
    assert verdicts.query_alignment_over_chance == align.over_chance("query")
    assert len(verdicts.sentences()) == 4 and conv.rule in verdicts.sentences()[1]
    assert cross.correlations is None and len(cross.layer_metrics) == setup.L
