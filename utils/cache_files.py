"""Cache entries that never stop a run: an unreadable entry is a miss, a failed write a warning.

    value = read_cache(path, lambda p: torch.load(p, weights_only=True), "activation cache")
    write_cache(path, lambda tmp: torch.save(state, tmp), "activation cache")

`read_cache` returns None when the entry is absent, and also when it cannot be read (truncated,
corrupt, another format: any exception of `load`), printing one line that says so; the caller then
recomputes and its write replaces the entry. `write_cache` writes through `atomic_io.atomic_path`
(a temporary file renamed), so a reader never sees half an entry, and turns any failure (disk
full, read-only cache) into a CacheWriteWarning: the run goes on without caching. A leaf module
(the loaders are the caller's: no torch here).
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, TypeVar

from utils.atomic_io import atomic_path
from utils.paths import cache_dir

T = TypeVar("T")


class CacheWriteWarning(UserWarning):
    """A cache entry could not be written; the run continues without it."""


def read_cache(path: str | Path, load: Callable[[Path], T], what: str = "cache entry") -> T | None:
    """`load(path)`, or None when the entry is absent or unreadable (then one line on stderr)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(path)
    except Exception as err:  # any failure to read an entry is a miss: recompute and overwrite it
        print(f"{what} {path} is unreadable ({type(err).__name__}); recomputing it and overwriting the entry",
              file=sys.stderr)
        return None


def write_cache(path: str | Path, save: Callable[[Path], object], what: str = "cache entry") -> bool:
    """`save(tmp)` to a temporary file renamed to `path`; False (and a CacheWriteWarning) on failure."""
    try:
        with atomic_path(path) as tmp:
            save(tmp)
        return True
    except Exception as err:  # disk full, permissions: the results stand, only the cache is missing
        warnings.warn(f"{what} {path} could not be written ({type(err).__name__}: {err}); continuing without it",
                      CacheWriteWarning, stacklevel=2)
        return False


def keyed_entry(folder: str, key: dict, suffix: str = ".pt") -> Path:
    """`cache_dir()/<folder>/<model>-<digest><suffix>`: the entry of a JSON-able key (the digest over
    the key sorted; the key itself is stored in the entry and compared on reading)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir() / folder / f"{key['model']}-{digest}{suffix}"
