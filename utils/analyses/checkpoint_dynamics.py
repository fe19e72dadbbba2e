"""A series of checkpoints of one training run, and the spectra of each (notebook 08).

A series is named by notebook parameters (`series_from_parameters`): a glob of local checkpoint
directories (`transformers.Trainer`'s `checkpoint-<step>/`, or notebook 06's own), one hub id
with a list of revisions (Pythia's `step1000`, ...), or a list of params names. The step of each
checkpoint is `global_step` of its `trainer_state.json` when present, else the number in its
directory, revision or params name (`checkpoint-1000`, `step1000`, `global_step1000`); a
checkpoint where neither gives one is an error naming it. Its eval loss is the `eval_loss` that
the `trainer_state.json` log history records at that step (NaN when absent).

`measure_series` visits the checkpoints one at a time (load, measure, free: memory of one
model) and reuses the project's engines, no second implementation:
- weights (`utils.metrics.weight_spectra.weight_spectra`): eff_rank, stable_rank and alpha of every matrix,
  metric `w.<type>.<name>` at its layer (embedding/unembedding at layer -1);
- one streaming pass of the activation engine (`utils.engine.activations.collect_activations`, all
  FFN layers and the residual stream at once; the engine splits the FFN layers into more passes
  only when their accumulators exceed `ffn_memory_mb`) over a fixed token sample
  (`utils.engine.corpus.sample_tokens`, fixed seed, drawn with the first checkpoint's tokenizer):
  NerVE metrics (`utils.metrics.spectra.nerve_metrics`: se/pr/eee pre and post, js) of every FFN,
  metric `nerve.<name>` at FFN layer i, and the residual covariance effective rank and
  power-law tail slope (Spectral Lens), metrics `act.eff_rank`, `act.tail_slope` at residual
  state j (0 embeddings, i = output of block i-1, L+1 the final-normed state the LM head reads).

Cache: each checkpoint's rows are stored at `cache_dir()/checkpoint_series/<digest>.json`, the
digest over the checkpoint's content fingerprint (weight/config file names, sizes and mtimes of
a local directory; the resolved commit of a hub revision), its load settings, the token
sample's fingerprint and the measurement settings. Written atomically; the key is stored and
compared on load. A rerun after adding checkpoints measures only the new ones.

The `*_verdict` functions turn trajectories into the report's verdicts (NerVE's training-time
trends, JS settling, the Spectral Lens forecast) with the number of checkpoints they rest on.
"""

from __future__ import annotations

import dataclasses
import gc
import glob
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from utils.cache_files import read_cache, write_cache
from utils.engine.activations import collect_activations, default_ffn_budget
from utils.engine.corpus import TokenSample, sample_tokens
from utils.metrics.spectra import nerve_metrics, power_law_slope, spectrum_metrics
from utils.metrics.weight_spectra import weight_spectra
from utils.models.loading import LoadedModel, load_model
from utils.models.nanogpt import byte_tokenizer
from utils.models.params import Params, load_params
from utils.models.sources import gguf_path
from utils.paths import REPO_ROOT, cache_dir

CACHE_VERSION = 1
WEIGHT_METRICS = ("eff_rank", "stable_rank", "alpha")
COLUMNS = ["step", "checkpoint", "layer", "metric", "value"]
_STEP = re.compile(r"(?:checkpoint|global_step|step|iter|ckpt)[-_]?(\d+)$", re.IGNORECASE)
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "*.gguf")


class SeriesError(ValueError):
    """A checkpoint series that cannot be used; the message names the checkpoint and the fix."""


@dataclass(frozen=True)
class Checkpoint:
    name: str  # directory name, revision or params name
    step: int
    params: Params  # how to load it
    step_from: str  # "trainer_state.json" or "name"
    eval_loss: float = math.nan


@dataclass(frozen=True)
class Series:
    description: str  # for the report: where the checkpoints come from
    checkpoints: list[Checkpoint]  # sorted by step

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]


# --- steps ----------------------------------------------------------------------------------------

def step_from_name(name: str) -> int | None:
    """The step a name ends with: checkpoint-1000, step1000, global_step1000, iter_1000 -> 1000."""
    match = _STEP.search(name.rstrip("/"))
    return int(match.group(1)) if match else None


def read_trainer_state(directory: str | Path) -> dict | None:
    """trainer_state.json of a checkpoint directory, or None."""
    path = Path(directory) / "trainer_state.json"
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def eval_loss_at(state: dict | None, step: int) -> float:
    """The eval_loss the log history records at `step` (the last such entry), else NaN."""
    losses = [h["eval_loss"] for h in (state or {}).get("log_history", []) if "eval_loss" in h and h.get("step") == step]
    return float(losses[-1]) if losses else math.nan


def _checkpoint(name: str, params: Params, directory: Path | None, where: str) -> Checkpoint:
    state = read_trainer_state(directory) if directory is not None else None
    if state is not None and state.get("global_step") is not None:
        step, step_from = int(state["global_step"]), "trainer_state.json"
    else:
        step, step_from = step_from_name(name), "name"
        if step is None:
            raise SeriesError(
                f"checkpoint {where}: no step. Its trainer_state.json (global_step) is missing and its name "
                f"{name!r} does not end with one; rename it checkpoint-<step> (or step<step>) or add a "
                "trainer_state.json with global_step")
    return Checkpoint(name=name, step=step, params=params, step_from=step_from, eval_loss=eval_loss_at(state, step))


def _as_local(base: Params, path: Path) -> Params:
    return dataclasses.replace(base, name=f"{base.name}@{path.name}", source={"kind": "local", "path": str(path)},
                               notebooks={})


# --- series from notebook parameters --------------------------------------------------------------

def _resolve(pattern: str) -> str:
    return pattern if Path(pattern).is_absolute() else str(REPO_ROOT / pattern)


def local_series(pattern: str, base: Params) -> list[Checkpoint]:
    """Checkpoint directories matching a glob (relative globs resolve from the repository root)."""
    paths = sorted(Path(p) for p in glob.glob(_resolve(pattern)) if Path(p).is_dir())
    if not paths:
        raise SeriesError(f"no checkpoint directory matches {pattern!r} (resolved {_resolve(pattern)!r})")
    missing = [str(p) for p in paths if not (p / "config.json").exists()]
    if missing:
        raise SeriesError(f"{missing[0]} (matched by {pattern!r}) has no config.json: not a checkpoint "
                          "directory; narrow the glob, e.g. 'run/checkpoint-*'")
    return [_checkpoint(p.name, _as_local(base, p), p, str(p)) for p in paths]


def hub_series(hub_id: str, revisions: Sequence[str], base: Params) -> list[Checkpoint]:
    """One hub model at several revisions; steps from the revision names (step1000 -> 1000)."""
    out = []
    for rev in revisions:
        params = dataclasses.replace(base, name=f"{base.name}@{rev}", notebooks={},
                                     source={"kind": "hub", "id": hub_id, "revision": str(rev)})
        out.append(_checkpoint(str(rev), params, None, f"{hub_id}@{rev}"))
    return out


def params_series(names: Sequence[str]) -> list[Checkpoint]:
    """One checkpoint per params file (each loads with its own dtype/device): a local source may
    carry trainer_state.json; otherwise the step comes from its directory, hub revision or params name."""
    out = []
    for name in names:
        params = load_params(name)
        s = params.source
        if s["kind"] == "local":
            out.append(_checkpoint(Path(s["path"]).name, params, Path(s["path"]), f"{params.path} ({s['path']})"))
        elif s["kind"] == "hub" and s.get("revision") and step_from_name(s["revision"]) is not None:
            out.append(_checkpoint(s["revision"], params, None, f"{params.path} ({s['id']}@{s['revision']})"))
        else:
            out.append(_checkpoint(params.name, params, None, str(params.path)))
    return out


def default_06_glob(model: str, output_root: str = "output") -> str:
    """Notebook 06's base-run checkpoints for the output folder of `model`."""
    return str(Path(output_root) / model / "06_training_dynamics" / "checkpoints" / "*" / "checkpoint-*")


def series_from_parameters(base: Params, checkpoints: str = "", revisions: Sequence[str] = (), hub_id: str = "",
                           params_list: Sequence[str] = (), output_root: str = "output",
                           min_checkpoints: int = 2) -> Series:
    """The series notebook 08's parameters name (at most one of checkpoints / revisions /
    params_list; none: notebook 06's base run in `base`'s output folder), sorted by step."""
    given = [n for n, v in (("checkpoints", checkpoints), ("revisions", revisions), ("params_list", params_list)) if v]
    if len(given) > 1:
        raise SeriesError(f"parameters {given} each name a series; give only one of them")
    if revisions:
        hub_id = hub_id or (base.source.get("id") if base.source["kind"] == "hub" else "")
        if not hub_id:
            raise SeriesError(f"parameter revisions needs a hub id: set hub_id, or use a params file whose source "
                              f"is kind hub ({base.path} is kind {base.source['kind']})")
        found, description = hub_series(hub_id, revisions, base), f"hub model {hub_id}, revisions {list(revisions)}"
    elif params_list:
        found, description = params_series(params_list), f"params files {list(params_list)}"
    else:
        pattern = checkpoints or default_06_glob(base.name, output_root)
        found = local_series(pattern, base)
        parents = sorted({str(Path(c.params.source["path"]).parent) for c in found})
        if not checkpoints and len(parents) > 1:
            raise SeriesError(f"notebook 06 left checkpoints of several runs ({parents}); name one with "
                              "parameter checkpoints='<dir>/checkpoint-*'")
        origin = "notebook 06's base run" if not checkpoints else "checkpoint directories"
        description = f"{origin}: {', '.join(parents)} ({pattern})"
    steps = [c.step for c in found]
    dupes = sorted({s for s in steps if steps.count(s) > 1})
    if dupes:
        raise SeriesError(f"steps {dupes} occur more than once in the series ({description}); a series is one run")
    if len(found) < min_checkpoints:
        raise SeriesError(f"the series ({description}) holds {len(found)} checkpoint(s); at least {min_checkpoints} "
                          "are needed to see anything move")
    return Series(description, sorted(found, key=lambda c: c.step))


# --- cache ----------------------------------------------------------------------------------------

def checkpoint_fingerprint(params: Params) -> str:
    """Identity of a checkpoint's content without loading it (see module doc)."""
    s = params.source
    h = hashlib.sha256(json.dumps(s, sort_keys=True).encode())
    if s["kind"] == "local":
        directory = Path(s["path"])
        for pattern in _WEIGHT_FILES:
            for f in sorted(directory.glob(pattern)):
                st = f.stat()
                h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    elif s["kind"] == "hub":
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(s["id"], "config.json", revision=s.get("revision"))
        if isinstance(hit, str):  # .../snapshots/<commit>/config.json: the commit pins the content
            h.update(Path(hit).parent.name.encode())
    elif s["kind"] in ("gguf", "bundled"):
        gguf = gguf_path(params)
        if gguf is not None:
            st = gguf.stat()
            h.update(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


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

def measure_checkpoint(loaded: LoadedModel, tokens: TokenSample, *, skip_first: int = 1, batch_size: int = 8,
                       tail_window: Sequence[int] = (8, 64), ffn_memory_mb: int = 0,
                       progress: bool = False) -> pd.DataFrame:
    """Long table (layer, metric, value) of one loaded model: weight metrics, NerVE metrics of every
    FFN and residual activation spectra, from one pass of the activation engine (module doc).
    `ffn_memory_mb` bounds the FFN accumulators of one pass; 0: half the memory free after loading
    (`default_ffn_budget`, as notebook 05)."""
    adapter = loaded.adapter
    L = adapter.dims.L
    max_positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if max_positions and tokens.input_ids.shape[1] > max_positions:
        raise SeriesError(f"{loaded.params.name}: windows of {tokens.input_ids.shape[1]} tokens exceed the model's "
                          f"{max_positions} positions; lower seq_len")
    rows: list[tuple[int, str, float]] = []
    weights, _ = weight_spectra(adapter, progress=progress)
    for r in weights.itertuples():
        rows += [(int(r.layer), f"w.{r.weight}.{m}", float(getattr(r, m))) for m in WEIGHT_METRICS]
    stats = collect_activations(loaded, tokens, residual=True, ffn_layers=range(L), batch_size=batch_size,
                                cache=False, skip_first=skip_first,
                                ffn_memory_bytes=(ffn_memory_mb << 20) or default_ffn_budget(next(loaded.model.parameters()).device))
    for i in range(L):  # one layer's eigenvalues at a time; the accumulators are freed as we go
        pre, post = stats.ffn_pre.pop(i).eigenvalues(), stats.ffn_post.pop(i).eigenvalues()
        rows += [(i, f"nerve.{k}", v) for k, v in nerve_metrics(pre.numpy(), post.numpy()).items()]
    start, stop = tail_window
    for j, acc in enumerate(stats.residual):  # residual states 0..L+1
        eig = acc.eigenvalues().numpy()
        slope = power_law_slope(eig, start, stop) if min(stop, eig.size) - start >= 2 else math.nan
        rows += [(j, "act.eff_rank", spectrum_metrics(eig)["eff_rank"]), (j, "act.tail_slope", slope)]
    return pd.DataFrame(rows, columns=["layer", "metric", "value"])


def load_tokenizer(params: Params):
    """The tokenizer of a checkpoint without its weights (whole model only for GGUF sources)."""
    s = params.source
    if s["kind"] == "local":
        return AutoTokenizer.from_pretrained(s["path"], trust_remote_code=params.trust_remote_code)
    if s["kind"] == "hub":
        return AutoTokenizer.from_pretrained(s["id"], revision=s.get("revision"),
                                             trust_remote_code=params.trust_remote_code)
    if s["kind"] == "random":
        return byte_tokenizer()
    return load_model(params).tokenizer


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
            loaded = load_model(ck.params)
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


def layer_step_matrix(trajectory: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layers, steps) values of one metric, with its layer and step labels."""
    table = trajectory[trajectory.metric == metric].pivot_table(index="layer", columns="step", values="value",
                                                                aggfunc="first")
    return table.to_numpy(), table.index.to_numpy(), table.columns.to_numpy()


# --- verdicts ---------------------------------------------------------------------------------------

def _spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(sps.spearmanr(x[ok], y[ok]).statistic)


def _label(n_hold: int, n: int, majority: float) -> str:
    return "HOLDS" if n_hold > majority * n else "HOLDS PARTLY" if n_hold else "DOES NOT HOLD"


def trend_verdict(matrix: np.ndarray, steps: Sequence[int], direction: int, rho_min: float = 0.5,
                  majority: float = 0.5, min_checkpoints: int = 3) -> dict:
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
    return {"verdict": verdict, "layers_following": held, "layers": len(rho), "checkpoints": n,
            "rho_layer_mean": _spearman(steps, mean), "first": float(mean[0]), "last": float(mean[-1]),
            "layers_net_as_claimed": int(np.sum(net > 0)), "rho_by_layer": rho}


def settle_verdict(matrix: np.ndarray, steps: Sequence[int], late_fraction: float = 1 / 3, tolerance: float = 0.25,
                   majority: float = 0.5) -> dict:
    """Does a metric settle? A layer settles when its range over the last `late_fraction` of the
    step span is at most `tolerance` times its range over the whole series (a steady drift gives
    about late_fraction; a curve that has levelled off, close to 0). Needs >= 2 late checkpoints."""
    steps = np.asarray(steps, float)
    late = steps >= steps[0] + (1 - late_fraction) * (steps[-1] - steps[0])
    ratio = np.array([np.ptp(row[late]) / np.ptp(row) if np.ptp(row) > 0 else 0.0 for row in matrix])
    held = int(np.sum(ratio <= tolerance))
    verdict = "TOO FEW CHECKPOINTS" if late.sum() < 2 else _label(held, len(ratio), majority)
    return {"verdict": verdict, "layers_following": held, "layers": len(ratio), "checkpoints": len(steps),
            "late_checkpoints": int(late.sum()), "late_range_ratio_median": float(np.median(ratio)),
            "ratio_by_layer": ratio}


def forecast_verdict(metric: Sequence[float], eval_loss: Sequence[float], steps: Sequence[int], lag: int = 2,
                     early_fraction: float = 0.5, rho_min: float = 0.5, min_pairs: int = 4) -> dict:
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
    return {"verdict": verdict, "pairs": len(idx), "rho": rho, "rho_persistence": rho_base,
            "beats_persistence": beats, "lag": lag}
