"""The package's floors (utils/__init__.py): a module imports only from its own floor or below,
no utils import hides inside a function (but the one named in IMPORTED_WHERE_USED), there is no import cycle, and the command-line
entry points that write markdown or launch kernels load neither torch nor transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parent.parent / "utils"
FLOORS = {"paths": 0, "atomic_io": 0, "cache_files": 0, "machine": 0, "models": 1, "metrics": 2, "engine": 3, "reporting": 4,
          "analyses": 5, "pipeline": 6, "run": 7, "index": 7, "targets": 7}
# The one utils module imported inside a function, and why: it defines a PreTrainedModel subclass,
# so importing it loads transformers' modelling stack (~2 s: torch._dynamo, torch.distributed),
# which only a path that builds a model needs (`utils.models.gguf.auto_class`). The floor and
# cycle checks still count the import.
IMPORTED_WHERE_USED = {"utils.models.nanogpt"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package but its lazy __init__."""
    found = {}
    for path in sorted(UTILS.rglob("*.py")):
        parts = path.relative_to(UTILS.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _utils_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported utils module, inside a function?) for every import of a utils module in a file."""
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute `from utils....`)"
            names = [node.module] if node.module != "utils" else [f"utils.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(n, id(node) in inside) for n in names if n == "utils" or n.startswith("utils.")]
    return found


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else 99


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """`from utils.models import synthetic` names the module utils.models.synthetic."""
    return name if name in modules else name.rsplit(".", 1)[0]


def test_every_module_has_a_floor():
    assert all(len(m.split(".")) == 1 or m.split(".")[1] in FLOORS for m in _modules()), sorted(_modules())


def test_no_import_from_a_higher_floor_and_none_inside_functions():
    modules = _modules()
    problems = []
    for module, path in modules.items():
        if module == "utils":
            continue
        for name, in_function in _utils_imports(path):
            target = _resolve(name, modules)
            if in_function and target not in IMPORTED_WHERE_USED:
                problems.append(f"{module} imports {target} inside a function")
            if _floor(target) > _floor(module):
                problems.append(f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})")
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {_resolve(n, modules) for n, _ in _utils_imports(p)} - {m, "utils"} for m, p in modules.items() if m != "utils"}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", ["utils", "utils.run", "utils.index", "utils.targets", "utils.pipeline.notebook_parameters"])
def test_entry_points_load_no_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"{module} loads {out}"


@pytest.mark.parametrize("module", ["utils.models.loading", "utils.analyses.weight_spectra", "utils.pipeline.run"])
def test_weight_paths_load_no_modelling_stack(module):
    """Notebook 01's imports stay off transformers' modelling code (PreTrainedModel pulls
    torch._dynamo and torch.distributed: ~2 s), powerlaw (pyplot) and scipy.optimize; `utils.run`
    also off jsonschema's rfc3987_syntax grammar. They load where a model is built or a fit needs them."""
    heavy = ("transformers.modeling_utils", "powerlaw", "scipy.optimize", "rfc3987_syntax", "utils.models.nanogpt")
    code = (f"import sys, {module}\n"
            f"{'import jupytext, papermill' if module == 'utils.pipeline.run' else ''}\n"
            f"print(sorted(m for m in {heavy!r} if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"{module} loads {out}"
