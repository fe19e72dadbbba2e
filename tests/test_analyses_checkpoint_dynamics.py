"""Notebook 08's analysis (utils.analyses.checkpoint_dynamics): typed verdicts, the verdict table
and the findings' fields on a constructed trajectory."""

from __future__ import annotations

import math

import pandas as pd

from utils.analyses import checkpoint_dynamics as cd
from utils.models.checkpoint_series import Series


def trajectory(steps, L=2):
    rows = []
    for k, step in enumerate(steps):
        for i in range(L):
            for m, v in (("nerve.se_post", 1.0 + k), ("nerve.pr_post", 2.0 + k * (i + 1)), ("nerve.eee_post", 1.0 - 0.1 * k),
                         ("nerve.js", 0.5 * (1 - math.exp(-k))), ("nerve.se_pre", 1.0), ("nerve.pr_pre", 1.0),
                         ("nerve.eee_pre", 1.0)):
                rows.append((step, f"checkpoint-{step}", i, m, v))
        for j in range(L + 2):
            rows += [(step, f"checkpoint-{step}", j, "act.eff_rank", 5.0 + k), (step, f"checkpoint-{step}", j,
                                                                              "act.tail_slope", -1.0 - k)]
    return pd.DataFrame(rows, columns=cd.COLUMNS)


def test_judge_and_findings_on_a_constructed_series():
    steps = [0, 10, 20, 30, 40, 50]
    traj = trajectory(steps)
    ck = pd.DataFrame({"step": steps, "checkpoint": [f"checkpoint-{s}" for s in steps], "step_from": "name",
                       "eval_loss": [5.0, 4.0, 3.5, 3.2, 3.1, 3.05], "from_cache": False})
    result = cd.SeriesResult(traj, ck, None)
    p = cd.CheckpointParameters(forecast_lag=1, early_fraction=1.0)
    v = cd.judge(result, steps, p)
    assert v.steps == steps[1:] and v.final_state == 3
    assert isinstance(v.claims["SE_post rises"], cd.TrendVerdict) and isinstance(v.claims["JS settles"], cd.SettleVerdict)
    for claim in ("SE_post rises", "PR_post rises", "EEE_post falls"):
        assert v.claims[claim].verdict == "HOLDS" and v.claims[claim].layers_following == 2
    assert v.claims["JS settles"].checkpoints == 5
    f = v.forecasts["act.eff_rank"]
    assert isinstance(f, cd.ForecastVerdict) and f.pairs == 4 and f.lag == 1
    table = v.table()
    assert table.claim.tolist()[-1] == "early act.eff_rank (state 3) forecasts eval loss"
    assert table.set_index("claim").loc["SE_post rises", "layers following"] == "2/2"
    series = Series("constructed", [])
    found = cd.CheckpointFindings(series.description, steps, 6, v, p,
                                  {"nerve.se_post": (1.0, 2.0)})
    assert found.left_out == [0] and found.with_loss == 6
    assert any(s.startswith("Left out of the verdicts (from_step = 1): step(s) [0].") for s in found.sentences())


def test_tested_mask_refuses_too_few_checkpoints():
    import pytest

    with pytest.raises(ValueError, match="from_step=30 leaves 1 checkpoint"):
        cd.tested_mask([0, 10, 30], 30)
