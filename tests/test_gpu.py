"""The CUDA path: notebooks 01-05 with `device: cuda` agree with the CPU run of the same model.

Skipped where no GPU is visible (CI and the reference machine have none); run on a GPU machine
with `pytest tests/test_gpu.py`. The CPU suite covers the same code with `device: cpu`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from utils.metrics.weight_spectra import weight_spectra
from utils.models.loading import StreamedWeights, load_model, load_weights

from .conftest import TESTS_DIR

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = TESTS_DIR / "params" / "tiny-llama.yaml"
FAST = {
    "04_representations": dict(n_sequences=6, seq_len=24, batch_size=4, keep_samples=100, lens_tokens=0, cache=False,
                               skip_first=1),
    "05_ffn_eigenspectrum": dict(n_sequences=8, seq_len=64, batch_size=4, cache=False, skip_first=1),
}
TABLES = {"01_weight_spectra": "weight_spectra.csv", "02_attention_kernels": "attn_kernel_heads.csv",
          "03_subspace_geometry": "ffn_attn_alignment.csv", "04_representations": "activation_spectra.csv",
          "05_ffn_eigenspectrum": "ffn_spectra.csv"}


def _with_device(source: Path, device: str, directory: Path) -> Path:
    spec = yaml.safe_load(source.read_text())
    spec["device"] = device
    path = directory / f"{source.stem}-{device}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_streamed_weights_on_cuda_equal_cpu(tmp_path):
    loaded = load_model(str(TINY))
    loaded.model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    spec = {"source": {"kind": "local", "path": str(tmp_path / "ckpt")}, "task": "causal_lm", "device": "cuda"}
    (tmp_path / "cuda.yaml").write_text(yaml.safe_dump(spec))
    streamed = load_weights(str(tmp_path / "cuda.yaml"))
    assert isinstance(streamed, StreamedWeights) and streamed.adapter.device.type == "cuda"
    assert streamed.adapter.embedding().is_cuda
    pd.testing.assert_frame_equal(weight_spectra(loaded.adapter, progress=False)[0],
                                  weight_spectra(streamed.adapter, progress=False)[0], rtol=1e-6)


@pytest.mark.parametrize("notebook", ["01_weight_spectra", "02_attention_kernels", "03_subspace_geometry",
                                      "04_representations", "05_ffn_eigenspectrum"])
def test_notebook_on_cuda_equals_cpu(run_notebook, tmp_path, notebook):
    outputs = {device: run_notebook(notebook, str(_with_device(TINY, device, tmp_path)), **FAST.get(notebook, {}))
               for device in ("cpu", "cuda")}
    cpu, gpu = (pd.read_csv(outputs[d] / TABLES[notebook]) for d in ("cpu", "cuda"))
    numeric = cpu.select_dtypes("number").columns
    assert len(cpu) and len(numeric)
    pd.testing.assert_frame_equal(cpu[numeric], gpu[numeric], rtol=1e-4, atol=1e-8)
