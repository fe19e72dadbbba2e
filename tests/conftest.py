"""Shared fixtures: the tiny random models of every architecture family, and a notebook runner."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
TINY_PARAMS = sorted((TESTS_DIR / "params").glob("tiny-*.yaml"))
# Families the adapters support, each as a tiny random model (derived from the files present).
tiny_models = [str(p) for p in TINY_PARAMS]
tiny_model_ids = [p.stem for p in TINY_PARAMS]
tiny_causal_models = [str(p) for p in TINY_PARAMS if p.stem != "tiny-bert"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run two workers on two cores: one torch thread each avoids MKL's oversubscription
    slowdown (~100x for small LAPACK calls), also when pytest is run without `make test`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def notebook_output_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-output")


@pytest.fixture(scope="session")
def warm_kernels():
    """Kernels forked from a process that imported torch, transformers and the rest once
    (tests/warm_kernel.py): ~4 s less per notebook run; the cells run as in a fresh kernel."""
    from .warm_kernel import WarmKernels

    warm = WarmKernels()
    yield warm
    warm.close()


@pytest.fixture(scope="session", autouse=True)
def start_warm_kernels_early(request):
    """The warm server starts with the session (it imports while other tests run) where any test of
    this process's collection runs a notebook."""
    if any("warm_kernels" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("warm_kernels")


@pytest.fixture(scope="session")
def execute_warm(warm_kernels):
    """utils.pipeline.run.execute_notebook (same arguments) on a kernel forked from the warm server."""
    from utils.pipeline.run import execute_notebook

    def execute(*args, **kwargs) -> Path:
        with warm_kernels.active():
            return execute_notebook(*args, **kwargs)

    return execute


@pytest.fixture(scope="session")
def run_notebook(notebook_output_root, execute_warm):
    """run_notebook(notebook, params_path, **parameters) -> output directory of that run."""

    def run(notebook: str, model: str, **parameters) -> Path:
        return execute_warm(notebook, model, notebook_output_root, parameters)

    return run
