"""What `make all` runs: models available offline, decided once; notebook 07 after the notebooks
it reads of every model it compares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

import utils.models.params
import utils.pipeline.targets
from utils.paths import REPO_ROOT
from utils.pipeline.notebook_parameters import parameters_cell
from utils.pipeline.run import notebook_names
from utils.pipeline.targets import available_models, compared_models, main, models_for_all

from .conftest import TESTS_DIR


@pytest.fixture
def params_dir(tmp_path, monkeypatch):
    """A params folder of three models: two random (available) and one hub model not cached."""
    tiny = yaml.safe_load((TESTS_DIR / "params" / "tiny-llama.yaml").read_text())
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(
        {**tiny, "notebooks": {"07_model_comparison": {"compare_with": ["a", "b", "hub", "no-such-model", "a"]}}}))
    (tmp_path / "hub.yaml").write_text("source: {kind: hub, id: nobody/not-a-model}\n")
    monkeypatch.setattr(utils.models.params, "PARAMS_DIR", tmp_path)
    monkeypatch.setattr(utils.pipeline.targets, "PARAMS_DIR", tmp_path)
    return tmp_path


def test_available_models(params_dir):
    available, skipped = available_models(["a", "b", "hub"])
    assert available == ["a", "b"] and list(skipped) == ["hub"] and "not in the local HF cache" in skipped["hub"]


def test_compared_models_from_the_override_or_the_notebook_default(params_dir):
    assert compared_models("b") == ["a", "hub"]  # itself, unknown names and repeats left out
    default = parameters_cell("07_model_comparison")["compare_with"]
    assert compared_models("a") == [n for n in default if (params_dir / f"{n}.yaml").exists()] == []


def test_main_prints_one_line_for_make(params_dir, capsys):
    assert main(["a", "b", "hub"]) == 0
    out, err = capsys.readouterr()
    assert out == "a= b=a\n"  # hub is unavailable, so b's 07 does not wait for it
    assert err.count("\n") == 1 and err.startswith("skip hub: hub model nobody/not-a-model is not in the local HF cache")


def _dry_run(tmp_path, goal):
    # a fresh make, also when the tests run under `make test` (no inherited MAKEFLAGS/MAKELEVEL,
    # whose sub-make would print "Entering/Leaving directory" lines)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "--no-print-directory", "-n", goal, f"OUTPUT={tmp_path}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True, env=env)
    runs = [tuple(m.groups()) for m in re.finditer(r"utils\.run notebooks/(\S+)\.ipynb (\S+) ", done.stdout)]
    return runs, done


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_all_runs_07_after_the_models_it_compares(tmp_path):
    runs, done = _dry_run(tmp_path, "all")
    available, skipped = available_models(models_for_all(utils.models.params.available_params()))
    assert done.stderr.count("skip ") == len(skipped)  # one line per unavailable model, once
    assert {model for _, model in runs} == set(available)
    lines = done.stdout.rstrip().splitlines()
    index = [i for i, line in enumerate(lines) if line.endswith(f"utils.index {tmp_path}")]
    assert index and index[0] > max(i for i, line in enumerate(lines) if "utils.run " in line)  # the index comes last
    for model in available:
        position = runs.index(("07_model_comparison", model))
        for other in compared_models(model):
            for notebook in ("01_weight_spectra", "04_representations", "05_ffn_eigenspectrum"):
                assert runs.index((notebook, other)) < position, (model, other, notebook)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_runs_one_model_without_deciding_availability(tmp_path):
    runs, done = _dry_run(tmp_path, "run")
    assert "skip " not in done.stderr
    assert sorted(runs) == [(notebook, "smollm2-135m") for notebook in notebook_names()]
