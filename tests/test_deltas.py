"""Spectra of W - W_base between two checkpoints and of PEFT LoRA updates through their factors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.metrics.deltas import DeltaError, lora_updates
from utils.metrics.weight_spectra import lora_spectra, weight_spectra
from utils.models.loading import load_model, load_weights

from .conftest import TESTS_DIR

TINY = str(TESTS_DIR / "params" / "tiny-llama.yaml")


def _params_yaml(path, directory) -> str:
    path.write_text(json.dumps({"description": "test checkpoint", "source": {"kind": "local", "path": str(directory)}}))
    return str(path)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A 'first' and a 'last' checkpoint (as notebook 06 writes them): every matrix moved by small
    noise, layer 1's q by a known rank-one step u v^T as well."""
    root = tmp_path_factory.mktemp("ckpt")
    model = load_model(TINY).model
    model.save_pretrained(root / "first")
    g = torch.Generator().manual_seed(0)
    q = model.model.layers[1].self_attn.q_proj.weight
    u, v = torch.randn(q.shape[0], 1, generator=g), torch.randn(1, q.shape[1], generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
        q.add_(u @ v)
    model.save_pretrained(root / "last")
    return (_params_yaml(root / "first.yaml", root / "first"), _params_yaml(root / "last.yaml", root / "last"),
            root, u @ v)


def test_delta_spectra_equal_the_difference_of_the_checkpoints(two_checkpoints):
    first, last, _, step = two_checkpoints
    a, b = load_weights(last).adapter, load_weights(first).adapter
    df, spectra = weight_spectra(a, progress=False, base=b)
    for layer, name in [(0, "k"), (1, "q"), (2, "ffn_out")]:
        D = a.weight_matrices(layer)[name].double() - b.weight_matrices(layer)[name].double()
        ref = torch.linalg.svdvals(D).numpy()  # float64 difference; ours is float32 (relative rounding ~1e-7 of W)
        np.testing.assert_allclose(spectra[(layer, name)], ref, rtol=1e-4, atol=1e-6 * ref[0])
    row = df[(df.layer == 1) & (df.weight == "q")].iloc[0]
    assert row.sv_max == pytest.approx(torch.linalg.matrix_norm(step, 2).item(), rel=1e-3)  # the rank-one step dominates
    assert row.stable_rank < 1.01


def test_delta_of_a_checkpoint_with_itself_has_no_rows_and_other_shapes_fail(two_checkpoints):
    first, _, _, _ = two_checkpoints
    a = load_weights(first).adapter
    df, _ = weight_spectra(a, progress=False, base=load_weights(first).adapter)
    assert len(df) == 0
    other = load_model(str(TESTS_DIR / "params" / "tiny-qwen2.yaml")).adapter
    with pytest.raises(DeltaError, match="base model differs"):
        weight_spectra(a, progress=False, base=other)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A PEFT LoRA adapter (r = 4, lora_alpha = 8: scale 2) on q_proj and v_proj whose factors are
    B = U (orthonormal columns) and A = diag(d) V^T: each update 2 U diag(d) V^T has singular values 2 d."""
    peft = pytest.importorskip("peft")
    model = load_model(TINY).model
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    d = torch.tensor([3.0, 2.0, 1.0, 0.5])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
                U, _ = torch.linalg.qr(torch.randn(B.shape[0], 4, generator=g))
                V, _ = torch.linalg.qr(torch.randn(A.shape[1], 4, generator=g))
                B.copy_(U)
                A.copy_(torch.diag(d) @ V.T)
    directory = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(directory)
    return directory, d


def test_lora_spectrum_is_the_known_one(lora_dir):
    directory, d = lora_dir
    adapter = load_model(TINY).adapter
    updates = lora_updates(directory, adapter)
    assert [(u.layer, u.weight) for u in updates] == [(i, w) for i in range(3) for w in ("q", "v")]
    df, spectra = lora_spectra(directory, adapter, progress=False)
    for u in updates:
        s = spectra[(u.layer, u.weight)]
        np.testing.assert_allclose(s[:4], 2 * d.numpy(), rtol=1e-6)
        assert np.all(s[4:] == 0) and s.size == min(u.shape)
        dense = torch.linalg.svdvals(u.scale * u.B.double() @ u.A.double()).numpy()  # the d x d product, as reference
        np.testing.assert_allclose(s, dense, rtol=1e-6, atol=1e-9)
    assert (df.lora_rank == 4).all() and (df.matrix_rank == 4).all()
    dense = 2 * updates[0].B.double() @ updates[0].A.double()
    assert df.iloc[0].mp_edge == pytest.approx(dense.std().item() * (np.sqrt(dense.shape[0]) + np.sqrt(dense.shape[1])), rel=1e-6)


def test_lora_errors_name_the_problem(lora_dir, tmp_path):
    adapter = load_model(TINY).adapter
    with pytest.raises(DeltaError, match="adapter_config.json"):
        lora_updates(tmp_path, adapter)
    with pytest.raises(ValueError, match="randomize"):
        from utils.metrics.weight_spectra import SpectraOptions

        lora_spectra(lora_dir[0], adapter, options=SpectraOptions(randomize=True))
