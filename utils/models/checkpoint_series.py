"""A series of checkpoints of one training run, found from notebook 08's parameters, without loading them.

A series is a glob of local checkpoint directories (`transformers.Trainer`'s `checkpoint-<step>/`,
or notebook 06's own), one hub id with a list of revisions (Pythia's `step1000`, ...), or a list
of params names. The step of each checkpoint is `global_step` of its `trainer_state.json` when
present, else the number in its directory, revision or params name (`checkpoint-1000`,
`step1000`, `global_step1000`); a checkpoint where neither gives one is an error naming it. Its
eval loss is the `eval_loss` that the `trainer_state.json` log history records at that step (NaN
when absent). `checkpoint_fingerprint` identifies a checkpoint's content for caches (file names,
sizes and mtimes of a local directory; the resolved commit of a hub revision).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from huggingface_hub import try_to_load_from_cache

from utils.models.params import Params, load_params
from utils.models.sources import gguf_path
from utils.paths import REPO_ROOT

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


# --- content fingerprint -------------------------------------------------------------------------

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
        hit = try_to_load_from_cache(s["id"], "config.json", revision=s.get("revision"))
        if isinstance(hit, str):  # .../snapshots/<commit>/config.json: the commit pins the content
            h.update(Path(hit).parent.name.encode())
    elif s["kind"] in ("gguf", "bundled"):
        gguf = gguf_path(params)
        if gguf is not None:
            st = gguf.stat()
            h.update(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]
