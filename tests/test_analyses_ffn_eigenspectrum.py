"""Notebook 05's analysis (utils.analyses.ffn_eigenspectrum): the verdict and the findings' fields,
checked against the per-layer table they rest on and against closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils import load_model
from utils.analyses import ffn_eigenspectrum as ffn

from .conftest import TESTS_DIR


def table(se, pr, eee) -> pd.DataFrame:
    """A metrics table from per-layer (pre, post) pairs."""
    rows = [{"layer": i, "se_pre": a, "se_post": b, "pr_pre": c, "pr_post": d, "eee_pre": e, "eee_post": f, "js": 0.1,
             "top1_pre": 0.1, "top1_post": 0.1, "rank_pre": 1, "rank_post": 1}
            for i, ((a, b), (c, d), (e, f)) in enumerate(zip(se, pr, eee))]
    return ffn.metrics_table(rows, 100, 8)


def test_verdict_counts_layers_per_trend():
    up, down = (1.0, 2.0), (2.0, 1.0)
    t = table([up, up, up], [up, up, down], [down, up, up])  # SE 3/3, PR 2/3, EEE 1/3
    v = ffn.nerve_verdict(t, majority=0.5)
    assert v.counts == {"SE rises": 3, "PR rises": 2, "EEE falls": 1}
    assert v.overall == {"SE rises": True, "PR rises": True, "EEE falls": False}
    assert v.label == "HOLDS PARTLY" and v.layers_all_three == 1  # layer 0 only
    assert ffn.nerve_verdict(table([up] * 2, [up] * 2, [down] * 2), 0.5).label == "HOLDS"
    assert ffn.nerve_verdict(table([down] * 2, [down] * 2, [up] * 2), 0.5).label == "DOES NOT HOLD"
    assert ffn.nerve_verdict(t, majority=0.7).label == "HOLDS PARTLY"  # 3 > 2.1 only for SE


def test_findings_fields_follow_the_tables():
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    p = ffn.FFNParameters(n_sequences=6, seq_len=32, batch_size=4, skip_first=1)
    plan = ffn.plan(loaded, p)
    assert plan.spectra_layers == [0, 1, 2] and plan.max_rank == min(loaded.dims.d_ff, p.n_tokens - 1)
    spectra = ffn.measure(loaded, plan, p)
    found = ffn.findings(loaded, spectra, plan, p)
    df, df_all = spectra.table, spectra.table_all
    assert list(df.columns) == ffn.COLUMNS and (df.n_tokens == 6 * 31).all() and (df_all.n_tokens == 6 * 32).all()
    L = loaded.dims.L
    trends = [int(df.se_up.sum()), int(df.pr_up.sum()), int(df.eee_down.sum())]
    majority = [c > 0.5 * L for c in trends]
    assert found.verdict.label == ("HOLDS" if all(majority) else "HOLDS PARTLY" if any(majority) else "DOES NOT HOLD")
    assert found.verdict.layers_all_three == int(df.holds.sum())
    assert found.failing == [i for i in range(L) if not df.holds[i]]
    assert found.flipped == [i for i in range(L) if df.holds[i] != df_all.holds[i]]
    assert found.dominated == [i for i in range(L) if df.top1_post[i] > p.dominant_share]
    np.testing.assert_allclose(df.top1_post, spectra.eig_post[:, 0] / spectra.eig_post.sum(1), rtol=1e-12)
    assert found.rank_floor == pytest.approx(max(p.rank_rtol, 2 * np.finfo(np.float32).eps))  # 2 batches
    assert f"all three trends together hold in {found.verdict.layers_all_three} of {L} layers" in found.sentences()[0]
