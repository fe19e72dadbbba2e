"""Notebook 06's analysis (utils.analyses.training_dynamics and layer_tables): the long per-layer
layout against the wide records, and the verdict fields on constructed runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.analyses import training_dynamics as td
from utils.analyses.layer_tables import layer_step_matrix, layer_table


def records(n_steps: int = 5, L: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_steps):
        r = {"step": 10 * k, "tokens": 1000 * k, "train_loss": None, "eval_loss": 3.0 - 0.4 * k}
        r.update({f"{m}_l{i}": float(rng.normal()) for m in td.NERVE_METRICS for i in range(L)})
        r.update(act_eff_rank=10.0 + k, act_tail_slope=-1.0 - 0.1 * k + 0.01 * rng.normal(),
                 act_head_share=0.3 + 0.01 * k, grad_eff_rank=2.0, grad_stable_rank=1.5 + 0.1 * rng.normal(),
                 grad_topk_share=0.9)
        out.append(r)
    return out


def test_long_layout_reads_the_wide_records_exactly():
    frame = pd.DataFrame(records())
    long = layer_table(frame)
    assert list(long.columns) == ["step", "layer", "metric", "value"] and len(long) == 5 * 3 * 7
    for metric in td.NERVE_METRICS:
        M, layers, steps = layer_step_matrix(long, metric)
        np.testing.assert_array_equal(M, frame[[f"{metric}_l{i}" for i in range(3)]].to_numpy().T)
        assert list(layers) == [0, 1, 2] and list(steps) == list(frame.step)
    frame.loc[:, "js_l1"] = np.nan  # a layer with no value at any step keeps its row
    M, layers, _ = layer_step_matrix(layer_table(frame), "js", dropna=False)
    assert M.shape == (3, 5) and np.isnan(M[1]).all()


class FakeRuns(td.Runs):
    """Runs with given records, no training."""

    def __init__(self, p, by_name):
        self.p, self.runs = p, {n: td.TrainedRun({}, recs, {}, 64) for n, recs in by_name.items()}


def test_batch_size_summary_fields():
    p = td.TrainingParameters(steps=40, batch_size=8, seq_len=32, log_every=10, batch_sizes=[4, 8], forecast_fraction=0.01)
    fast, slow = records(seed=1), records(seed=2)
    for r in slow:
        r["eval_loss"] += 0.5  # slow reaches the common target later
    runs = FakeRuns(p, {"bs4": fast, "bs8": slow})
    b = td.batch_size_summary(runs, {4: "bs4", 8: "bs8"})
    assert b.target == max(min(r["eval_loss"] for r in fast), min(r["eval_loss"] for r in slow))
    first_hit = [next(r for r in recs if r["eval_loss"] <= b.target) for recs in (fast, slow)]
    assert b.table.tokens_to_target.tolist() == [r["tokens"] for r in first_hit]
    assert b.slowest == "bs8" and np.isnan(b.forecast_rho)  # two runs: no forecast correlation
    assert b.jitter == np.ptp([r["act_tail_slope"] for r in slow[-3:]])
    assert b.distinct == (b.spread_at_target > b.jitter)


def test_head_gradient_verdict_closed_forms():
    movement = pd.DataFrame({"rho": [0.9, -0.6, np.nan]})
    head = td.HeadGradient(movement, {"act_head_share": (0.2, 0.1), "grad_eff_rank": (0.1, 0.2),
                                      "grad_stable_rank": (0.5, 0.1), "grad_topk_share": (0.0, 0.1)})
    assert head.grad_distinct == ["grad_stable_rank"] and head.co_moving == 2 and len(head.rhos) == 2
    assert head.verdict == "reproduced"
    head.separation["act_head_share"] = (0.0, 0.1)
    assert head.verdict == "partly reproduced"
    none = td.HeadGradient(pd.DataFrame({"rho": [0.1]}), {c: (0.0, 1.0) for c in td.HEAD_GRADIENT_COLUMNS})
    assert none.verdict == "not reproduced"
