"""Atomic output files: every file is written to a temporary name beside its target and renamed.

An interrupted or failed run never leaves a half-written file where a good one was. Temporary
files are created with mode 0666 (0777 for folders) minus the user's umask, so outputs get
ordinary permissions (0644 under umask 022). A leaf module (no torch, no pandas).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import numpy as np


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


def write_csv(df, path: str | Path, float_format: str = "%.6g") -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)
    return Path(path)


def save_npy(array, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array))
    return Path(path)
