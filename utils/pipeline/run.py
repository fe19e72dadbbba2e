"""Execute a notebook for one params file with papermill.

    python -m utils.run 01_weight_spectra smollm2-135m [--output-root output] [-p key=value ...]

Before any kernel starts: the params file is validated, the model's availability is checked (the
device, a local directory, a package, a hub model not cached while offline), every parameter is
checked against the notebook's parameters cell (its name, its annotated type, its documented
bounds: `utils.pipeline.parameter_rules`), and `model` and `output_root` are refused as -p
parameters or params-file overrides (they are the MODEL argument and --output-root).

A run is staged: the notebook writes into a fresh hidden folder
`.<notebook>.staging-<pid>.<start>-<random>` beside its output folder
`<output_root>/<params name>/<notebook>/` (the kernel inherits paths.STAGE_ENV, which
`output_dir` reads and enforces), and the executed notebook is saved there as `<notebook>.ipynb`.
Only when the notebook succeeds does the staging folder replace the output folder, in one
rename-exchange (`renameat2(RENAME_EXCHANGE)`; macOS `renamex_np(RENAME_SWAP)`) with SIGINT,
SIGTERM and SIGHUP held back, so at every instant the output folder holds either the previous
complete run or the new one; two runs finishing together both succeed, the later one's outputs
stay. Where the exchange is not supported, two renames under the same held-back signals, and a
dead run's half-done swap is undone by the next run. A failed run leaves the previous run's
outputs as they were, with the failed executed notebook beside them as `<notebook>.failed.ipynb`;
an interrupted run (Ctrl-C, SIGTERM from make, SIGHUP) leaves them with
`<notebook>.interrupted.ipynb` (when papermill wrote one) and exits 130 / 128 + signal after one
line; the signal handler (`_on_signal`) first kills the run's kernel, so no kernel goes on
computing after the run has ended, whichever await of nbclient's event loop the signal hit.
Staging folders of runs that died (SIGKILL, the OOM killer: their process is gone) are removed by
the next run in the same model folder. (Interactive runs in JupyterLab and papermill's
own command line are not staged: they write into the output folder directly.)

The kernel is reached over IPC sockets in a private temporary folder rather than TCP ports on
localhost, which keeps the traffic off the network (and ipykernel's warning about unencrypted TCP
off the terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from utils.atomic_io import unique_path
from utils.models.params import RUN_PARAMETERS, ParamsError, load_params
from utils.models.sources import ModelUnavailableError, check_available, check_device, hub_offline
from utils.paths import NOTEBOOKS_DIR, REPO_ROOT, STAGE_ENV
from utils.pipeline.notebook_parameters import parameter_types, parameters_cell
from utils.pipeline.parameter_rules import check_parameters
from utils.reporting.index import refresh

# What a notebook needs of its params file's model (default: its weights): 06 trains its own models
# (the params name only names its folder); 08 loads checkpoints with the params file's device.
MODEL_USE = {"06_training_dynamics": "name", "08_checkpoint_dynamics": "device"}
_RUN_FOLDER = re.compile(r"^\.(?P<notebook>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)\.(?P<start>\d+)-[0-9a-f]{8}$")
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

# jupytext and papermill validate notebooks with nbformat, which imports jsonschema, which imports
# rfc3987_syntax when installed (jupyter-events asks for it) only to check the JSON-schema string
# formats "iri" and "iri-reference"; no notebook schema uses them, and the package builds a Lark
# grammar at import: 1.6 s of every run on this machine. This process does without it (jsonschema
# then skips those two format checks).
sys.modules.setdefault("rfc3987_syntax", None)


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `completed`: its outputs had been swapped in already."""

    def __init__(self, signum: int = signal.SIGINT, completed: bool = False):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.completed = signum, completed


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
    """name -> {'default': ..., 'inferred_type_name': ...} from the cell tagged `parameters` (papermill's view)."""
    import jupytext
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        ipynb = Path(tmp) / (source.stem + ".ipynb")
        jupytext.write(jupytext.read(source), ipynb)
        return papermill.inspect_notebook(str(ipynb))


def _output_root(output_root: str | Path) -> Path:
    """The absolute output root, created; ParamsError when it is a file or cannot be made."""
    root = Path(output_root) if Path(output_root).is_absolute() else REPO_ROOT / output_root
    if root.exists() and not root.is_dir():
        raise ParamsError(f"the output root {root} is a file, not a folder; pass --output-root <folder>")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ParamsError(f"the output root {root} cannot be created: {err.strerror or err}") from None
    return root


def check_run(notebook: str | Path, model, output_root: str | Path = "output",
              parameters: dict | None = None) -> tuple[Path, object, dict, Path]:
    """Everything a run needs checked before a kernel starts (module doc): (notebook source,
    params, the parameters to inject, the output folder); ParamsError / ModelUnavailableError."""
    source = _source(notebook)
    name = source.stem
    params = load_params(model)
    fixed = sorted(set(parameters or {}) & set(RUN_PARAMETERS))
    if fixed:
        raise ParamsError(f"-p {', '.join(fixed)}: the model is the MODEL argument and the output root is "
                          "--output-root, not parameters")
    defaults, types = parameters_cell(source), parameter_types(source)
    overrides = {**params.notebook_overrides(name), **(parameters or {})}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ParamsError(
            f"parameter(s) {unknown} are not parameters of notebook {name} "
            f"(from {params.path} or the command line); it takes: {sorted(defaults)}"
        )
    checked = check_parameters(name, {**defaults, **overrides}, types)
    _check_model(params, name)
    out = _output_root(output_root) / params.name / name
    return source, params, {k: checked[k] for k in overrides}, out


def _check_model(params, notebook: str) -> None:
    use = MODEL_USE.get(notebook, "weights")
    if use == "device":
        check_device(params)
    elif use == "weights":
        check_available(params, offline=params.source["kind"] == "hub" and hub_offline())


def execute_notebook(notebook: str | Path, model, output_root: str | Path = "output",
                     parameters: dict | None = None, log_output: bool = False) -> Path:
    """Run one notebook for one params file, staged (module doc); return its output directory."""
    source, params, overrides, out = check_run(notebook, model, output_root, parameters)
    _RECEIVED.clear()
    name = source.stem
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    shown_model = str(params.path) if str(model).endswith((".yaml", ".yml")) else str(model)  # the kernel runs in notebooks/
    values = {"model": shown_model, "output_root": str(out.parent.parent), **overrides}
    staging = unique_path(out.parent, f".{name}.staging-{_process_tag(os.getpid())}-", directory=True)
    executed = staging / f"{name}.ipynb"
    try:
        _execute(source, staging, executed, out, values, log_output)
        if not any(p.name != executed.name for p in staging.iterdir()):
            raise RuntimeError(f"{name} wrote no outputs into its staging folder; the previous outputs are kept")
    except BaseException as err:
        _keep_executed(executed, out, name, _interruption(err) is not None)
        shutil.rmtree(staging, ignore_errors=True)
        refresh(out)  # the index marks the failed or interrupted run
        signum = _interruption(err)
        if signum is not None and not isinstance(err, RunInterrupted):
            raise RunInterrupted(signum) from None
        raise
    try:
        _swap_in(staging, out)
    except KeyboardInterrupt as err:  # a signal held back during the swap lands here: the run is complete
        refresh(out)
        raise RunInterrupted(getattr(err, "signum", signal.SIGINT), completed=True) from None
    refresh(out)  # report.html with every file of the run, its model's index, the overall index
    return out


def _execute(source: Path, staging: Path, executed: Path, out: Path, values: dict, log_output: bool) -> None:
    import jupytext
    import papermill
    from traitlets.config import Config

    source_ipynb = staging / f".{source.stem}.source.ipynb"
    jupytext.write(jupytext.read(source), source_ipynb)
    with _staged(out, staging), tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
        _RUNNING.append(sockets)
        # The kernel's own log (not the cells' output) stays quiet: an interrupted run's kernel logs
        # tracebacks of its closed sockets that say nothing about the notebook. Once the last cell
        # has run the kernel is stopped at once: every file a cell writes is complete (atomic
        # writes) when the cell ends, and a graceful shutdown of a kernel holding torch and
        # transformers took 2-3 s of every run.
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "ipc")},
                      "NotebookClient": {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"],
                                         "shutdown_kernel": "immediate"}})
        try:
            papermill.execute_notebook(
                str(source_ipynb), str(executed), parameters=values, cwd=str(NOTEBOOKS_DIR),
                kernel_name="python3", progress_bar=False, log_output=log_output, config=ipc,
            )
        except BaseException:
            _stop_kernels_of(sockets)
            raise
        finally:
            _RUNNING.remove(sockets)
    source_ipynb.unlink()


_RUNNING: list[str] = []  # the ipc folders of the kernels this process is running now
_RECEIVED: list[int] = []  # signals `_on_signal` took during this process's current run


def _stop_kernels_of(sockets: str) -> None:
    """Kill the kernels of this run (children of this process whose connection file names the
    run's own ipc socket folder). nbclient stops its kernel in its own cleanup, which an exception
    raised by a signal outside its coroutine (or lost inside its event loop) can skip: the kernel
    would go on computing, holding the run's stdout and stderr open. Seen twice in `make test`
    (the cause was not pinned down), so the kernel is stopped here, not left to nbclient."""
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if _connection_names(child, sockets):
                child.kill()
                child.wait(timeout=10)


def _connection_names(child, sockets: str) -> bool:
    """Whether the kernel `child`'s connection file (its `-f` argument) names the ipc folder `sockets`."""
    args = child.cmdline()
    for flag, value in zip(args, args[1:]):
        if flag == "-f" and value.endswith(".json"):
            with contextlib.suppress(OSError, ValueError):
                return sockets in Path(value).read_text(encoding="utf-8")
    return False


def _interruption(err: BaseException) -> int | None:
    """The signal number when `err` is an interruption (also a KeyboardInterrupt inside the kernel), else None."""
    if isinstance(err, RunInterrupted):
        return err.signum
    if _RECEIVED:  # the handler stopped the kernel: whatever nbclient raised then, the run was interrupted
        return _RECEIVED[-1]
    if isinstance(err, KeyboardInterrupt) or getattr(err, "ename", None) == "KeyboardInterrupt":
        return signal.SIGINT
    if isinstance(err, SystemExit) and isinstance(err.code, int) and err.code > 128:
        return err.code - 128
    return None


def _keep_executed(executed: Path, out: Path, name: str, interrupted: bool) -> None:
    """Move the executed notebook of a failed (interrupted) run beside the previous outputs; the
    marker of an earlier failed (interrupted) attempt goes: the index shows the last run's fate."""
    kind, other = ("interrupted", "failed") if interrupted else ("failed", "interrupted")
    if executed.exists() and executed.stat().st_size:
        with contextlib.suppress(OSError):
            out.mkdir(parents=True, exist_ok=True)
            os.replace(executed, out / f"{name}.{kind}.ipynb")
            (out / f"{name}.{other}.ipynb").unlink(missing_ok=True)


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


# --- the swap ----------------------------------------------------------------------------------

@contextlib.contextmanager
def signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP back (pthread_sigmask) for the block; they land after it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically (renameat2 RENAME_EXCHANGE; macOS renamex_np RENAME_SWAP);
    NotImplementedError where neither the C library nor the file system supports it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        fn, args = libc.renameat2, (-100, os.fsencode(a), -100, os.fsencode(b), 2)  # AT_FDCWD, RENAME_EXCHANGE
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    elif hasattr(libc, "renamex_np"):
        fn, args = libc.renamex_np, (os.fsencode(a), os.fsencode(b), 2)  # RENAME_SWAP
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    else:
        raise NotImplementedError("no renameat2 or renamex_np in the C library")
    if fn(*args) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NotImplementedError(f"rename-exchange is not supported here ({os.strerror(code)})")
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _swap_in(staging: Path, out: Path) -> None:
    """Replace the folder `out` by `staging` (module doc); the previous outputs are then deleted."""
    with signals_held():
        while True:
            try:
                os.rename(staging, out)  # no previous outputs (or an empty folder)
                return
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            try:
                exchange(staging, out)  # staging now holds the previous outputs
            except FileNotFoundError:
                continue  # another run moved `out` away in between: rename again
            except NotImplementedError:
                _swap_by_renames(staging, out)
                return
            break
        shutil.rmtree(staging, ignore_errors=True)


def _swap_by_renames(staging: Path, out: Path) -> None:
    """The swap without an exchange: out -> .<nb>.old-<pid>..., staging -> out (a run killed in
    between is undone by `clean_stale`)."""
    old = staging.with_name(staging.name.replace(".staging-", ".old-", 1))
    try:
        os.rename(out, old)
    except FileNotFoundError:
        pass
    try:
        os.rename(staging, out)
    except OSError:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _start_ticks(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22), "0" where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _process_tag(pid: int) -> str:
    return f"{pid}.{_start_ticks(pid)}"


def process_alive(pid: int, start: str) -> bool:
    """Whether process `pid` started at `start` (a reused pid is another process) still runs."""
    if start != "0" and Path("/proc/self/stat").exists():
        return _start_ticks(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> list[Path]:
    """Remove the staging folders of dead runs in `folder`; a dead run's half-done two-rename swap
    (`.old-` folder, output folder gone) is undone. Returns what was removed or restored."""
    done = []
    for path in sorted(Path(folder).glob(".*-*")):
        match = _RUN_FOLDER.match(path.name)
        if match is None or not path.is_dir() or process_alive(int(match["pid"]), match["start"]):
            continue
        final = path.parent / match["notebook"]
        if match["kind"] == "old" and not final.exists():
            with contextlib.suppress(OSError):
                os.rename(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


# --- the command -------------------------------------------------------------------------------

def _parse_overrides(items: list[str], types: dict[str, str]) -> dict:
    """-p KEY=VALUE items: YAML values, but the raw text for `str` parameters ("5.10" stays "5.10")."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"-p expects KEY=VALUE, got {item!r}")
        if types.get(key) == "str":
            overrides[key] = value
            continue
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ParamsError(f"-p {key}={value!r}: not a YAML value") from None
    return overrides


def _on_signal(signum, frame):
    """utils.run's SIGINT, SIGTERM and SIGHUP: stop the running kernel, then raise. Should the
    exception be lost inside nbclient's event loop, the dead kernel still ends the run, and
    `_interruption` knows it was a signal."""
    _RECEIVED.append(signum)
    for sockets in list(_RUNNING):
        _stop_kernels_of(sockets)
    raise RunInterrupted(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="notebook name (e.g. 01_weight_spectra) or path")
    parser.add_argument("model", help="params name (params/<name>.yaml) or path to a params YAML")
    parser.add_argument("--output-root", default="output")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter (value parsed as YAML; str parameters as text)")
    parser.add_argument("--skip-unavailable", action="store_true",
                        help="print one line and exit 0 when the model is not available offline")
    args = parser.parse_args(argv)
    # make sends SIGTERM when interrupted, a closed terminal SIGHUP: exit through Python, one line.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a caller's ignored SIGINT (`cmd &` in a script) stays so
            signal.signal(signum, _on_signal)
    if hasattr(signal, "pthread_sigmask"):  # held back only during the swap (_held_signals), never inherited
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
    # Our one line says how a run ended; papermill's and asyncio's logs of a kernel stopped under
    # them ("Kernel died ...", "Task exception was never retrieved") would only repeat it.
    for logger in ("papermill", "asyncio"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    start, label = time.perf_counter(), f"{Path(args.notebook).stem:<24} {Path(args.model).stem:<16}"
    try:
        return _main(args, start)
    except (ParamsError, ModelUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        if getattr(err, "completed", False):
            print(f"{label} interrupted by {signal.Signals(signum).name} after its outputs were swapped in: "
                  "the run is complete", file=sys.stderr)
        else:
            print(f"{label} interrupted by {signal.Signals(signum).name} after {time.perf_counter() - start:.0f} s: "
                  "previous outputs kept", file=sys.stderr)
        return 128 + signum


def _main(args, start: float) -> int:
    params = load_params(args.model)
    if args.skip_unavailable:
        try:
            check_available(params, offline=True)
        except ModelUnavailableError as err:
            print(f"skip {args.notebook} for {params.name}: {err}")
            return 0
    name = _source(args.notebook).stem
    overrides = _parse_overrides(args.parameter, parameter_types(_source(args.notebook)))
    try:
        out = execute_notebook(args.notebook, args.model, args.output_root, overrides, log_output=False)
    except (ParamsError, ModelUnavailableError, KeyboardInterrupt):
        raise
    except Exception as err:  # the notebook failed: one line, not papermill's whole traceback
        failed = _output_root(args.output_root) / params.name / name / f"{name}.failed.ipynb"
        reason = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else f"{type(err).__name__}: {err}"
        print(f"{name:<24} {params.name:<16} FAILED after {time.perf_counter() - start:.0f} s: "
              f"{reason}\n  previous outputs kept; see {_shown(failed)}", file=sys.stderr)
        return 1
    print(f"{name:<24} {params.name:<16} {time.perf_counter() - start:6.1f} s  {_shown(out)}")
    return 0


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    return str(path)
