"""Where things live: the repository, params files, notebooks, the model cache and output folders.

A leaf module (standard library and yaml only), so every floor of the package can use it.

A params file's name names its output folder `<output_root>/<name>/`. A file in the repository
(params/, tests/params/) or one of papermill -f's copies in `<cache>/params/` is named by its stem
(their stems are unique); any other file by `<stem>-<hash>`, the hash of its content, so that two
files with the same stem never write into one folder (`/x/smollm2-135m.yaml` holding another model
is not `output/smollm2-135m/`).

A run started by `utils.run` is staged: it sets STAGE_ENV to "<output folder><os.pathsep><staging
folder>", and `output_dir` of that notebook returns the staging folder, which `utils.run` swaps
in only when the notebook succeeds. A staged kernel asking for that notebook's folder of another
model or output root is refused (its outputs would land unstaged, beside the run).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"
TEST_PARAMS_DIR = REPO_ROOT / "tests" / "params"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STAGE_ENV = "TRANSFORMER_SPECTRA_STAGE"


class StagingError(RuntimeError):
    """A staged run asked to write its notebook's outputs outside its staging folder."""


def cache_dir() -> Path:
    """Root of the model cache: $TRANSFORMER_SPECTRA_CACHE or <repo>/.cache."""
    root = Path(os.environ.get("TRANSFORMER_SPECTRA_CACHE", REPO_ROOT / ".cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_hash(mapping) -> str:
    """8 hex digits identifying a params file's content (keys sorted; comments and layout ignored)."""
    return hashlib.sha256(yaml.safe_dump(mapping, sort_keys=True).encode()).hexdigest()[:8]


def params_name(path: str | Path) -> str:
    """The name of the params file at `path` (see the module doc): its stem in params/,
    tests/params/ and <cache>/params/, else `<stem>-<content hash>`."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path  # as load_params resolves a relative path
    path = path.resolve()
    named_by_stem = {PARAMS_DIR.resolve(), TEST_PARAMS_DIR.resolve()}
    cache = os.environ.get("TRANSFORMER_SPECTRA_CACHE", REPO_ROOT / ".cache")
    named_by_stem.add((Path(cache) / "params").resolve())
    if path.parent in named_by_stem or not path.is_file():
        return path.stem  # a file that is not there has no content to tell it apart
    with open(path, encoding="utf-8") as fh:
        return f"{path.stem}-{content_hash(yaml.safe_load(fh))}"


def output_dir(params, notebook: str, output_root: str | Path = "output") -> Path:
    """<output_root>/<params name>/<notebook>/, created; a relative root resolves from the repo root
    (so a kernel started in notebooks/ writes to the same place as `make`). `params` is a `Params`
    (its `.name`), a params name, or a path to a params file (named by `params_name`). Inside a run
    staged by `utils.run` (STAGE_ENV set), that run's own folder is replaced by its staging folder,
    the staged notebook's folder of another model or root raises StagingError, and other notebooks'
    folders (which a run only reads, as 07 reads 01's of every model it compares) are not created:
    a run leaves no empty folder behind."""
    name = getattr(params, "name", None)
    if name is None:
        name = params_name(params) if str(params).endswith((".yaml", ".yml")) else str(params)
    root = Path(output_root)
    if not root.is_absolute():
        root = REPO_ROOT / root
    path = root / name / notebook
    final, sep, staging = os.environ.get(STAGE_ENV, "").partition(os.pathsep)
    if sep:
        if Path(final).resolve() == path.resolve():
            return Path(staging)
        if Path(final).name == notebook:
            raise StagingError(
                f"this run of {notebook} is staged for {final}, but the notebook asked for {path}: its outputs "
                "would land outside the run. The model and the output root are utils.run's MODEL argument and "
                "--output-root, not parameters (nor a params file's `notebooks:` overrides)."
            )
        return path
    path.mkdir(parents=True, exist_ok=True)
    return path
