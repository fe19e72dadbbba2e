"""Where things live: the repository, params files, notebooks, the model cache and output folders.

A leaf module (standard library only), so every floor of the package can use it.

A run started by `utils.run` is staged: it sets STAGE_ENV to "<output folder><os.pathsep><staging
folder>", and `output_dir` of that notebook returns the staging folder, which `utils.run` swaps
in only when the notebook succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STAGE_ENV = "TRANSFORMER_SPECTRA_STAGE"


def cache_dir() -> Path:
    """Root of the model cache: $TRANSFORMER_SPECTRA_CACHE or <repo>/.cache."""
    root = Path(os.environ.get("TRANSFORMER_SPECTRA_CACHE", REPO_ROOT / ".cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def output_dir(params, notebook: str, output_root: str | Path = "output") -> Path:
    """<output_root>/<params name>/<notebook>/, created; a relative root resolves from the repo root
    (so a kernel started in notebooks/ writes to the same place as `make`). `params` is a `Params`
    (its `.name`), a params name, or a path to a params file (named by its stem). Inside a run
    staged by `utils.run` (STAGE_ENV set), that run's own folder is replaced by its staging folder,
    and other notebooks' folders (which a run only reads, as 07 reads 01's of every model it
    compares) are not created: a run leaves no empty folder behind."""
    name = getattr(params, "name", None)
    if name is None:
        name = Path(params).stem if str(params).endswith((".yaml", ".yml")) else str(params)
    root = Path(output_root)
    if not root.is_absolute():
        root = REPO_ROOT / root
    path = root / name / notebook
    final, sep, staging = os.environ.get(STAGE_ENV, "").partition(os.pathsep)
    if sep and Path(final).resolve() == path.resolve():
        return Path(staging)
    if sep:
        return path
    path.mkdir(parents=True, exist_ok=True)
    return path
