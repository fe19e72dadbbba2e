"""Execute a notebook for one params file with papermill.

    python -m utils.run 01_weight_spectra smollm2-135m [--output-root output] [-p key=value ...]

Parameters are validated against the notebook's cell tagged `parameters` and the params file is
validated before any kernel starts.

A run is staged: the notebook writes into a fresh hidden folder beside its output folder
`<output_root>/<params name>/<notebook>/` (the kernel inherits report.STAGE_ENV, which
`output_dir` reads), and the executed notebook is saved there as `<notebook>.ipynb`. Only when the
notebook succeeds does the staging folder replace the output folder, so a failed run leaves the
previous run's outputs as they were, with the failed executed notebook beside them as
`<notebook>.failed.ipynb`. (Interactive runs in JupyterLab write to the output folder directly.)

The kernel is reached over IPC sockets in a private temporary folder rather than TCP ports on
localhost, which keeps the traffic off the network (and ipykernel's warning about unencrypted TCP
off the terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from utils.atomic_io import unique_path
from utils.models.params import ParamsError, load_params
from utils.models.sources import ModelUnavailableError, check_available
from utils.paths import NOTEBOOKS_DIR, REPO_ROOT, STAGE_ENV, output_dir
from utils.reporting.index import refresh


def notebook_names() -> list[str]:
    """The notebooks present: notebooks/NN_name.py, in order."""
    return sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))


def _source(notebook: str | Path) -> Path:
    path = Path(notebook)
    if path.suffix in (".py", ".ipynb") and path.exists():
        return path
    path = NOTEBOOKS_DIR / f"{notebook}.py"
    if not path.exists():
        raise ParamsError(f"no notebook {path}; notebooks: {', '.join(notebook_names())}")
    return path


def notebook_parameters(source: Path) -> dict:
    """name -> {'default': ..., 'inferred_type_name': ...} from the cell tagged `parameters`."""
    import jupytext
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        ipynb = Path(tmp) / (source.stem + ".ipynb")
        jupytext.write(jupytext.read(source), ipynb)
        return papermill.inspect_notebook(str(ipynb))


def execute_notebook(notebook: str | Path, model: str | Path, output_root: str | Path = "output",
                     parameters: dict | None = None, log_output: bool = False) -> Path:
    """Run one notebook for one params file; return its output directory."""
    import jupytext
    import papermill

    source = _source(notebook)
    name = source.stem
    params = load_params(model)
    declared = notebook_parameters(source)
    overrides = {**params.notebook_overrides(name), **(parameters or {})}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ParamsError(
            f"parameter(s) {unknown} are not parameters of notebook {name} "
            f"(from {params.path} or the command line); it takes: {sorted(declared)}"
        )
    out = output_dir(params, name, output_root)
    root = Path(output_root) if Path(output_root).is_absolute() else REPO_ROOT / output_root
    values = {"model": str(model), "output_root": str(root), **overrides}
    staging = unique_path(out.parent, f".{name}.staging-", directory=True)
    executed = staging / f"{name}.ipynb"
    try:
        source_ipynb = staging / f".{name}.source.ipynb"
        jupytext.write(jupytext.read(source), source_ipynb)
        with _staged(out, staging), tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
            from traitlets.config import Config

            ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "ipc")}})
            papermill.execute_notebook(
                str(source_ipynb), str(executed), parameters=values, cwd=str(NOTEBOOKS_DIR),
                kernel_name="python3", progress_bar=False, log_output=log_output, config=ipc,
            )
        source_ipynb.unlink()
    except BaseException:
        if executed.exists() and executed.stat().st_size:
            os.replace(executed, out / f"{name}.failed.ipynb")
        shutil.rmtree(staging, ignore_errors=True)
        refresh(out)  # the index marks the failed run
        raise
    _swap_in(staging, out)
    refresh(out)  # report.html with every file of the run, its model's index, the overall index
    return out


@contextlib.contextmanager
def _staged(out: Path, staging: Path):
    """Point the kernel's `output_dir` for `out` at `staging` (the kernel inherits the environment)."""
    previous = os.environ.get(STAGE_ENV)
    os.environ[STAGE_ENV] = f"{out}{os.pathsep}{staging}"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[STAGE_ENV]
        else:
            os.environ[STAGE_ENV] = previous


def _swap_in(staging: Path, out: Path) -> None:
    """Replace the folder `out` by `staging` (two renames; the old folder is then deleted)."""
    old = out.parent / f".{out.name}.old-{staging.name.rsplit('-', 1)[-1]}"
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _parse_value(text: str):
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="notebook name (e.g. 01_weight_spectra) or path")
    parser.add_argument("model", help="params name (params/<name>.yaml) or path to a params YAML")
    parser.add_argument("--output-root", default="output")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter (value parsed as YAML)")
    parser.add_argument("--skip-unavailable", action="store_true",
                        help="print one line and exit 0 when the model is not available offline")
    args = parser.parse_args(argv)
    # make sends SIGTERM when interrupted: exit through Python so the staging folder is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        params = load_params(args.model)
        if args.skip_unavailable:
            try:
                check_available(params, offline=True)
            except ModelUnavailableError as err:
                print(f"skip {args.notebook} for {params.name}: {err}")
                return 0
        overrides = {}
        for item in args.parameter:
            key, sep, value = item.partition("=")
            if not sep:
                raise ParamsError(f"-p expects KEY=VALUE, got {item!r}")
            overrides[key] = _parse_value(value)
        start = time.perf_counter()
        try:
            out = execute_notebook(args.notebook, args.model, args.output_root, overrides, log_output=False)
        except (ParamsError, ModelUnavailableError):
            raise
        except Exception as err:  # the notebook failed: one line, not papermill's whole traceback
            name = _source(args.notebook).stem
            failed = output_dir(params, name, args.output_root) / f"{name}.failed.ipynb"
            reason = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else f"{type(err).__name__}: {err}"
            print(f"{name:<24} {params.name:<16} FAILED after {time.perf_counter() - start:.0f} s: "
                  f"{reason}\n  previous outputs kept; see {_shown(failed)}", file=sys.stderr)
            return 1
    except (ParamsError, ModelUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{_source(args.notebook).stem:<24} {params.name:<16} {time.perf_counter() - start:6.1f} s  {_shown(out)}")
    return 0


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    return str(path)
