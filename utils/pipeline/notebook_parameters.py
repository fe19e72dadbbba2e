"""A notebook's parameters: its cell tagged `parameters`, and what papermill injects after it.

Every notebook calls `apply_params_file(globals(), "NN_name")` in the cell after its parameters
cell, so that each way of running it analyses the same model with the same settings:

- `papermill NB.ipynb out.ipynb -p model <name or path>` (and `make`, `utils.run`): the params
  file's `notebooks:` overrides for this notebook apply to every parameter not given explicitly.
- `papermill NB.ipynb out.ipynb -f params/<name>.yaml`: papermill injects the file's top-level keys
  (description, source, dtype, ...) as variables. They are gathered back into a params file: the
  file in params/ with that content, so that outputs go to output/<name>/, or else a copy written
  to <cache>/params/<slug>-<hash>.yaml, so that outputs go to output/<slug>-<hash>/. Its
  overrides apply as above; `-f` together with `-p model` is refused as ambiguous.
- Interactive (JupyterLab, no injected cell): overrides apply to the parameters still at the
  values the notebook's source gives them; a parameter edited by hand is kept.

Then every parameter is checked against its annotation and its documented bounds
(`utils.pipeline.parameter_rules`, the same check `utils.run` makes before a kernel starts), so
`-p layer abc` or `n_sequences = 1.5` fails here, naming the parameter, before the model loads.

Which names papermill set is read from the kernel's input history: papermill's injected cell,
which starts with "# Parameters", runs just before the cell calling `apply_params_file`.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from utils.atomic_io import write_text
from utils.models.params import PARAMS_KEYS, ParamsError, load_params, params_from_mapping
from utils.paths import NOTEBOOKS_DIR, PARAMS_DIR, cache_dir, content_hash
from utils.pipeline.parameter_rules import check_parameters

PAPERMILL_HEADER = "# Parameters"  # first line of the cell papermill injects


def _cell_source(source: str | Path) -> tuple[Path, str]:
    """(path, text) of the cell tagged `parameters` of a notebook: a name such as
    '01_weight_spectra', a jupytext percent .py or an .ipynb."""
    path = Path(source)
    if path.suffix not in (".py", ".ipynb"):
        path = NOTEBOOKS_DIR / f"{source}.py"
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        if not tagged:
            raise ParamsError(f"{path} has no cell tagged 'parameters'")
        text = tagged[0]["source"]
        return path, "".join(text) if isinstance(text, list) else text
    lines, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            if inside:
                break
            inside = "parameters" in line and "tags=" in line
        elif inside:
            lines.append(line)
    if not inside:
        raise ParamsError(f"{path} has no cell tagged 'parameters'")
    return path, "\n".join(lines)


def _cell_nodes(source: str | Path):
    """(name, annotation name or None, default) for each assignment of the parameters cell."""
    _, text = _cell_source(source)
    for node in ast.parse(text).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            annotation = node.annotation.id if isinstance(node.annotation, ast.Name) else None
            yield node.target.id, annotation, ast.literal_eval(node.value)
        elif isinstance(node, ast.Assign):
            value = ast.literal_eval(node.value)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, None, value


def parameters_cell(source: str | Path) -> dict:
    """name -> default of the annotated literals in the cell tagged `parameters` of a notebook
    (a notebook name such as '01_weight_spectra', or a path to its .py or .ipynb)."""
    return {name: default for name, _, default in _cell_nodes(source)}


def parameter_types(source: str | Path) -> dict[str, str]:
    """name -> annotation ('int', 'float', 'str', 'bool', 'list', 'dict') of the parameters cell;
    an unannotated parameter takes the type of its default."""
    return {name: annotation or type(default).__name__ for name, annotation, default in _cell_nodes(source)}


def injected_names(namespace: dict) -> set[str] | None:
    """Names assigned by papermill's injected cell when it is the cell run just before the current
    one (IPython's input history `In`); None when it is not (an interactive run)."""
    history = namespace.get("In")
    if not isinstance(history, list) or len(history) < 2:
        return None
    previous = history[-2]
    if not previous.lstrip().startswith(PAPERMILL_HEADER):
        return None
    names = set()
    for node in ast.parse(previous).body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _slug(source: dict) -> str:
    kind = source.get("kind")
    if kind == "hub":
        stem = str(source.get("id", "")).split("/")[-1]
    elif kind == "random":
        stem = f"random-{source.get('model_type', '')}"
    elif kind == "bundled":
        stem = str(source.get("package", ""))
    else:
        stem = Path(str(source.get("path") or source.get("file") or "model")).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"


def params_file_model(mapping: dict, cache: Path | None = None) -> str:
    """The `model` value for params-file content passed with papermill -f: the params name whose
    file in params/ holds exactly this content, else the path of a copy in <cache>/params/."""
    for path in sorted(PARAMS_DIR.glob("*.yaml")):
        if yaml.safe_load(path.read_text(encoding="utf-8")) == mapping:
            return path.stem
    params_from_mapping(mapping, Path("<papermill -f parameters>"))  # validate before writing
    text = yaml.safe_dump(mapping, sort_keys=True)
    name = f"{_slug(mapping['source'])}-{content_hash(mapping)}"
    if cache is None:
        cache = cache_dir()
    path = Path(cache) / "params" / f"{name}.yaml"
    if not path.exists():
        write_text(path, "# params passed to papermill with -f; written by utils.pipeline.notebook_parameters\n" + text)
    return str(path)


def apply_params_file(namespace: dict, notebook: str) -> dict:
    """Resolve `model` and apply the params file's overrides for `notebook` in a notebook's
    namespace (its globals()), as the module doc describes. Returns the overrides applied."""
    defaults = parameters_cell(notebook)
    injected = injected_names(namespace)
    if injected is None:
        explicit = {k for k, v in defaults.items() if namespace.get(k, v) != v}
    else:
        explicit = injected
    file_keys = sorted((injected or set()) & set(PARAMS_KEYS))
    if "source" in file_keys:
        if "model" in explicit:
            raise ParamsError(
                "papermill was given a params file (-f: its keys " + ", ".join(file_keys) + ") and "
                f"-p model {namespace.get('model')!r}: pass one of them, not both"
            )
        namespace["model"] = params_file_model({k: namespace[k] for k in file_keys})
        for key in file_keys:  # the file's keys are not notebook parameters: restore or remove them
            if key in defaults:
                namespace[key] = defaults[key]
            else:
                namespace.pop(key, None)
        print(f"papermill -f: analysing params {load_params(namespace['model']).name!r} "
              f"(model = {namespace['model']!r})")
    params = load_params(namespace["model"])
    overrides = params.notebook_overrides(notebook)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ParamsError(f"{params.path}: notebooks.{notebook} sets {unknown}, which are not parameters of "
                          f"{notebook}; it takes: {sorted(defaults)}")
    applied = {k: v for k, v in overrides.items() if k not in explicit and namespace.get(k) != v}
    namespace.update(applied)
    if applied:
        print(f"{params.path.name}: notebooks.{notebook} sets " + ", ".join(f"{k}={v!r}" for k, v in applied.items()))
    checked = check_parameters(notebook, {k: namespace.get(k, v) for k, v in defaults.items()},
                               parameter_types(notebook))
    namespace.update(checked)
    return applied
