"""Execute a notebook for one params file with papermill.

    python -m utils.run 01_weight_spectra smollm2-135m [--output-root output] [-p key=value ...]

Parameters are validated against the notebook's cell tagged `parameters` and the params file is
validated before any kernel starts. The executed notebook is written to
`<output_root>/<params name>/<notebook>/<notebook>.ipynb` via a temporary file; a failed run
keeps the previous good copy and leaves the failed one beside it as `<notebook>.failed.ipynb`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

from .models import ModelUnavailableError, check_available
from .params import REPO_ROOT, ParamsError, load_params
from .report import output_dir

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


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
    fd, tmp_in = tempfile.mkstemp(suffix=".ipynb", prefix=f".{name}.in.", dir=out)
    os.close(fd)
    fd, tmp_out = tempfile.mkstemp(suffix=".ipynb", prefix=f".{name}.out.", dir=out)
    os.close(fd)
    try:
        jupytext.write(jupytext.read(source), tmp_in)
        try:
            papermill.execute_notebook(
                tmp_in, tmp_out, parameters=values, cwd=str(NOTEBOOKS_DIR), kernel_name="python3",
                progress_bar=False, log_output=log_output,
            )
        except BaseException:
            if os.path.getsize(tmp_out):
                os.replace(tmp_out, out / f"{name}.failed.ipynb")
            raise
        os.replace(tmp_out, out / f"{name}.ipynb")
        failed = out / f"{name}.failed.ipynb"
        if failed.exists():
            failed.unlink()
    finally:
        for tmp in (tmp_in, tmp_out):
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


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
        out = execute_notebook(args.notebook, args.model, args.output_root, overrides, log_output=False)
    except (ParamsError, ModelUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.notebook} for {params.name}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
