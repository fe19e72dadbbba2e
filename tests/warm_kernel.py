"""Notebook kernels forked from a process that has already imported torch, transformers and the rest.

Each notebook test starts a kernel: a new Python that imports ipykernel, torch, transformers'
modelling code, pandas and matplotlib (about 4 s of a tiny-model run's 6-9 s) before the notebook
computes anything. Within `WarmKernels.active()`, the kernelspec "python3" that papermill asks
for runs this file as a launcher instead: it hands its command line, environment, working directory and standard
streams to a server (`serve`, one per test process) that imported those libraries once, and the
server forks a child that becomes the kernel (ipykernel's `launch_new_instance`, as
`python -m ipykernel_launcher` does). The notebook's cells run unchanged: their own imports bind
their own names; only the modules' loading is shared. Third-party libraries only: `utils` is imported
by the notebook itself, as in a fresh kernel.

The launcher stays the process jupyter_client manages: when it is killed (a kernel shutdown is a
SIGKILL to its process group), the server sees its connection close and kills the kernel; a signal it
receives is passed on; it exits with the kernel's exit status. Where no server answers, the launcher
becomes the ordinary kernel (`exec` of ipykernel_launcher).
The `utils.run` processes that the tests of staging and interruption start run ordinary kernels:
those tests see what users get. (Papermill's command line, started by tests/test_run.py, gets
forked kernels through the environment it inherits.)
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SOCKET_VARIABLE = "TRANSFORMER_SPECTRA_KERNEL_SERVER"
PRELOAD = ("IPython", "ipykernel.kernelapp", "numpy", "scipy.linalg",
           "scipy.optimize", "scipy.stats", "pandas", "matplotlib.pyplot", "seaborn", "torch", "transformers",
           "transformers.modeling_utils", "safetensors.torch", "tqdm.auto", "yaml")
PARAMS_DIR = Path(__file__).resolve().parent / "params"


def _modelling_modules() -> list[str]:
    """transformers' modelling module of every model_type in tests/params/ (derived from the files
    present; a type transformers does not have, such as our NanoGPT, is skipped at import)."""
    import yaml
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    types = set()
    for path in PARAMS_DIR.glob("*.yaml"):
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
            model_type = (yaml.safe_load(path.read_text()).get("source") or {}).get("model_type")
            if model_type:
                types.add(model_type_to_module_name(model_type))
    return [f"transformers.models.{name}.modeling_{name}" for name in sorted(types)]


def _send_fds(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, ancillary, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * array.array("i").itemsize))
        if not chunk:
            raise ConnectionError("the launcher closed before its request")
        data += chunk
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", raw[:len(raw) - len(raw) % array.array("i").itemsize]).tolist()
    return json.loads(data), fds


def _become_kernel(request: dict, fds: list[int]) -> None:
    """In the forked child: the launcher's streams, directory, environment and command line, then the kernel."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["ipykernel_launcher", *request["argv"]]
    sys.path[0:1] = []  # ipykernel_launcher's start: the directory of this file is not on the kernel's path
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


_SERVER_SOCKETS: set[socket.socket] = set()  # the listener and each launcher's connection: closed in a forked kernel


def _fork_kernel(conn: socket.socket) -> None:
    """Fork a kernel for one launcher (in the server's main thread); a thread then kills it when the
    launcher goes and sends the launcher its exit status."""
    request, fds = _receive_request(conn)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for sock in _SERVER_SOCKETS:
                sock.close()
            _become_kernel(request, fds)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())

    def watch_launcher():
        with contextlib.suppress(OSError):
            while conn.recv(64):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def report_exit():
        _, status = os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        _SERVER_SOCKETS.discard(conn)
        conn.close()

    threading.Thread(target=watch_launcher, daemon=True).start()
    threading.Thread(target=report_exit, daemon=True).start()


def serve(path: str) -> None:
    """Import PRELOAD, then fork a kernel per connection on the Unix socket at `path`."""
    parent = os.getppid()

    def exit_with_parent():  # the test process that started this server is gone, however it ended
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as ipykernel sets it
    import importlib

    for name in [*PRELOAD, *_modelling_modules()]:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".binding")
    listener.listen(16)
    _SERVER_SOCKETS.add(listener)
    os.rename(path + ".binding", path)  # the socket appears only once the imports are done
    while True:
        conn, _ = listener.accept()
        _SERVER_SOCKETS.add(conn)
        try:
            _fork_kernel(conn)
        except (OSError, ValueError, ConnectionError):
            _SERVER_SOCKETS.discard(conn)
            conn.close()


def launch(argv: list[str]) -> None:
    """The kernelspec's command: a kernel forked by the server, else an ordinary one."""
    path, _, server = os.environ.get(SOCKET_VARIABLE, "").partition(os.pathsep)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _wait_for_server(path, int(server or 0))
        sock.connect(path)
    except (OSError, ValueError):
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
    _send_fds(sock, json.dumps(request).encode() + b"\n", [0, 1, 2])
    reply = sock.makefile("rb")
    pid = int(reply.readline())

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(signum, forward)
    line = reply.readline()
    sys.exit(int(line) if line.strip() else 1)


def _wait_for_server(path: str, pid: int, timeout: float = 60.0) -> None:
    """Until the server's socket exists (it is still importing); OSError when the server is gone."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if not _running(pid):
            raise ProcessLookupError(f"the kernel server {pid} has exited")
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie, not yet reaped by the test
    process that started it, has exited)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: os.kill's answer
    return state not in ("Z", "X")


class WarmKernels:
    """A server with the libraries imported, and `active()`: the block within which papermill's
    "python3" kernels started by this process are forked from it."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="warm-kernel-"))
        self.path = str(self.folder / "server.sock")
        spec = self.folder / "jupyter" / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, str(Path(__file__).resolve()), "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python",
            "metadata": {"debugger": True}, "kernel_protocol_version": "5.5"}))
        self.server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", self.path],
                                       stdin=subprocess.DEVNULL)

    @contextlib.contextmanager
    def active(self):
        saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", SOCKET_VARIABLE)}
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(self.folder / "jupyter"),
                                                                   saved["JUPYTER_PATH"]]))
        os.environ[SOCKET_VARIABLE] = f"{self.path}{os.pathsep}{self.server.pid}"
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def close(self) -> None:
        """Stop the server (each kernel it forked was killed when its launcher went: papermill's
        shutdown kills the launcher; one left running exits when it sees its parent gone)."""
        self.server.kill()
        self.server.wait()
        for p in sorted(self.folder.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        self.folder.rmdir()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        launch(sys.argv[1:])
