"""Markdown reports and atomic output files.

Every file a notebook writes goes through `atomic_path`: content is written to a temporary file
in the same directory and renamed over the target, so an interrupted or failed run never leaves
a half-written file where a good one was. Temporary files are created with mode 0666 (0777 for
folders) minus the user's umask, so outputs get ordinary permissions (0644 under umask 022).

A run started by `utils.run` is staged: it sets STAGE_ENV to "<output folder><os.pathsep><staging
folder>", and `output_dir` of that notebook returns the staging folder, which `utils.run` swaps
in only when the notebook succeeds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .params import REPO_ROOT, Params

STAGE_ENV = "TRANSFORMER_SPECTRA_STAGE"


def output_dir(params: Params | str, notebook: str, output_root: str | Path = "output") -> Path:
    """<output_root>/<params name>/<notebook>/, created; a relative root resolves from the repo root
    (so a kernel started in notebooks/ writes to the same place as `make`). Inside a run staged by
    `utils.run` (STAGE_ENV set), that run's own folder is replaced by its staging folder."""
    if isinstance(params, Params):
        name = params.name
    else:  # a params name, or a path to a params file (named by its stem)
        name = Path(params).stem if str(params).endswith((".yaml", ".yml")) else str(params)
    root = Path(output_root)
    if not root.is_absolute():
        root = REPO_ROOT / root
    path = root / name / notebook
    final, sep, staging = os.environ.get(STAGE_ENV, "").partition(os.pathsep)
    if sep and Path(final).resolve() == path.resolve():
        return Path(staging)
    path.mkdir(parents=True, exist_ok=True)
    return path


def unique_path(parent: str | Path, prefix: str, suffix: str = "", directory: bool = False) -> Path:
    """Create a new empty file (or folder) with a random name in `parent`, with the permissions of
    an ordinary file (0666, folders 0777) minus the umask, unlike tempfile's private 0600/0700."""
    parent = Path(parent)
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path next to `target`; on success rename it to `target`, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_path(target.parent, f".{target.stem}.", target.suffix)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | Path):
    """Yield a new folder beside `target` (ordinary permissions); on success it replaces `target`
    (an old one is removed first), else it is deleted: `target` is complete or as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_path(target.parent, f".{target.name}.", directory=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(df: pd.DataFrame, path: str | Path, float_format: str = "%.6g") -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)
    return Path(path)


def save_npy(array: np.ndarray, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array))
    return Path(path)


def fmt(value, digits: int = 4) -> str:
    """Compact number formatting for reports."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


class Report:
    """A markdown report assembled section by section, written atomically.

    >>> r = Report("01 · Weight spectra: smollm2-135m")
    >>> r.heading("Model"); r.table({"layers": 30}); r.write(out / "report.md")
    """

    def __init__(self, title: str):
        self.lines: list[str] = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> "Report":
        self.lines += ["#" * level + " " + text, ""]
        return self

    def paragraph(self, text: str) -> "Report":
        self.lines += [text, ""]
        return self

    def bullets(self, items) -> "Report":
        self.lines += [f"- {item}" for item in items] + [""]
        return self

    def table(self, data, digits: int = 4, index: bool = False) -> "Report":
        """A markdown table from a DataFrame, or from a dict (two columns: key, value)."""
        if isinstance(data, dict):
            data = pd.DataFrame({"quantity": list(data.keys()), "value": [fmt(v, digits) for v in data.values()]})
        else:
            data = data.copy()
            for col in data.columns:
                if pd.api.types.is_float_dtype(data[col]):
                    data[col] = data[col].map(lambda v: fmt(v, digits))
        self.lines += [data.to_markdown(index=index), ""]
        return self

    def figure(self, path: str | Path, caption: str, relative_to: str | Path | None = None) -> "Report":
        path = Path(path)
        shown = path.name if relative_to is None else os.path.relpath(path, relative_to)
        self.lines += [f"![{caption}]({shown})", "", f"*{caption}*", ""]
        return self

    def model_section(self, loaded, **extra) -> "Report":
        """The opening every notebook report shares: the model's configuration table (plus the
        notebook's own settings in `extra`) and the quantization note where it applies."""
        self.heading("Model").table({**loaded.describe(), **extra})
        return self.quantization_note(loaded.params)

    def quantization_note(self, params: Params) -> "Report":
        if params.quantized:
            self.paragraph(
                f"> **Quantization.** The source weights are {params.quantization}-quantized and were "
                "dequantized for this analysis. Block-wise 4-bit quantization adds noise of roughly uniform "
                "spectrum, which lifts the smallest singular values and flattens spectral tails: effective "
                "ranks read high and power-law alphas read larger than those of the original "
                "full-precision weights."
            )
        return self

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"

    def write(self, path: str | Path) -> Path:
        return write_text(path, self.text())
