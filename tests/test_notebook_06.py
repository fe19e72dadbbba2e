"""Notebook 06 on a tiny training budget: the gradient spectra it records, plots and tests
(Spectral Lens finding 3), checked against the numbers it saves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.engine.training import head_gradient_movement

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, steps=40, batch_size=8,
            seq_len=32, log_every=5, eval_windows=8, grad_samples=6, tail_window=[2, 16], activations=["gelu", "relu"],
            batch_sizes=[8], save_checkpoints=False)


@pytest.fixture(scope="module")
def out(tmp_path_factory, execute_warm):
    return execute_warm("06_training_dynamics", "smollm2-135m", tmp_path_factory.mktemp("nb06"), TINY)


def test_gradient_spectra_saved_per_record(out):
    log = pd.read_csv(out / "training_log.csv")
    n = TINY["grad_samples"]
    assert set(log.run) == {"gelu", "relu"} and len(log) == 2 * (TINY["steps"] // TINY["log_every"] + 1)
    assert log.grad_eff_rank.between(1, n + 1e-9).all() and log.grad_stable_rank.between(1 - 1e-9, n + 1e-9).all()
    assert log.grad_topk_share.between(4 / n - 1e-9, 1 + 1e-9).all()  # top 4 of n singular values
    assert log.act_head_share.between(2 / TINY["hidden_size"], 1 + 1e-9).all()  # head = first 2 modes
    for png in ("gradient_curves.png", "gradient_spectra.png"):
        assert (out / png).stat().st_size > 1000


def test_finding_3_verdict_from_the_numbers(out):
    log = pd.read_csv(out / "training_log.csv")
    movement = pd.read_csv(out / "head_gradient_movement.csv")
    for row in movement.itertuples():
        expected = head_gradient_movement(log[log.run == row.run])
        assert row.rho == pytest.approx(expected["rho"], rel=1e-5, nan_ok=True)  # CSV: 6 digits
        assert row.final_grad_stable_rank == pytest.approx(expected["final_grad_stable_rank"], rel=1e-5)
    spread = {c: np.ptp(movement[f"final_{c}"]) > movement[f"jitter_{c}"].max()
              for c in ("act_head_share", "grad_eff_rank", "grad_stable_rank", "grad_topk_share")}
    grad = spread["grad_eff_rank"] or spread["grad_stable_rank"] or spread["grad_topk_share"]
    rhos = movement.rho.dropna()
    co = int((rhos.abs() >= 0.5).sum())
    verdict = ("reproduced" if spread["act_head_share"] and grad and co > len(rhos) / 2
               else "not reproduced" if not (spread["act_head_share"] or grad or co) else "partly reproduced")
    report = (out / "report.md").read_text()
    assert f"Spectral Lens finding 3 (head of the activation spectrum alongside gradient spectra) is {verdict} " in report
    assert f"in {co} of {len(rhos)} runs" in report
