"""The notebook tests' kernels (tests/warm_kernel.py): forked from the warm server, yet a notebook sees
what a fresh kernel shows it, and no kernel outlives its run."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest
from papermill.exceptions import PapermillExecutionError

from .conftest import TESTS_DIR

TINY = str(TESTS_DIR / "params" / "tiny-llama.yaml")

PROBE = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
model: str = "m"
output_root: str = "output"
fail: bool = False
marker: str = ""

# %%
import json, os, sys

import matplotlib

from utils import load_params, output_dir, write_text

out = output_dir(load_params(model), "99_probe", output_root)
facts = {"pid": os.getpid(), "ppid": os.getppid(), "torch_bound": "torch" in globals(),
         "torch_loaded": "torch" in sys.modules, "backend": matplotlib.get_backend(), "cwd": os.getcwd(),
         "environment": os.environ.get("PROBE_VARIABLE")}
if marker:
    open(marker, "w").write(json.dumps(facts))
if fail:
    raise RuntimeError("the probe failed on purpose")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots()
ax.plot([0, 1], [1, 0])
plt.show()
write_text(out / "facts.json", json.dumps(facts))
'''


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "99_probe.py"
    path.write_text(PROBE)
    return path


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process `pid` has exited (or is a zombie) within `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def test_the_server_preloads_the_modelling_code_of_every_test_model():
    from .warm_kernel import _modelling_modules

    modules = _modelling_modules()
    for family in ("llama", "bert", "gpt2", "gpt_neox", "qwen2", "gemma3"):  # tests/params/tiny-*.yaml
        assert f"transformers.models.{family}.modeling_{family}" in modules


def test_a_forked_kernel_runs_the_cells_as_a_fresh_one(run_notebook, warm_kernels, probe, monkeypatch):
    monkeypatch.setenv("PROBE_VARIABLE", "from the test process")
    out = run_notebook(str(probe), TINY)
    facts = json.loads((out / "facts.json").read_text())
    assert facts["ppid"] == warm_kernels.server.pid  # forked by the server: the libraries were imported there
    assert facts["torch_loaded"] and not facts["torch_bound"]  # loaded, but no name the notebook did not import
    assert "inline" in facts["backend"]  # figures are shown in the notebook, as in JupyterLab
    assert facts["environment"] == "from the test process"  # the launcher's environment, not the server's
    assert os.path.samefile(facts["cwd"], TESTS_DIR.parent / "notebooks")  # where papermill runs every notebook
    executed = json.loads((out / "99_probe.ipynb").read_text())
    assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
    assert _gone(facts["pid"])


def test_a_failing_cell_fails_the_run_and_its_kernel_is_stopped(run_notebook, probe, tmp_path):
    marker = tmp_path / "facts.json"
    with pytest.raises(PapermillExecutionError, match="the probe failed on purpose"):
        run_notebook(str(probe), TINY, fail=True, marker=str(marker))
    assert _gone(json.loads(marker.read_text())["pid"])
    launchers = [p for p in psutil.Process().children(recursive=True) if "warm_kernel.py" in " ".join(p.cmdline())
                 and "--serve" not in p.cmdline()]
    assert not launchers


def test_without_a_server_the_kernel_is_an_ordinary_one(warm_kernels, probe, tmp_path):
    """A server that has exited (here: a process that exited at once) is not waited for: the
    launcher becomes `python -m ipykernel_launcher`, whose parent is the process that started it."""
    import subprocess
    import sys

    from utils.pipeline.run import execute_notebook

    from .warm_kernel import SOCKET_VARIABLE

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    start = time.monotonic()
    with warm_kernels.active():  # restores the variable after the block
        os.environ[SOCKET_VARIABLE] = f"{tmp_path / 'no.sock'}{os.pathsep}{gone.pid}"
        out = execute_notebook(str(probe), TINY, tmp_path / "out")
    facts = json.loads((out / "facts.json").read_text())
    assert facts["ppid"] == os.getpid() and time.monotonic() - start < 30
