"""The shared check of notebook parameters (utils.analyses.parameters) and the notebooks' parameter dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from utils.analyses.checkpoint_dynamics import CheckpointParameters
from utils.analyses.ffn_eigenspectrum import FFNParameters
from utils.analyses.parameters import check_interval
from utils.analyses.representations import RepresentationsParameters
from utils.analyses.training_dynamics import TrainingParameters
from utils.pipeline.notebook_parameters import parameters_cell


@pytest.mark.parametrize("interval,inside,outside", [("(0, 1]", [1e-9, 1.0], [0.0, 1.1]),
                                                     ("[0, 1)", [0.0, 0.999], [1.0, -0.1]),
                                                     ("(0, 1)", [0.5], [0.0, 1.0])])
def test_interval_bounds_are_open_or_closed_as_written(interval, inside, outside):
    for value in inside:
        check_interval("x", value, interval)
    for value in outside:
        with pytest.raises(ValueError, match=rf"parameter x must be in \{interval[0]}0, 1\{interval[-1]}, got"):
            check_interval("x", value, interval)


@pytest.mark.parametrize("cls,notebook", [(RepresentationsParameters, "04_representations"),
                                          (FFNParameters, "05_ffn_eigenspectrum"),
                                          (TrainingParameters, "06_training_dynamics"),
                                          (CheckpointParameters, "08_checkpoint_dynamics")])
def test_dataclass_defaults_are_the_notebooks_defaults(cls, notebook):
    cell = parameters_cell(notebook)
    p = cls.from_namespace(cell)  # the notebook's own defaults pass every check
    for name in (f.name for f in dataclasses.fields(p)):
        assert name in cell, f"{name} is not a parameter of {notebook}"
        assert getattr(p, name) == cell[name], name


def test_bad_parameters_name_the_parameter_and_the_range():
    with pytest.raises(ValueError, match="parameter seq_len must be >= 2, got 1"):
        RepresentationsParameters(seq_len=1)
    with pytest.raises(ValueError, match="parameter cka_estimator must be 'debiased' or 'linear', got 'x'"):
        RepresentationsParameters(cka_estimator="x")
    with pytest.raises(ValueError, match=r"parameter skip_first=8 must be in \[0, seq_len\)"):
        FFNParameters(seq_len=8, skip_first=8)
    with pytest.raises(ValueError, match="parameter accumulator must be 'float32' or 'float64'"):
        FFNParameters(accumulator="float16")
    with pytest.raises(ValueError, match=r"tail_window=\[4, 5\] must be \[start, stop\)"):
        CheckpointParameters(tail_window=[4, 5])
    with pytest.raises(ValueError, match=r"parameter rho_min must be in \(0, 1\], got 0.0"):
        CheckpointParameters(rho_min=0.0)
    with pytest.raises(ValueError, match="parameter norm_placement must be 'preln' or 'postln' or 'none'"):
        TrainingParameters(norm_placement="pre")
    with pytest.raises(ValueError, match="must be divisible by every batch size"):
        TrainingParameters(steps=240, batch_size=16, batch_sizes=[7])
    with pytest.raises(ValueError, match="checkpoint_every=30 must be 0 or a multiple of log_every=20"):
        TrainingParameters(checkpoint_every=30)
