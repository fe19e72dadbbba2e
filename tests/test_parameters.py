"""A notebook's parameters: the parameters cell as papermill reads it, and `apply_params_file`
resolving the model and the params file's overrides for every way of running a notebook."""

from __future__ import annotations

import ast

import pytest
import yaml
from papermill.translators import PythonTranslator

from utils.models.params import ParamsError, load_params
from utils.paths import NOTEBOOKS_DIR, PARAMS_DIR
from utils.pipeline.notebook_parameters import apply_params_file, injected_names, parameter_types, parameters_cell, params_file_model
from utils.pipeline.parameter_rules import NOTEBOOK_RULES, RULES, check_parameters
from utils.pipeline.run import notebook_names, notebook_parameters

from .conftest import TESTS_DIR

NB = "01_weight_spectra"
TINY = yaml.safe_load((TESTS_DIR / "params" / "tiny-llama.yaml").read_text())


@pytest.mark.parametrize("notebook", notebook_names())
def test_parameters_cell_agrees_with_papermill(notebook):
    ours = parameters_cell(notebook)
    theirs = notebook_parameters(NOTEBOOKS_DIR / f"{notebook}.py")
    assert list(ours) == list(theirs)
    assert ours == {name: ast.literal_eval(p["default"]) for name, p in theirs.items()}


def _namespace(injected: dict | None, **edits) -> dict:
    """A notebook's globals after its parameters cell, papermill's injected cell (if any) and the
    cell calling apply_params_file, as IPython records them in `In`."""
    namespace = {**parameters_cell(NB), **edits}
    history = ["", "model: str = ...  # the parameters cell"]
    if injected is not None:
        namespace.update(injected)
        history.append(PythonTranslator.codify(injected))
    namespace["In"] = history + [f'apply_params_file(globals(), "{NB}")']
    return namespace


@pytest.fixture
def params_file(tmp_path):
    """A tiny model's params file with an override for notebook 01."""
    path = tmp_path / "tiny-with-overrides.yaml"
    path.write_text(yaml.safe_dump({**TINY, "notebooks": {NB: {"heavy_tail_alpha": 3.5}}}))
    return path


def test_injected_names_come_from_papermills_cell():
    assert injected_names(_namespace({"model": "x", "heavy_tail_alpha": 1.5})) == {"model", "heavy_tail_alpha"}
    assert injected_names(_namespace(None)) is None
    assert injected_names({}) is None


def test_papermill_p_model_applies_the_files_overrides(params_file):
    namespace = _namespace({"model": str(params_file)})
    assert apply_params_file(namespace, NB) == {"heavy_tail_alpha": 3.5}
    assert namespace["heavy_tail_alpha"] == 3.5 and namespace["model"] == str(params_file)


def test_an_explicit_parameter_beats_the_files_override(params_file):
    namespace = _namespace({"model": str(params_file), "heavy_tail_alpha": 2.0})  # 2.0 is also the default
    assert apply_params_file(namespace, NB) == {}
    assert namespace["heavy_tail_alpha"] == 2.0


def test_interactive_runs_keep_parameters_edited_by_hand(params_file):
    untouched = _namespace(None, model=str(params_file))
    apply_params_file(untouched, NB)
    assert untouched["heavy_tail_alpha"] == 3.5
    edited = _namespace(None, model=str(params_file), heavy_tail_alpha=1.25)
    apply_params_file(edited, NB)
    assert edited["heavy_tail_alpha"] == 1.25


def test_papermill_f_with_a_file_outside_params(params_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    content = yaml.safe_load(params_file.read_text())
    namespace = _namespace(content)
    assert apply_params_file(namespace, NB) == {"heavy_tail_alpha": 3.5}
    assert not set(content) & set(namespace)  # the file's keys are gone from the notebook's namespace
    params = load_params(namespace["model"])
    assert params.name.startswith("random-llama-") and params.path.parent == tmp_path / "cache" / "params"
    assert yaml.safe_load(params.path.read_text()) == content
    assert params_file_model(content) == namespace["model"]  # the same content, the same name


@pytest.mark.parametrize("name", ["smollm2-135m", "minilm-l6"])
def test_papermill_f_with_a_file_in_params_uses_its_name(name):
    content = yaml.safe_load((PARAMS_DIR / f"{name}.yaml").read_text())
    namespace = _namespace(content)
    apply_params_file(namespace, NB)
    assert namespace["model"] == name


def test_papermill_f_and_p_model_together_are_refused():
    with pytest.raises(ParamsError, match="pass one of them, not both"):
        apply_params_file(_namespace({**TINY, "model": "smollm2-135m"}), NB)


def test_an_override_that_is_not_a_parameter(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "notebooks": {NB: {"heavy_tail": 3}}}))
    with pytest.raises(ParamsError, match=r"bad.yaml: notebooks.01_weight_spectra sets \['heavy_tail'\]"):
        apply_params_file(_namespace({"model": str(path)}), NB)


# --- types and bounds (issue 18, item 8): the same check in utils.run and in the notebook -------------

@pytest.mark.parametrize("notebook", notebook_names())
def test_every_rule_names_a_parameter_and_every_default_keeps_its_rules(notebook):
    defaults, types = parameters_cell(notebook), parameter_types(notebook)
    assert set(types) == set(defaults) and set(NOTEBOOK_RULES.get(notebook, {})) <= set(defaults)
    assert check_parameters(notebook, defaults, types) == defaults


def test_rules_name_only_notebooks_that_exist():
    assert set(NOTEBOOK_RULES) <= set(notebook_names())
    assert all(any(name in parameters_cell(nb) for nb in notebook_names()) for name in RULES)


@pytest.mark.parametrize("injected, match", [
    ({"heavy_tail_alpha": "abc"}, "heavy_tail_alpha of 01_weight_spectra must be float, got 'abc'"),
    ({"heavy_tail_alpha": True}, "must be float, got True"),
    ({"heavy_tail_alpha": -1.0}, "must be above 0, got -1.0"),
])
def test_apply_params_file_checks_papermills_values(injected, match):
    with pytest.raises(ParamsError, match=match):
        apply_params_file(_namespace({"model": str(TESTS_DIR / "params" / "tiny-llama.yaml"), **injected}), NB)


def test_apply_params_file_checks_values_edited_by_hand():
    namespace = _namespace(None, model=str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    namespace["In"][-2] = "heavy_tail_alpha = 'abc'"  # JupyterLab: the parameters cell edited
    namespace["heavy_tail_alpha"] = "abc"
    with pytest.raises(ParamsError, match="must be float"):
        apply_params_file(namespace, NB)


def test_apply_params_file_coerces_what_a_command_line_cannot_tell_apart():
    namespace = _namespace({"model": str(TESTS_DIR / "params" / "tiny-llama.yaml"), "heavy_tail_alpha": 3})
    apply_params_file(namespace, NB)
    assert namespace["heavy_tail_alpha"] == 3.0 and isinstance(namespace["heavy_tail_alpha"], float)
    types = parameter_types("03_subspace_geometry")
    assert check_parameters("03_subspace_geometry", {"reference_layer": 5}, types) == {"reference_layer": "5"}
    with pytest.raises(ParamsError, match="reference_layer of 03_subspace_geometry must be matching"):
        check_parameters("03_subspace_geometry", {"reference_layer": "middle"}, types)


@pytest.mark.parametrize("notebook, values, match", [
    ("04_representations", {"n_sequences": 1.5}, "n_sequences of 04_representations must be int, got 1.5"),
    ("04_representations", {"n_sequences": True}, "must be int, got True"),
    ("04_representations", {"cka_estimator": "biased"}, "one of 'debiased', 'linear'"),
    ("04_representations", {"seq_len": 8, "skip_first": 8}, "skip_first of 04_representations must be below seq_len=8"),
    ("05_ffn_eigenspectrum", {"spectra_layers": [0, "last"]}, "a list of int"),
    ("05_ffn_eigenspectrum", {"spectra_layers": "0,1"}, "must be list, got '0,1'.*-y"),
    ("06_training_dynamics", {"batch_sizes": [8, 0]}, "each at least 1"),
    ("08_checkpoint_dynamics", {"tail_window": [8, 9]}, "stop - start >= 2"),
    ("08_checkpoint_dynamics", {"majority": 0.0}, r"must be in \(0, 1\], got 0.0"),
])
def test_bad_values_are_named_with_their_bounds(notebook, values, match):
    with pytest.raises(ParamsError, match=match):
        check_parameters(notebook, {**parameters_cell(notebook), **values}, parameter_types(notebook))


def test_parameters_cell_reads_an_ipynb_as_its_py(tmp_path):
    import jupytext

    ipynb = tmp_path / f"{NB}.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS_DIR / f"{NB}.py"), ipynb)
    assert parameters_cell(ipynb) == parameters_cell(NB) and parameter_types(ipynb) == parameter_types(NB)


@pytest.mark.parametrize("name, value", [("fit", "tpl"), ("fix_fingers", "xmin_max"), ("level", 1.0)])
def test_notebook_01_weightwatcher_options_are_checked_before_a_kernel(name, value):
    types = parameter_types("01_weight_spectra")
    with pytest.raises(ParamsError, match=f"parameter {name} of 01_weight_spectra must be"):
        check_parameters("01_weight_spectra", {name: value}, types)
    assert check_parameters("01_weight_spectra", {"fit": "TPL", "fix_fingers": "xmin_peak"}, types)["fit"] == "TPL"
