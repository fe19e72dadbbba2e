"""What `make all` runs, decided once per make run by one Python process.

    python -m utils.targets smollm2-135m gemma3-270m qwen2.5-3b ...

prints one line of `name=other,other` words: every params name whose model is available offline,
with the params names notebook 07 compares it with (its `compare_with` parameter: the params
file's override, else the notebook's default), so that make can run 07 after those models'
notebooks. Each unavailable model gets one line on stderr saying why and how to make it available.
"""

from __future__ import annotations

import sys

from utils.models.params import ParamsError, load_params, resolve_params_path
from utils.models.sources import ModelUnavailableError, check_available
from utils.paths import NOTEBOOKS_DIR, PARAMS_DIR
from utils.pipeline.notebook_parameters import parameters_cell

COMPARISON = ("07_model_comparison", "compare_with")  # the notebook comparing models, and its parameter


def models_for_all(names: list[str]) -> list[str]:
    """The params names `make all` covers: all but synthetic checkpoints (`kind: synthetic`, random
    weights at 1B-7B shapes for scale benchmarks, about an hour each on 2 CPU cores; run one with
    `make MODEL=<name>`)."""
    return [name for name in names if load_params(name).source["kind"] != "synthetic"]


def available_models(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(names available offline, {unavailable name: reason with the fix})."""
    available, skipped = [], {}
    for name in names:
        try:
            check_available(load_params(name), offline=True)
            available.append(name)
        except ModelUnavailableError as err:
            skipped[name] = str(err)
    return available, skipped


def compared_models(name: str) -> list[str]:
    """The params names (files in params/) notebook 07 compares model `name` with, itself excluded."""
    notebook, parameter = COMPARISON
    if not (NOTEBOOKS_DIR / f"{notebook}.py").exists():
        return []
    default = parameters_cell(notebook).get(parameter, [])
    others = load_params(name).notebook_overrides(notebook).get(parameter, default)
    names = []
    for other in others:
        try:
            path = resolve_params_path(other)
        except ParamsError:
            continue  # notebook 07 itself reports an unknown name
        if path.parent == PARAMS_DIR.resolve() and path.stem != name and path.stem not in names:
            names.append(path.stem)
    return names


def main(argv: list[str] | None = None) -> int:
    names = models_for_all(list(sys.argv[1:] if argv is None else argv))
    available, skipped = available_models(names)
    for name, reason in skipped.items():
        print("skip " + (reason if reason.startswith(f"{name}:") else f"{name}: {reason}"), file=sys.stderr)
    words = [f"{name}=" + ",".join(c for c in compared_models(name) if c in available) for name in available]
    print(" ".join(words))
    return 0
