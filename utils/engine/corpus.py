"""Text that is always available offline, and token sampling from it.

Corpus specifications (the `corpus` parameter of notebooks 04-06):
- "stdlib-docs" (default): the docstrings of the Python standard library's own source files
  (modules, classes, functions), in sorted file order. Ships with every Python, needs no
  download, and is deterministic for a given Python version.
- "file:<path or glob>": the user's own UTF-8 text files, sorted by path. A file of which more
  than MAX_REPLACED_SHARE of the characters are undecodable bytes (binary, or another encoding) is
  refused; fewer undecodable bytes are replaced by U+FFFD with a warning, and the note
  (`corpus_notes()`) goes into every report written afterwards by this process.
- "wikitext-103": WikiText-103 validation through `datasets` (the Prisma seed's choice);
  needs the hub or a local HF datasets cache.
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
import os
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.cache_files import read_cache, write_cache
from utils.paths import cache_dir

DEFAULT_CORPUS = "stdlib-docs"
MAX_REPLACED_SHARE = 0.1  # a corpus file with more undecodable characters than this share is refused
_NOTES: dict[str, str] = {}  # corpus spec -> what was replaced while decoding it


class CorpusError(ValueError):
    pass


class CorpusDecodingWarning(UserWarning):
    """Bytes of a corpus file that are not UTF-8 were replaced by U+FFFD."""


def corpus_notes() -> list[str]:
    """One sentence per corpus read by this process whose decoding replaced bytes (for reports)."""
    return list(_NOTES.values())


def _read_text(path: str) -> tuple[str, int]:
    """(text, undecodable bytes replaced by U+FFFD) of one UTF-8 file; CorpusError when more than
    MAX_REPLACED_SHARE of its characters would be replacements."""
    data = Path(path).read_bytes()
    text = data.decode("utf-8", errors="replace")
    replaced = len(text) - len(data.decode("utf-8", errors="ignore"))
    if replaced > MAX_REPLACED_SHARE * max(len(text), 1):
        raise CorpusError(f"corpus file {path}: {replaced:,} of its {len(text):,} characters are not UTF-8 (a binary "
                          f"file, or another encoding): convert it to UTF-8 first (e.g. iconv -f latin1 -t utf-8)")
    return text, replaced


def _read_files(spec: str, paths: list[str]) -> str:
    """The files' text joined by blank lines; replacements warned about and noted for reports."""
    texts, damaged = [], []
    for p in paths:
        text, replaced = _read_text(p)
        texts.append(text)
        if replaced:
            damaged.append(f"{Path(p).name} ({replaced:,} of {len(text):,})")
    if damaged:
        note = (f"Corpus `{spec}`: bytes that are not UTF-8 were replaced by U+FFFD in {len(damaged)} file(s): "
                + ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
        _NOTES[spec] = note
        warnings.warn(note, CorpusDecodingWarning, stacklevel=3)
    return "\n\n".join(texts)


_STDLIB_VERSION = 1  # bump when `_extract_stdlib_docstrings` changes what it extracts


def _stdlib_docstrings(max_chars: int) -> str:
    """The stdlib-docs text, extracted once per Python installation (parsing ~600 modules takes
    5-10 s) and kept at `cache_dir()/corpus/`, keyed by the interpreter, the stdlib's path and
    `max_chars`; an unreadable entry is re-extracted."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    key = f"{_STDLIB_VERSION}|{sys.version}|{stdlib}|{max_chars}"
    path = cache_dir() / "corpus" / f"stdlib-docs-{hashlib.sha256(key.encode()).hexdigest()[:16]}.txt"
    text = read_cache(path, lambda f: f.read_bytes().decode("utf-8"), "corpus cache entry")
    if text is None:
        text = _extract_stdlib_docstrings(stdlib, max_chars)
        write_cache(path, lambda f: f.write_bytes(text.encode("utf-8")), "corpus cache entry")
    return text


def _stdlib_sources(stdlib: Path, skip: tuple[str, ...]) -> list[Path]:
    """The .py files under `stdlib` whose relative path has no part in `skip` or starting with
    "test"; skipped folders are not entered (site-packages alone can hold tens of thousands of files)."""
    found = []
    for folder, subfolders, files in os.walk(stdlib):
        subfolders[:] = [d for d in subfolders if d not in skip and not d.startswith("test")]
        found += [Path(folder) / f for f in files if f.endswith(".py") and f not in skip and not f.startswith("test")]
    return found


def _extract_stdlib_docstrings(stdlib: Path, max_chars: int) -> str:
    """Docstrings longer than 80 characters of the stdlib's modules, classes and functions (tests excluded)."""
    skip = ("test", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip", "turtledemo")
    pieces: list[str] = []
    total = 0
    for path in sorted(_stdlib_sources(stdlib, skip)):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    pieces.append(doc)
                    total += len(doc) + 2
        if total >= max_chars:
            break
    return "\n\n".join(pieces)[:max_chars]


def _wikitext(max_chars: int) -> str:
    try:
        import datasets  # type: ignore
    except ImportError as err:
        raise CorpusError("corpus 'wikitext-103' needs the `datasets` package: pip install datasets") from err
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-103-raw-v1", split="validation")
    except Exception as err:  # offline, no cache
        raise CorpusError(
            "corpus 'wikitext-103' could not be loaded (no network and no local HF datasets cache?). "
            "Use corpus 'stdlib-docs' (offline) or 'file:<path>' instead."
        ) from err
    text = "".join(ds["text"])
    return text[:max_chars]


@functools.lru_cache(maxsize=4)
def load_corpus(spec: str = DEFAULT_CORPUS, max_chars: int = 4_000_000) -> str:
    """Return up to `max_chars` characters of text for a corpus specification (see module doc)."""
    if spec == "stdlib-docs":
        text = _stdlib_docstrings(max_chars)
    elif spec == "wikitext-103":
        text = _wikitext(max_chars)
    elif spec.startswith("file:"):
        pattern = spec[len("file:"):]
        paths = sorted(glob.glob(pattern, recursive=True))
        if not paths:
            raise CorpusError(f"corpus '{spec}': no file matches {pattern!r}")
        text = _read_files(spec, paths)[:max_chars]
    else:
        raise CorpusError(f"unknown corpus {spec!r}: use 'stdlib-docs', 'wikitext-103' or 'file:<path or glob>'")
    if len(text) < 1000:
        raise CorpusError(f"corpus '{spec}' holds only {len(text)} characters; give more text")
    return text


@dataclass(frozen=True)
class TokenSample:
    """Token windows cut from a corpus: `input_ids` (n_sequences, seq_len), no padding."""

    input_ids: torch.Tensor
    corpus: str
    seed: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def fingerprint(self) -> str:
        """Content hash of the token ids: the cache key part that identifies the data."""
        return hashlib.sha256(self.input_ids.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def sample_tokens(tokenizer, corpus: str = DEFAULT_CORPUS, n_sequences: int = 32, seq_len: int = 128,
                  seed: int = 0, max_chars: int = 4_000_000) -> TokenSample:
    """Tokenize the corpus once and cut `n_sequences` windows of exactly `seq_len` tokens.

    Windows are non-overlapping and chosen with a seeded generator, so every token of every
    window is real text: no padding ever enters a statistic.
    """
    text = load_corpus(corpus, max_chars=max_chars)
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long)
    n_windows = ids.numel() // seq_len
    if n_windows < n_sequences:
        raise CorpusError(
            f"corpus '{corpus}' gives {ids.numel()} tokens = {n_windows} windows of {seq_len}; "
            f"{n_sequences} were asked for. Lower n_sequences/seq_len or give more text."
        )
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(n_windows, size=n_sequences, replace=False)) * seq_len
    windows = torch.stack([ids[s : s + seq_len] for s in starts])  # (n_sequences, seq_len)
    return TokenSample(input_ids=windows, corpus=corpus, seed=seed)
