"""Notebook 08 on a short series trained here (tiny NanoGPT, checkpoints in Trainer layout every 4
steps); trajectory.csv is checked against metrics computed directly on each checkpoint with
independent code (module hooks, torch.cov, eigvalsh / svdvals, numpy formulas), and the verdicts
against a recomputation from trajectory.csv."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from utils import sample_tokens
from utils.engine.training import NanoGPTConfig, SpectralCallback, TokenData, TrainConfig, byte_tokenizer, train
from utils.metrics.spectra import fit_power_law

from .conftest import TESTS_DIR
from .test_notebook_05 import reference_metrics

STEPS, EVERY = 16, 4
PARAMETERS = dict(n_sequences=12, seq_len=32, batch_size=4, skip_first=1, tail_window=[2, 12], forecast_lag=1,
                  early_fraction=0.6)


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    ids = torch.tensor(byte_tokenizer()("\n".join([
        "Return a new list containing all items from the iterable in ascending order.",
        "Raise KeyError when the key is absent; the default is returned otherwise.",
        "The quick brown fox jumps over the lazy dog, then naps in the sun."]) * 40,
        add_special_tokens=False)["input_ids"])
    data = TokenData(train_ids=ids[:-640], eval_ids=ids[-640:])
    cfg = NanoGPTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                        max_position_embeddings=32)
    callback = SpectralCallback(data.eval_windows(8, 32), every=EVERY, grad_samples=2, tail_window=(2, 12))
    run = tmp_path_factory.mktemp("series") / "run"
    train(cfg, data, TrainConfig(steps=STEPS, batch_size=4, seq_len=32, warmup=2), callback=callback, progress=False,
          checkpoint_every=EVERY, checkpoint_dir=run)
    return run, callback.records


def spectrum_entropy_rank(values: np.ndarray) -> float:
    p = values / values.sum()
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum())


def direct_metrics(directory, tokens: torch.Tensor, skip: int) -> dict:
    """{(layer, metric): value} computed on one checkpoint without the engines under test."""
    model = load_model_from(directory)
    out = {}
    layers = model.transformer.layers
    for i, block in enumerate(layers):
        for name, W in (("q", block.attn.q_proj.weight), ("ffn_in", block.mlp.up_proj.weight),
                        ("ffn_out", block.mlp.down_proj.weight)):
            s = torch.linalg.svdvals(W.detach().double()).numpy()
            out[(i, f"w.{name}.eff_rank")] = spectrum_entropy_rank(s)
            out[(i, f"w.{name}.stable_rank")] = float((s**2).sum() / s[0] ** 2)
            out[(i, f"w.{name}.alpha")] = fit_power_law(s**2).alpha
    pre, post = {i: [] for i in range(len(layers))}, {i: [] for i in range(len(layers))}
    handles = []
    for i, block in enumerate(layers):
        handles.append(block.mlp.up_proj.register_forward_hook(
            lambda m, a, o, i=i: pre[i].append(o.detach()[:, skip:].reshape(-1, o.shape[-1]))))
        handles.append(block.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: post[i].append(a[0].detach()[:, skip:].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states  # L + 1, the last after ln_f
    for h in handles:
        h.remove()
    for i in pre:
        for key, value in reference_metrics(torch.cat(pre[i]), torch.cat(post[i])).items():
            out[(i, f"nerve.{key}")] = value
    L = len(layers)
    for j, state in [(j, hidden[j]) for j in range(L)] + [(L + 1, hidden[L])]:
        rows = state[:, skip:].reshape(-1, state.shape[-1]).double()
        eig = torch.linalg.eigvalsh(torch.cov(rows.T)).numpy()[::-1].clip(min=0)
        out[(j, "act.eff_rank")] = spectrum_entropy_rank(eig)
    return out


def load_model_from(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True).eval()


def test_notebook_08_trajectory_matches_direct_metrics(run_notebook, series_dir):
    run, records = series_dir
    out = run_notebook("08_checkpoint_dynamics", str(TESTS_DIR / "params" / "nanogpt-tiny.yaml"),
                       checkpoints=str(run / "checkpoint-*"), cache=False, **PARAMETERS)
    traj = pd.read_csv(out / "trajectory.csv")
    assert list(traj.columns) == ["step", "checkpoint", "layer", "metric", "value"]
    steps = list(range(0, STEPS + 1, EVERY))
    assert sorted(traj.step.unique()) == steps
    assert set(traj.checkpoint) == {f"checkpoint-{s}" for s in steps}
    assert not traj.duplicated(["step", "layer", "metric"]).any()

    cks = pd.read_csv(out / "checkpoints.csv")
    assert cks.step.tolist() == steps and (cks.step_from == "trainer_state.json").all()
    np.testing.assert_allclose(cks.eval_loss, [r["eval_loss"] for r in records], rtol=1e-9)
    state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and sum("eval_loss" in h for h in state["log_history"]) == len(steps)

    tokens = sample_tokens(byte_tokenizer(), "stdlib-docs", PARAMETERS["n_sequences"], PARAMETERS["seq_len"], 0)
    table = traj.set_index(["step", "layer", "metric"]).value
    for step in steps:
        expected = direct_metrics(run / f"checkpoint-{step}", tokens.input_ids, PARAMETERS["skip_first"])
        for (layer, metric), value in expected.items():
            # the engine's FFN covariances accumulate in float32 (centred per batch): NerVE metrics
            # agree with the float64 reference to ~1e-7 absolute, as in notebook 05's test
            assert table[(step, layer, metric)] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, layer, metric)

    # verdicts recomputed from trajectory.csv with scipy, following the notebook's stated rules
    # (default from_step = 1: the step-0 initialisation is left out of the verdicts)
    verdicts = pd.read_csv(out / "verdicts.csv").set_index("claim")
    for claim, metric, sign in (("SE_post rises", "nerve.se_post", 1), ("PR_post rises", "nerve.pr_post", 1),
                                ("EEE_post falls", "nerve.eee_post", -1)):
        M = traj[traj.metric == metric].pivot(index="layer", columns="step", values="value").to_numpy()[:, 1:]
        follow = sum(sign * stats.spearmanr(steps[1:], row).statistic >= 0.5 and sign * (row[-1] - row[0]) > 0
                     for row in M if np.ptp(row) > 0)
        expected = "HOLDS" if follow > 0.5 * len(M) else "HOLDS PARTLY" if follow else "DOES NOT HOLD"
        assert verdicts.loc[claim, "verdict"] == expected
        assert verdicts.loc[claim, "layers following"] == f"{follow}/{len(M)}"
        assert verdicts.loc[claim, "checkpoints"] == len(steps) - 1
    report = (out / "report.md").read_text()
    assert f"{len(steps)} checkpoints at steps 0-{STEPS}" in report
    assert f"the verdicts rest on the {len(steps) - 1} at steps >= 1" in report and "Left out of the verdicts" in report
    for claim in ("SE_post rises", "PR_post rises", "EEE_post falls", "JS settles", "forecasts eval loss"):
        assert claim in report
    for name in ("heatmaps.png", "curves.png"):
        assert (out / name).stat().st_size > 0


def test_notebook_08_rejects_two_series(run_notebook, series_dir):
    import papermill

    run, _ = series_dir
    with pytest.raises(papermill.PapermillExecutionError, match="give only one"):
        run_notebook("08_checkpoint_dynamics", str(TESTS_DIR / "params" / "nanogpt-tiny.yaml"),
                     checkpoints=str(run / "checkpoint-*"), revisions=["step1"], cache=False)
