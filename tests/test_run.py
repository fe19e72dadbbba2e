"""utils.run stages a run's outputs and swaps them in only on success; papermill's own command
line analyses the model a params file describes, given with -p model or with -f."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from papermill.exceptions import PapermillExecutionError

from utils.paths import content_hash
from utils.pipeline.notebook_parameters import params_file_model
from utils.pipeline.run import REPO_ROOT, execute_notebook

from .conftest import TESTS_DIR

TINY = TESTS_DIR / "params" / "tiny-llama.yaml"

# A notebook that writes a table, then fails when asked to, then writes its report.
STAGED = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
model: str = "m"
output_root: str = "output"
tag: str = "first"
fail: bool = False

# %%
from utils import load_params, output_dir, write_text

out = output_dir(load_params(model), "99_staged", output_root)
write_text(out / "table.csv", f"tag\\n{tag}\\n")
if fail:
    raise RuntimeError("failed halfway")
write_text(out / "report.md", f"# {tag}\\n")
'''


def _files(folder):
    return {p.name: p.read_text() for p in folder.iterdir() if p.suffix in (".csv", ".md")}


def test_a_failed_run_leaves_the_previous_outputs(tmp_path):
    notebook = tmp_path / "99_staged.py"
    notebook.write_text(STAGED)
    root = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        out = execute_notebook(notebook, TINY, root, {"tag": "first"})
        assert _files(out) == {"table.csv": "tag\nfirst\n", "report.md": "# first\n"}
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        assert stat.S_IMODE((out / "99_staged.ipynb").stat().st_mode) == 0o644
        with pytest.raises(PapermillExecutionError, match="failed halfway"):
            execute_notebook(notebook, TINY, root, {"tag": "second", "fail": True})
        assert _files(out) == {"table.csv": "tag\nfirst\n", "report.md": "# first\n"}  # not the second run's table
        failed = out / "99_staged.failed.ipynb"
        assert "failed halfway" in failed.read_text() and (out / "99_staged.ipynb").exists()
        assert [p.name for p in out.parent.iterdir() if p.is_dir()] == ["99_staged"]  # no staging folder left behind
        execute_notebook(notebook, TINY, root, {"tag": "third"})
        assert _files(out) == {"table.csv": "tag\nthird\n", "report.md": "# third\n"} and not failed.exists()
    finally:
        os.umask(previous)


def _papermill(tmp_path, warm_kernels, *args):
    """Run notebook 01 with papermill's command line, as a user would from notebooks/ (its kernel
    forked from the tests' warm server: what is tested here is how papermill's parameters arrive)."""
    ipynb = tmp_path / "01.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--output", str(ipynb),
                    str(REPO_ROOT / "notebooks" / "01_weight_spectra.py")], check=True)
    with warm_kernels.active():
        env = {**os.environ, "TRANSFORMER_SPECTRA_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-m", "papermill", str(ipynb), str(tmp_path / "executed.ipynb"), *args,
                    "-p", "output_root", str(tmp_path / "out"), "--no-progress-bar"],
                   cwd=REPO_ROOT / "notebooks", env=env, check=True, capture_output=True)
    return tmp_path / "out"


@pytest.fixture
def params_file(tmp_path):
    """tiny-llama with overrides for notebook 01: heavy_tail_alpha, which the report shows, and no bootstrap."""
    path = tmp_path / "tiny-llama-override.yaml"
    overrides = {"01_weight_spectra": {"heavy_tail_alpha": 3.5, "bootstrap": 0}}
    path.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()), "notebooks": overrides}))
    return path


def _check_report(report):
    text = report.read_text()
    assert "random init of llama" in text and "| layers (L)             | 3 " in text
    assert "alpha < 3.5" in text  # the params file's override for notebook 01 applied


def test_papermill_cli_p_model(tmp_path, params_file, warm_kernels):
    out = _papermill(tmp_path, warm_kernels, "-p", "model", str(params_file))
    name = f"tiny-llama-override-{content_hash(yaml.safe_load(params_file.read_text()))}"  # a file outside params/
    assert [p.name for p in out.iterdir() if p.is_dir()] == [name]  # beside the index files
    _check_report(out / name / "01_weight_spectra" / "report.md")


def test_papermill_cli_f_params_file(tmp_path, params_file, warm_kernels):
    out = _papermill(tmp_path, warm_kernels, "-f", str(params_file))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
        name = Path(params_file_model(yaml.safe_load(params_file.read_text()))).stem
    assert name.startswith("random-llama-") and [p.name for p in out.iterdir() if p.is_dir()] == [name]  # not smollm2-135m
    _check_report(out / name / "01_weight_spectra" / "report.md")
