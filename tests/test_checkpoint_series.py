"""Tests of utils.models.checkpoint_series and utils.analyses.checkpoint_dynamics: steps from trainer_state.json and names (and the error when
neither gives one), series from notebook parameters, the per-checkpoint cache (a rerun measures
only new or changed checkpoints), the verdict functions, and Trainer-layout checkpoints written
by utils.engine.training.train."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import TrainerState

from utils import load_params
from utils.analyses.checkpoint_dynamics import forecast_verdict, measure_series, settle_verdict, trend_verdict
from utils.engine.training import NanoGPTConfig, NanoGPTForCausalLM, TokenData, TrainConfig, byte_tokenizer, train
from utils.models.checkpoint_series import SeriesError, eval_loss_at, hub_series, series_from_parameters, step_from_name

from .conftest import TESTS_DIR

BASE = TESTS_DIR / "params" / "nanogpt-tiny.yaml"
TEXT = ("Return the value of x, raising KeyError if absent. The quick brown fox jumps over the lazy dog. "
        "Übergrößenträger naïve café \t tabs\nnew lines. ") * 60


def tiny_model(seed: int) -> NanoGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = NanoGPTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16)
    return NanoGPTForCausalLM(cfg).eval()


def save(directory, seed: int, state: dict | None = None):
    """A checkpoint directory: a (seeded, hence distinct) tiny model, tokenizer, optional trainer_state.json."""
    tiny_model(seed).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    if state is not None:
        (directory / "trainer_state.json").write_text(json.dumps(state))
    return directory


@pytest.mark.parametrize("name,step", [("checkpoint-1000", 1000), ("step1000", 1000), ("global_step250", 250),
                                       ("iter_0042", 42), ("run/checkpoint-7/", 7), ("ckpt-3", 3),
                                       ("final", None), ("checkpoint-best", None), ("gelu", None)])
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_step_from_trainer_state_wins_over_name(tmp_path):
    history = [{"loss": 3.0, "step": 10}, {"eval_loss": 2.5, "step": 10}, {"eval_loss": 2.0, "step": 20}]
    save(tmp_path / "checkpoint-999", 0, {"global_step": 20, "log_history": history})
    series = series_from_parameters(load_params(BASE), checkpoints=str(tmp_path / "checkpoint-*"), min_checkpoints=1)
    (ck,) = series.checkpoints
    assert (ck.step, ck.step_from, ck.name) == (20, "trainer_state.json", "checkpoint-999")
    assert ck.eval_loss == 2.0
    assert math.isnan(eval_loss_at({"log_history": history}, 15))  # no eval at that step
    assert ck.params.source == {"kind": "local", "path": str(tmp_path / "checkpoint-999")}


def test_no_step_is_a_clear_error(tmp_path):
    save(tmp_path / "final", 0)
    save(tmp_path / "checkpoint-5", 1)
    with pytest.raises(SeriesError, match=r"final.*no step.*checkpoint-<step>"):
        series_from_parameters(load_params(BASE), checkpoints=str(tmp_path / "*"))


def test_series_parameter_errors(tmp_path):
    base = load_params(BASE)
    with pytest.raises(SeriesError, match="no checkpoint directory matches"):
        series_from_parameters(base, checkpoints=str(tmp_path / "nothing-*"))
    with pytest.raises(SeriesError, match="give only one"):
        series_from_parameters(base, checkpoints="x-*", revisions=["step1"])
    with pytest.raises(SeriesError, match="needs a hub id"):
        series_from_parameters(base, revisions=["step1", "step2"])
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(SeriesError, match="no config.json"):
        series_from_parameters(base, checkpoints=str(tmp_path / "checkpoint-*"))
    save(tmp_path / "a" / "checkpoint-3", 0)
    save(tmp_path / "b" / "checkpoint-3", 1)
    with pytest.raises(SeriesError, match=r"steps \[3\] occur more than once"):
        series_from_parameters(base, checkpoints=str(tmp_path / "*" / "checkpoint-*"))
    with pytest.raises(SeriesError, match="at least 2"):
        series_from_parameters(base, checkpoints=str(tmp_path / "a" / "checkpoint-*"))
    # the default series is notebook 06's base run in the model's output folder
    with pytest.raises(SeriesError, match="06_training_dynamics"):
        series_from_parameters(base, output_root=str(tmp_path / "out"))


def test_hub_and_params_series_take_steps_from_names(tmp_path):
    base = load_params(BASE)
    ck = hub_series("EleutherAI/pythia-160m", ["step143000", "step1000"], base)
    assert [c.step for c in ck] == [143000, 1000]
    assert ck[1].params.source == {"kind": "hub", "id": "EleutherAI/pythia-160m", "revision": "step1000"}
    assert ck[1].params.dtype == base.dtype
    with pytest.raises(SeriesError, match="main"):
        hub_series("EleutherAI/pythia-160m", ["main"], base)
    for step in (4, 2):
        save(tmp_path / f"checkpoint-{step}", step)
        (tmp_path / f"c{step}.yaml").write_text(f"source: {{kind: local, path: '{tmp_path / f'checkpoint-{step}'}'}}\n")
    series = series_from_parameters(base, params_list=[str(tmp_path / "c4.yaml"), str(tmp_path / "c2.yaml")])
    assert series.steps == [2, 4]


def test_cache_measures_only_new_and_changed_checkpoints(tmp_path, monkeypatch):
    """A rerun after adding a checkpoint measures only that one; rewriting a checkpoint invalidates it."""
    import utils.analyses.checkpoint_dynamics as cs

    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    loads = []  # checkpoints measured (opened and run), in order
    real_measure = cs.measure_checkpoint
    monkeypatch.setattr(cs, "measure_checkpoint",
                        lambda m, *a, **k: loads.append(m.params.source["path"]) or real_measure(m, *a, **k))
    base = load_params(BASE)
    for step in (0, 10):
        save(tmp_path / "run" / f"checkpoint-{step}", step)
    kw = dict(corpus="stdlib-docs", n_sequences=8, seq_len=16, tail_window=(2, 8), progress=False)
    first = measure_series(series_from_parameters(base, checkpoints=str(tmp_path / "run" / "checkpoint-*")), **kw)
    assert first.checkpoints.from_cache.tolist() == [False, False] and len(loads) == 2
    save(tmp_path / "run" / "checkpoint-20", 20)
    loads.clear()
    again = measure_series(series_from_parameters(base, checkpoints=str(tmp_path / "run" / "checkpoint-*")), **kw)
    assert again.checkpoints.from_cache.tolist() == [True, True, False]
    assert loads == [str(tmp_path / "run" / "checkpoint-20")]
    old = again.trajectory[again.trajectory.step < 20].reset_index(drop=True)
    assert old.equals(first.trajectory)  # cached rows read back exactly
    # other measurement settings or other weights are a cache miss
    loads.clear()
    measure_series(series_from_parameters(base, checkpoints=str(tmp_path / "run" / "checkpoint-*")),
                   **{**kw, "tail_window": (2, 6)})
    assert len(loads) == 3
    loads.clear()
    save(tmp_path / "run" / "checkpoint-10", 99)
    st = (tmp_path / "run" / "checkpoint-10" / "model.safetensors").stat()
    os.utime(tmp_path / "run" / "checkpoint-10" / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    redo = measure_series(series_from_parameters(base, checkpoints=str(tmp_path / "run" / "checkpoint-*")), **kw)
    assert redo.checkpoints.from_cache.tolist() == [True, False, True]


def test_trend_and_settle_verdicts_closed_forms():
    steps = [0, 10, 20, 30, 40, 50]
    rising = np.array([[1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 6], [6, 5, 4, 3, 2, 1.0]])  # (layers, checkpoints)
    v = trend_verdict(rising, steps, +1, rho_min=0.5)
    assert v.layers_following == 2 and v.verdict == "HOLDS" and v.checkpoints == 6
    np.testing.assert_allclose(v.rho_by_layer, [1.0, 0.8857142857, -1.0])
    assert trend_verdict(rising, steps, -1).verdict == "HOLDS PARTLY"
    assert trend_verdict(rising[:, :2], steps[:2], +1).verdict == "TOO FEW CHECKPOINTS"
    # a dip then a partial recovery ranks upward (rho = 1 - 6 * 38 / (8 * 63)) but ends lower: not a rise
    dip = np.array([[5.0, 1, 2, 3, 6, 7, 8, 4.9]])
    v = trend_verdict(dip, list(range(8)), +1)
    assert v.rho_by_layer[0] == pytest.approx(1 - 6 * 38 / (8 * 63)) and v.layers_following == 0
    assert v.layers_net_as_claimed == 0 and v.verdict == "DOES NOT HOLD"
    # settles: a curve that levelled off; drifts: a straight line (late range / whole range ~ late fraction)
    js = np.array([[0.0, 0.5, 0.8, 0.9, 0.9, 0.9], [0, 1, 2, 3, 4, 5.0]])
    s = settle_verdict(js, steps, late_fraction=0.34, tolerance=0.25)
    np.testing.assert_allclose(s.ratio_by_layer, [0.0, 0.2])
    assert s.late_checkpoints == 2 and s.layers_following == 2
    s = settle_verdict(js, steps, late_fraction=0.7, tolerance=0.25)  # late: steps >= 15
    np.testing.assert_allclose(s.ratio_by_layer, [0.1 / 0.9, 0.6])
    assert s.verdict == "HOLDS PARTLY"


def test_forecast_verdict():
    steps = np.arange(0, 200, 10)  # 20 checkpoints; early half: steps <= 95 -> 10 of them
    loss = 5 * np.exp(-steps / 60.0)
    metric = -loss  # moves with loss
    f = forecast_verdict(metric, loss, steps, lag=2, early_fraction=0.5)
    assert f.pairs == 10 and f.verdict == "NO BETTER THAN LOSS" and f.rho == pytest.approx(-1.0)
    assert f.rho_persistence == pytest.approx(1.0) and not f.beats_persistence
    # a loss that stalls and resumes: the spectrum at i leads loss at i + 2, the loss itself does not
    stall = np.array([5.0, 4.9, 4.8, 4.8, 4.8, 4.0, 3.0, 3.0, 2.9, 2.0, 1.9, 1.8])
    lead = np.r_[stall[2:], stall[-1], stall[-1]]  # metric_i = loss_{i+2}
    f = forecast_verdict(lead, stall, np.arange(12), lag=2, early_fraction=1.0)
    assert f.rho == pytest.approx(1.0) and abs(f.rho_persistence) < 1
    assert f.verdict == "FORECASTS" and f.beats_persistence
    rng = np.random.default_rng(0)
    noise = rng.permutation(20).astype(float)
    f = forecast_verdict(noise, loss, steps, lag=2, early_fraction=0.5, rho_min=0.9)
    assert f.verdict == "DOES NOT FORECAST"
    assert forecast_verdict(metric, np.full(20, np.nan), steps).verdict == "NOT TESTABLE"


def test_train_saves_trainer_layout_checkpoints(tmp_path):
    ids = torch.tensor(byte_tokenizer()(TEXT, add_special_tokens=False)["input_ids"])
    data = TokenData(train_ids=ids[:-400], eval_ids=ids[-400:])
    cfg = NanoGPTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16)
    result = train(cfg, data, TrainConfig(steps=6, batch_size=2, seq_len=16, warmup=2), progress=False,
                   checkpoint_every=3, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-3", "checkpoint-6"]
    state = TrainerState.load_from_json(str(tmp_path / "checkpoint-6" / "trainer_state.json"))
    assert state.global_step == 6 and state.max_steps == 6
    losses = [h for h in state.log_history if "loss" in h]
    assert [h["step"] for h in losses] == [3, 6]
    assert losses[1]["loss"] == pytest.approx(np.mean(result.train_losses[3:6]))
    final = NanoGPTForCausalLM.from_pretrained(tmp_path / "checkpoint-6")
    for a, b in zip(final.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(cfg, data, TrainConfig(steps=2, batch_size=2, seq_len=16), progress=False, checkpoint_every=1)
