"""Notebook 08's analysis: the spectra of every checkpoint of one training run, cached per
checkpoint, and the verdicts on NerVE's training-time claims and the Spectral Lens forecast.

The series comes from `utils.models.checkpoint_series` (found without loading). `measure_series`
visits the checkpoints one at a time (open, measure, free: memory of one block) and reuses the
project's engines, no second implementation:
- weights (`utils.metrics.weight_spectra.weight_spectra`'s numbers, computed in the pass below from the
  tensors it reads, `utils.engine.layerwise.BlockWeightSpectra`): eff_rank, stable_rank and alpha of
  every matrix, metric `w.<type>.<name>` at its layer (embedding/unembedding at layer -1);
- one layer-major pass (`utils.engine.layerwise`: the checkpoint read block by block, every FFN
  layer and residual state reduced to eigenvalues before the next block; one layer's FFN
  statistics must fit `ffn_memory_mb`) over a fixed token sample
  (`utils.engine.corpus.sample_tokens`, fixed seed, drawn with the first checkpoint's tokenizer):
  NerVE metrics (`utils.metrics.spectra.nerve_metrics`: se/pr/eee pre and post, js) of every FFN,
  metric `nerve.<name>` at FFN layer i, and the residual covariance effective rank and
  power-law tail slope (Spectral Lens), metrics `act.eff_rank`, `act.tail_slope` at residual
  state j (0 embeddings, i = output of block i-1, L+1 the final-normed state the LM head reads).
The trajectory is the long per-layer layout of `utils.analyses.layer_tables` (plus the checkpoint name).

Cache: each checkpoint's rows are stored at `cache_dir()/checkpoint_series/<digest>.json`, the
digest over the checkpoint's content fingerprint (`checkpoint_fingerprint`), its load settings,
the token sample's fingerprint and the measurement settings. Written atomically; the key is
stored and compared on load. A rerun after adding checkpoints measures only the new ones.

`trend_verdict`, `settle_verdict` and `forecast_verdict` turn trajectories into typed verdicts
(`TrendVerdict`, `SettleVerdict`, `ForecastVerdict`) with the number of checkpoints they rest
on; `judge` applies them as notebook 08 states, `findings` writes `CheckpointFindings`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps
from tqdm.auto import tqdm

from utils.analyses.layer_tables import layer_step_matrix
from utils.analyses.parameters import NotebookParameters, check_skip_first, check_tail_window
from utils.cache_files import read_cache, write_cache
from utils.engine.activations import default_ffn_budget
from utils.engine.corpus import TokenSample, sample_tokens
from utils.engine.layerwise import BlockWeightSpectra, FFNStats, LayerwiseModel, ResidualStats, ffn_layer_bytes, run_layerwise
from utils.metrics.spectra import nerve_metrics, power_law_slope, spectrum_metrics
from utils.models.checkpoint_series import Checkpoint, Series, SeriesError, checkpoint_fingerprint
from utils.models.loading import LoadedModel, StreamedModel, open_model
from utils.models.params import Params
from utils.paths import cache_dir
from utils.reporting.plotting import heatmap, line_panel, save_figure, subplots
from utils.reporting.report import Report

CACHE_VERSION = 2  # 2: pre-activation spectra through the projection's input (FFNStats pre_from_input)
WEIGHT_METRICS = ("eff_rank", "stable_rank", "alpha")
COLUMNS = ["step", "checkpoint", "layer", "metric", "value"]


# --- cache ----------------------------------------------------------------------------------------

def cache_key(checkpoint: Checkpoint, tokens: TokenSample, settings: dict) -> dict:
    p = checkpoint.params
    return {"version": CACHE_VERSION, "content": checkpoint_fingerprint(p), "dtype": p.dtype, "device": p.device,
            "task": p.task, "corpus": tokens.corpus, "tokens": tokens.fingerprint(),
            "shape": list(tokens.input_ids.shape), "token_seed": tokens.seed, **settings}


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "checkpoint_series" / f"{digest}.json"


def _load_cached(key: dict) -> pd.DataFrame | None:
    def load(path: Path) -> pd.DataFrame | None:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != json.loads(json.dumps(key)):
            return None
        return pd.DataFrame(data["rows"], columns=["layer", "metric", "value"])

    return read_cache(cache_path(key), load, "checkpoint-series cache entry")


def _save_cached(key: dict, rows: pd.DataFrame) -> None:
    payload = {"key": key, "rows": [[int(r.layer), r.metric, float(r.value)] for r in rows.itertuples()]}
    write_cache(cache_path(key), lambda tmp: tmp.write_text(json.dumps(payload), encoding="utf-8"),
                "checkpoint-series cache entry")


# --- measuring one checkpoint ---------------------------------------------------------------------

def measure_checkpoint(loaded: LoadedModel | StreamedModel, tokens: TokenSample, *, skip_first: int = 1,
                       batch_size: int = 8, tail_window: Sequence[int] = (8, 64), ffn_memory_mb: int = 0,
                       progress: bool = False) -> pd.DataFrame:
    """Long table (layer, metric, value) of one checkpoint: weight metrics, NerVE metrics of every
    FFN and residual activation spectra from one layer-major pass (`utils.engine.layerwise`: one
    block and one layer's statistics alive at a time; each tensor read once). One
    layer's FFN statistics must fit `ffn_memory_mb` (0: half the free memory, as notebook 05)."""
    lw = LayerwiseModel.from_model(loaded)
    dims = lw.adapter.dims
    max_positions = getattr(lw.model.config, "max_position_embeddings", None)
    if max_positions and tokens.input_ids.shape[1] > max_positions:
        raise SeriesError(f"{loaded.params.name}: windows of {tokens.input_ids.shape[1]} tokens exceed the model's "
                          f"{max_positions} positions; lower seq_len")
    n_rows = tokens.input_ids.shape[0] * (tokens.input_ids.shape[1] - skip_first)
    route, need = ffn_layer_bytes(n_rows, dims.d_ff, pre_width=min(dims.d, dims.d_ff))
    budget = (ffn_memory_mb << 20) or default_ffn_budget(lw.device)
    if need > budget:
        raise SeriesError(f"{loaded.params.name}: one layer's FFN statistics need {need / 2**20:.0f} MiB ({route} "
                          f"route) but ffn_memory_mb allows {budget / 2**20:.0f} MiB: raise it or lower n_sequences")
    rows: list[tuple[int, str, float]] = []
    residual = ResidualStats(dims.L, dims.d, lw.device, torch.zeros(0, dtype=torch.long), tokens.input_ids.shape[1],
                             keep=False, route="auto", n_rows=n_rows)
    ffn = FFNStats(range(dims.L), dims.d_ff, lw.device, keep=False, route="auto", n_rows=n_rows, pre_from_input=True)
    weight_consumer = BlockWeightSpectra(lw)  # the weights' metrics from the blocks the pass reads
    run_layerwise(lw, tokens, [weight_consumer, residual, ffn], batch_size=batch_size, skip_first=skip_first,
                  progress=progress)
    weights, _ = weight_consumer.table()
    for r in weights.itertuples():
        rows += [(int(r.layer), f"w.{r.weight}.{m}", float(getattr(r, m))) for m in WEIGHT_METRICS]
    for i in range(dims.L):
        rows += [(i, f"nerve.{k}", v) for k, v in nerve_metrics(ffn.eigenvalues[i]["pre"],
                                                                ffn.eigenvalues[i]["post"]).items()]
    start, stop = tail_window
    for j in range(dims.L + 2):  # residual states 0..L+1
        eig = residual.eigenvalues[j]
        slope = power_law_slope(eig, start, stop) if min(stop, eig.size) - start >= 2 else math.nan
        rows += [(j, "act.eff_rank", spectrum_metrics(eig)["eff_rank"]), (j, "act.tail_slope", slope)]
    return pd.DataFrame(rows, columns=["layer", "metric", "value"])


def load_tokenizer(params: Params):
    """The tokenizer of a checkpoint without reading its weights (`open_model`; a random config is built)."""
    return open_model(params).tokenizer


@dataclass
class SeriesResult:
    trajectory: pd.DataFrame  # long: step, checkpoint, layer, metric, value
    checkpoints: pd.DataFrame  # one row per checkpoint: step, checkpoint, step_from, eval_loss, from_cache
    tokens: TokenSample


def measure_series(series: Series, *, corpus: str = "stdlib-docs", n_sequences: int = 32, seq_len: int = 128,
                   seed: int = 0, skip_first: int = 1, batch_size: int = 8, tail_window: Sequence[int] = (8, 64),
                   ffn_memory_mb: int = 0, cache: bool = True, progress: bool = True) -> SeriesResult:
    """Measure every checkpoint of a series (cached ones are read back, not loaded); see module doc."""
    tokens = sample_tokens(load_tokenizer(series.checkpoints[0].params), corpus, n_sequences, seq_len, seed)
    settings = {"skip_first": skip_first, "tail_window": list(tail_window), "weight_metrics": list(WEIGHT_METRICS)}
    frames, info = [], []
    for ck in tqdm(series.checkpoints, desc="checkpoints", disable=not progress):
        key = cache_key(ck, tokens, settings)
        rows = _load_cached(key) if cache else None
        from_cache = rows is not None
        if rows is None:
            loaded = open_model(ck.params)  # streamed block by block where the checkpoint is on disk
            vocab = loaded.dims.V
            if int(tokens.input_ids.max()) >= vocab:
                raise SeriesError(f"checkpoint {ck.name}: vocabulary of {vocab} does not cover the token sample "
                                  f"drawn with {series.checkpoints[0].name}'s tokenizer; the checkpoints of a series "
                                  "must share one tokenizer")
            rows = measure_checkpoint(loaded, tokens, skip_first=skip_first, batch_size=batch_size,
                                      tail_window=tail_window, ffn_memory_mb=ffn_memory_mb)
            del loaded  # free before the next checkpoint loads: memory of one model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if cache:
                _save_cached(key, rows)
        frames.append(rows.assign(step=ck.step, checkpoint=ck.name))
        info.append({"step": ck.step, "checkpoint": ck.name, "step_from": ck.step_from, "eval_loss": ck.eval_loss,
                     "from_cache": from_cache})
    trajectory = pd.concat(frames, ignore_index=True)[COLUMNS]
    return SeriesResult(trajectory, pd.DataFrame(info), tokens)


# --- verdicts ---------------------------------------------------------------------------------------

def _spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(sps.spearmanr(x[ok], y[ok]).statistic)


def _label(n_hold: int, n: int, majority: float) -> str:
    return "HOLDS" if n_hold > majority * n else "HOLDS PARTLY" if n_hold else "DOES NOT HOLD"


@dataclass
class TrendVerdict:
    """Does a metric rise or fall over training, layer by layer (`trend_verdict`)."""

    verdict: str  # HOLDS / HOLDS PARTLY / DOES NOT HOLD / TOO FEW CHECKPOINTS
    layers_following: int
    layers: int
    checkpoints: int
    rho_layer_mean: float  # Spearman of the layer mean with the step
    first: float  # layer mean at the first checkpoint
    last: float
    layers_net_as_claimed: int  # layers whose net change alone has the claimed sign
    rho_by_layer: np.ndarray  # (layers,)

    def statistic(self) -> str:
        return f"rho(step, layer mean) {self.rho_layer_mean:+.2f}; {self.first:.4g} -> {self.last:.4g}"

    def sentence(self, claim: str, steps: Sequence[int], rho_min: float) -> str:
        return (f"NerVE: {claim} — {self.verdict} on {self.checkpoints} checkpoints (steps {steps[0]}-{steps[-1]}): "
                f"{self.layers_following} of {self.layers} FFN layers follow (Spearman with step at least {rho_min} in "
                f"the claimed direction and net change first -> last in that direction; the net change alone agrees in "
                f"{self.layers_net_as_claimed}); the layer mean goes {self.first:.4g} -> {self.last:.4g} "
                f"(Spearman with step {self.rho_layer_mean:+.2f}).")


@dataclass
class SettleVerdict:
    """Does a metric settle (`settle_verdict`)."""

    verdict: str
    layers_following: int
    layers: int
    checkpoints: int
    late_checkpoints: int
    late_range_ratio_median: float
    ratio_by_layer: np.ndarray  # (layers,) late range / whole range

    def statistic(self) -> str:
        return (f"median late/whole range {self.late_range_ratio_median:.2f} over {self.late_checkpoints} late "
                "checkpoints")

    def sentence(self, claim: str, late_fraction: float, tolerance: float) -> str:
        return (f"NerVE: {claim} — {self.verdict} on {self.checkpoints} checkpoints ({self.late_checkpoints} in the last "
                f"{late_fraction:.0%} of the steps): in {self.layers_following} of {self.layers} layers JS moves over "
                f"that late span by at most {tolerance:.0%} of its whole range (median ratio "
                f"{self.late_range_ratio_median:.2f}).")


@dataclass
class ForecastVerdict:
    """Does an early spectral metric forecast later eval loss (`forecast_verdict`)."""

    verdict: str  # FORECASTS / NO BETTER THAN LOSS / DOES NOT FORECAST / NOT TESTABLE
    pairs: int
    rho: float
    rho_persistence: float
    beats_persistence: bool
    lag: int

    def statistic(self) -> str:
        return f"rho {self.rho:+.2f} vs persistence {self.rho_persistence:+.2f} ({self.pairs} pairs, lag {self.lag})"

    def sentence(self, metric: str, state: int) -> str:
        if self.verdict == "NOT TESTABLE":
            return (f"Spectral Lens forecast with {metric}: NOT TESTABLE — {self.pairs} (early checkpoint, later loss) "
                    f"pairs with an eval loss (at least 4 needed).")
        return (f"Spectral Lens forecast: early {metric} of state {state} against eval loss {self.lag} checkpoints "
                f"later — {self.verdict} (Spearman {self.rho:+.2f} over {self.pairs} pairs; the loss itself gives "
                f"{self.rho_persistence:+.2f}, so the spectrum {'beats' if self.beats_persistence else 'does not beat'} "
                f"persistence).")


def trend_verdict(matrix: np.ndarray, steps: Sequence[int], direction: int, rho_min: float = 0.5,
                  majority: float = 0.5, min_checkpoints: int = 3) -> TrendVerdict:
    """Does a metric rise (direction +1) or fall (-1) over training, layer by layer?

    matrix (layers, checkpoints). A layer follows the trend when the Spearman correlation of its
    values with the step, times `direction`, is at least `rho_min` and its net change from the
    first to the last checkpoint has the claimed sign (a dip followed by a partial recovery is a
    rise in rank order but not a rise). Verdict HOLDS when more than `majority` of the layers
    follow, HOLDS PARTLY when some do, else DOES NOT HOLD.
    """
    n = len(steps)
    rho = np.array([_spearman(steps, row) for row in matrix])
    net = direction * (matrix[:, -1] - matrix[:, 0])  # (layers,)
    held = int(np.sum((direction * np.nan_to_num(rho, nan=0.0) >= rho_min) & (net > 0)))
    mean = np.nanmean(matrix, axis=0)
    verdict = "TOO FEW CHECKPOINTS" if n < min_checkpoints else _label(held, len(rho), majority)
    return TrendVerdict(verdict, held, len(rho), n, _spearman(steps, mean), float(mean[0]), float(mean[-1]),
                        int(np.sum(net > 0)), rho)


def settle_verdict(matrix: np.ndarray, steps: Sequence[int], late_fraction: float = 1 / 3, tolerance: float = 0.25,
                   majority: float = 0.5) -> SettleVerdict:
    """Does a metric settle? A layer settles when its range over the last `late_fraction` of the
    step span is at most `tolerance` times its range over the whole series (a steady drift gives
    about late_fraction; a curve that has levelled off, close to 0). Needs >= 2 late checkpoints."""
    steps = np.asarray(steps, float)
    late = steps >= steps[0] + (1 - late_fraction) * (steps[-1] - steps[0])
    ratio = np.array([np.ptp(row[late]) / np.ptp(row) if np.ptp(row) > 0 else 0.0 for row in matrix])
    held = int(np.sum(ratio <= tolerance))
    verdict = "TOO FEW CHECKPOINTS" if late.sum() < 2 else _label(held, len(ratio), majority)
    return SettleVerdict(verdict, held, len(ratio), len(steps), int(late.sum()), float(np.median(ratio)), ratio)


def forecast_verdict(metric: Sequence[float], eval_loss: Sequence[float], steps: Sequence[int], lag: int = 2,
                     early_fraction: float = 0.5, rho_min: float = 0.5, min_pairs: int = 4) -> ForecastVerdict:
    """Within one run, does a spectral metric at an early checkpoint forecast the eval loss `lag`
    checkpoints later (Spectral Lens's claim, there across runs)? Pairs (i, i + lag) over the
    checkpoints i in the first `early_fraction` of the step span with a known loss at both ends;
    rho = Spearman(metric_i, loss_{i+lag}); the persistence baseline is Spearman(loss_i,
    loss_{i+lag}). Over >= min_pairs pairs: FORECASTS when |rho| >= rho_min and |rho| beats the
    baseline's, NO BETTER THAN LOSS when |rho| >= rho_min but the loss itself does as well, DOES NOT
    FORECAST when |rho| < rho_min; NOT TESTABLE without enough losses."""
    metric, loss, steps = (np.asarray(a, float) for a in (metric, eval_loss, steps))
    early = steps <= steps[0] + early_fraction * (steps[-1] - steps[0])
    idx = [i for i in range(len(steps) - lag) if early[i] and np.isfinite(loss[i]) and np.isfinite(loss[i + lag])
           and np.isfinite(metric[i])]
    x, base, y = metric[idx], loss[idx], loss[[i + lag for i in idx]]
    rho, rho_base = _spearman(x, y), _spearman(base, y)
    beats = bool(np.isfinite(rho) and (not np.isfinite(rho_base) or abs(rho) > abs(rho_base)))
    if len(idx) < min_pairs or not np.isfinite(rho):
        verdict = "NOT TESTABLE"
    elif abs(rho) < rho_min:
        verdict = "DOES NOT FORECAST"
    else:
        verdict = "FORECASTS" if beats else "NO BETTER THAN LOSS"
    return ForecastVerdict(verdict, len(idx), rho, rho_base, beats, lag)


# --- notebook 08 ---------------------------------------------------------------------------------------

@dataclass
class CheckpointParameters(NotebookParameters):
    """Notebook 08's parameters (see its parameters cell)."""

    checkpoints: str = ""
    revisions: list = field(default_factory=list)
    hub_id: str = ""
    params_list: list = field(default_factory=list)
    corpus: str = "stdlib-docs"
    n_sequences: int = 64
    seq_len: int = 64
    seed: int = 0
    skip_first: int = 1
    batch_size: int = 8
    tail_window: list = field(default_factory=lambda: [8, 64])
    ffn_memory_mb: int = 0
    cache: bool = True
    rho_min: float = 0.5
    majority: float = 0.5
    settle_fraction: float = 0.34
    settle_tolerance: float = 0.25
    forecast_lag: int = 2
    early_fraction: float = 0.5
    from_step: int = 1

    AT_LEAST = {"n_sequences": 1, "seq_len": 2, "batch_size": 1, "ffn_memory_mb": 0, "forecast_lag": 1}
    INTERVALS = {name: "(0, 1]" for name in ("rho_min", "majority", "settle_fraction", "settle_tolerance",
                                              "early_fraction")}

    def check(self) -> None:
        check_skip_first(self.skip_first, self.seq_len)
        check_tail_window(self.tail_window)

    @property
    def n_tokens(self) -> int:
        return self.n_sequences * (self.seq_len - self.skip_first)


def measure(series: Series, p: CheckpointParameters) -> SeriesResult:
    return measure_series(series, corpus=p.corpus, n_sequences=p.n_sequences, seq_len=p.seq_len, seed=p.seed,
                          skip_first=p.skip_first, batch_size=p.batch_size, tail_window=tuple(p.tail_window),
                          ffn_memory_mb=p.ffn_memory_mb, cache=p.cache)


def layer_mean(trajectory: pd.DataFrame, metric: str, layer: int | None = None) -> np.ndarray:
    """(checkpoints,) mean over layers of one metric (or one layer's values)."""
    M, layers, _ = layer_step_matrix(trajectory, metric)
    return M[list(layers).index(layer)] if layer is not None else np.nanmean(M, axis=0)


def final_state(trajectory: pd.DataFrame) -> int:
    """The residual state index of the final-normed state (L + 1)."""
    return int(trajectory[trajectory.metric == "act.eff_rank"].layer.max())


TREND_CLAIMS = {"SE_post rises": ("nerve.se_post", +1), "PR_post rises": ("nerve.pr_post", +1),
                "EEE_post falls": ("nerve.eee_post", -1)}
SETTLE_CLAIMS = {"JS settles": "nerve.js"}
FORECAST_METRICS = ("act.tail_slope", "act.eff_rank")


@dataclass
class Verdicts:
    """Notebook 08's verdicts on the checkpoints at or after from_step."""

    steps: list[int]  # the checkpoints' steps the verdicts rest on
    claims: dict[str, TrendVerdict | SettleVerdict]  # NerVE's claims
    forecasts: dict[str, ForecastVerdict]  # metric -> Spectral Lens forecast
    final_state: int

    def table(self) -> pd.DataFrame:
        """verdicts.csv: claim, verdict, layers following, checkpoints, statistic."""
        rows = [{"claim": c, "verdict": v.verdict, "layers following": f"{v.layers_following}/{v.layers}",
                 "checkpoints": v.checkpoints, "statistic": v.statistic()} for c, v in self.claims.items()]
        rows += [{"claim": f"early {m} (state {self.final_state}) forecasts eval loss", "verdict": f.verdict,
                  "layers following": "-", "checkpoints": f.pairs, "statistic": f.statistic()}
                 for m, f in self.forecasts.items()]
        return pd.DataFrame(rows)


def tested_mask(steps: list[int], from_step: int) -> np.ndarray:
    """(checkpoints,) the checkpoints the verdicts rest on; an error when fewer than 2."""
    tested = np.asarray(steps) >= from_step
    if tested.sum() < 2:
        raise ValueError(f"parameter from_step={from_step} leaves {int(tested.sum())} checkpoint(s) of steps {steps}")
    return tested


def judge(result: SeriesResult, steps: list[int], p: CheckpointParameters) -> Verdicts:
    tested = tested_mask(steps, p.from_step)
    v_steps = [s for s, t in zip(steps, tested) if t]
    traj, state = result.trajectory, final_state(result.trajectory)

    def matrix(metric: str) -> np.ndarray:
        return layer_step_matrix(traj, metric)[0][:, tested]

    claims: dict = {c: trend_verdict(matrix(m), v_steps, sign, p.rho_min, p.majority)
                    for c, (m, sign) in TREND_CLAIMS.items()}
    claims.update({c: settle_verdict(matrix(m), v_steps, p.settle_fraction, p.settle_tolerance, p.majority)
                   for c, m in SETTLE_CLAIMS.items()})
    loss = result.checkpoints.eval_loss.to_numpy()[tested]
    forecasts = {m: forecast_verdict(layer_mean(traj, m, state)[tested], loss, v_steps, p.forecast_lag,
                                     p.early_fraction, p.rho_min) for m in FORECAST_METRICS}
    return Verdicts(v_steps, claims, forecasts, state)


@dataclass
class CheckpointFindings:
    """What notebook 08's findings state, as numbers; `sentences()` writes them."""

    description: str  # the series
    steps: list[int]  # every checkpoint's step
    with_loss: int  # checkpoints carrying an eval loss
    verdicts: Verdicts
    p: CheckpointParameters
    left_out_moves: dict[str, tuple[float, float]]  # metric -> layer mean at the first step, at the first tested step

    @property
    def left_out(self) -> list[int]:
        return [s for s in self.steps if s not in self.verdicts.steps]

    def _series_sentence(self) -> str:
        steps, v = self.steps, self.verdicts
        return (f"Series: {self.description}; {len(steps)} checkpoints at steps {steps[0]}-{steps[-1]} "
                f"({', '.join(map(str, steps))}); {self.with_loss} carry an eval loss; the verdicts rest on the "
                f"{len(v.steps)} at steps >= {self.p.from_step}.")

    def _left_out_sentence(self) -> list[str]:
        if not self.left_out:
            return []
        moves = ", ".join(f"{m.split('.')[1]} {a:.4g} -> {b:.4g}" for m, (a, b) in self.left_out_moves.items())
        return [f"Left out of the verdicts (from_step = {self.p.from_step}): step(s) {self.left_out}. From step "
                f"{self.steps[0]} to step {self.verdicts.steps[0]} the layer means move: {moves}; the verdicts with "
                "them included follow from trajectory.csv (set from_step = 0)."]

    def sentences(self) -> list[str]:
        v, p = self.verdicts, self.p
        out = [self._series_sentence()]
        for claim, verdict in v.claims.items():
            out.append(verdict.sentence(claim, v.steps, p.rho_min) if isinstance(verdict, TrendVerdict)
                       else verdict.sentence(claim, p.settle_fraction, p.settle_tolerance))
        out += self._left_out_sentence()
        out += [f.sentence(m, v.final_state) for m, f in v.forecasts.items()]
        out.append("Caveat: within one run every quantity moves with the step, so a correlation with the step or with "
                   "later loss shows co-movement, not cause; Spectral Lens's forecast is a claim across runs (notebook "
                   "06 section 2 tests that form). Verdicts on fewer than about 10 checkpoints are anecdotes.")
        return out


def findings(series: Series, result: SeriesResult, verdicts: Verdicts, p: CheckpointParameters) -> CheckpointFindings:
    steps = series.steps
    first_in = steps.index(verdicts.steps[0])
    moves = {m: (layer_mean(result.trajectory, m)[0], layer_mean(result.trajectory, m)[first_in])
             for m in ("nerve.se_post", "nerve.pr_post", "nerve.eee_post", "nerve.js")}
    return CheckpointFindings(series.description, steps, int(np.isfinite(result.checkpoints.eval_loss).sum()),
                              verdicts, p, moves)


# --- figures ---------------------------------------------------------------------------------------

HEATMAP_METRICS = ("nerve.se_post", "nerve.pr_post", "nerve.eee_post", "nerve.js", "act.eff_rank", "w.ffn_in.eff_rank")


def heatmaps_figure(trajectory: pd.DataFrame, path: Path):
    """Layers x steps of the NerVE metrics, activation and FFN-input weight effective rank."""
    shown = [m for m in HEATMAP_METRICS if m in set(trajectory.metric)]
    fig, axes = subplots(2, math.ceil(len(shown) / 2), width=4.2, height=3.0)
    for ax, metric in zip(axes.flat, shown):
        M, layers, cols = layer_step_matrix(trajectory, metric)
        # act.* rows are residual states 0..L+1 (embeddings .. final norm); the others are blocks 0..L-1
        heatmap(ax, M, metric, "step", "residual state" if metric.startswith("act.") else "block")
        ticks = np.linspace(0, len(cols) - 1, min(5, len(cols))).astype(int)
        ax.set_xticks(ticks, cols[ticks])
        ax.set_yticks(range(len(layers)), layers)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def curves_figure(result: SeriesResult, steps: list[int], path: Path):
    """Layer means of every metric family against the step, beside the eval loss."""
    traj, state = result.trajectory, final_state(result.trajectory)
    weights = sorted({m.split(".")[1] for m in traj.metric if m.startswith("w.")})
    mean = lambda metric, layer=None: layer_mean(traj, metric, layer)  # noqa: E731
    panels = [
        ("eval loss", {"eval loss": result.checkpoints.eval_loss.to_numpy()}),
        ("spectral entropy SE", {"pre": mean("nerve.se_pre"), "post": mean("nerve.se_post")}),
        ("participation ratio PR", {"pre": mean("nerve.pr_pre"), "post": mean("nerve.pr_post")}),
        ("EEE", {"pre": mean("nerve.eee_pre"), "post": mean("nerve.eee_post")}),
        ("JS(pre, post)", {"js": mean("nerve.js")}),
        (f"activations, state {state}", {"eff rank": mean("act.eff_rank", state)}),
        (f"tail slope, state {state}", {"slope": mean("act.tail_slope", state)}),
        ("weight eff rank", {w: mean(f"w.{w}.eff_rank") for w in weights}),
        ("weight stable rank", {w: mean(f"w.{w}.stable_rank") for w in weights}),
        ("weight alpha", {w: mean(f"w.{w}.alpha") for w in weights}),
    ]
    fig, axes = subplots(2, 5, width=3.6, height=2.9)
    for ax, (title, curves) in zip(axes.flat, panels):
        line_panel(ax, steps, curves, title, "step", "")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


# --- report ------------------------------------------------------------------------------------------

def write_report(params: Params, series: Series, result: SeriesResult, found: CheckpointFindings,
                 verdicts: pd.DataFrame, out: Path) -> Path:
    p, ck = found.p, result.checkpoints
    report = Report.for_notebook("08_checkpoint_dynamics", params)
    report.model_section(None, **{"params": params.name, "series": series.description, "checkpoints": len(series.steps),
                                    "steps": ", ".join(map(str, series.steps)),
                                    "step from": ", ".join(sorted({c.step_from for c in series.checkpoints})),
                                    "eval losses": found.with_loss, "dtype": params.dtype, "device": params.device,
                                    "tokens": f"{p.n_sequences} x {p.seq_len} of '{p.corpus}' (seed {p.seed}), first "
                                              f"{p.skip_first} position(s) skipped = {p.n_tokens}",
                                    "from cache": int(ck.from_cache.sum())})
    report.heading("Findings").bullets(found.sentences())
    report.heading("Verdicts").table(verdicts)
    report.heading("Checkpoints").table(ck, digits=5)
    report.figure(out / "heatmaps.png", "layers x steps: NerVE metrics and FFN input weight effective rank by block "
                  "(0..L-1); activation effective rank by residual state (0 = embeddings .. L+1 = after the final norm)")
    report.figure(out / "curves.png", "layer means against the step")
    return report.write(out / "report.md")
