"""Notebook 01 end to end on fine-tuning deltas: `base` (W - W_base between two checkpoints of a
tiny Llama) and `lora` (a PEFT adapter written here with a known spectrum), asserting on the
numbers of the CSV it writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from papermill import PapermillExecutionError

from utils.metrics.deltas import block_matrices
from utils.models.loading import load_model, load_weights

from .conftest import TESTS_DIR
from .test_deltas import _params_yaml

TINY = str(TESTS_DIR / "params" / "tiny-llama.yaml")
FAST = {"bootstrap": 0}  # the intervals are tested in test_notebook_01.py


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """'first' and 'last': every matrix of 'last' moved by 1e-3 noise, layer 1's q by a rank-one u v^T too."""
    root = tmp_path_factory.mktemp("nb01-ckpt")
    model = load_model(TINY).model
    model.save_pretrained(root / "first")
    g = torch.Generator().manual_seed(0)
    q = model.model.layers[1].self_attn.q_proj.weight
    step = torch.randn(q.shape[0], 1, generator=g) @ torch.randn(1, q.shape[1], generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
        q.add_(step)
    model.save_pretrained(root / "last")
    return _params_yaml(root / "first.yaml", root / "first"), _params_yaml(root / "last.yaml", root / "last"), step


def test_notebook_01_delta_against_the_base(run_notebook, checkpoints):
    first, last, step = checkpoints
    out = run_notebook("01_weight_spectra", last, base=first, **FAST)
    assert not (out / "weight_spectra.csv").exists()  # notebooks 03 and 07 would read it as W's spectra
    df = pd.read_csv(out / "delta_spectra.csv")
    a, b = load_weights(last).adapter, load_weights(first).adapter
    pairs = zip(block_matrices(a), block_matrices(b))
    expected = {(layer, name): torch.linalg.svdvals(W.double() - W0.double()).numpy() for (layer, name, W), (_, _, W0) in pairs}
    assert sorted(zip(df.layer, df.weight)) == sorted(expected)  # every matrix moved: none left out
    for r in df.itertuples():
        s = expected[(r.layer, r.weight)]
        assert r.sv_max == pytest.approx(s[0], rel=1e-4) and r.norm == pytest.approx((s**2).sum(), rel=1e-4)
    q1 = df[(df.layer == 1) & (df.weight == "q")].iloc[0]
    assert q1.sv_max == pytest.approx(torch.linalg.matrix_norm(step, 2).item(), rel=1e-3) and q1.stable_rank < 1.01
    others = df[~((df.layer == 1) & (df.weight == "q"))]
    assert (others.sv_max < 0.1 * q1.sv_max).all()
    assert "W - W_base" in (out / "report.md").read_text()


def test_notebook_01_delta_of_a_model_against_itself_is_refused(run_notebook, checkpoints):
    first, _, _ = checkpoints
    with pytest.raises(PapermillExecutionError, match="W - W_base is zero for every matrix"):
        run_notebook("01_weight_spectra", first, base=first, **FAST)


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory):
    """A PEFT adapter with r = 4, lora_alpha = 8 (scale 2) on q_proj and v_proj, B = U (orthonormal
    columns), A = diag(d) V^T: each update 2 U diag(d) V^T has the singular values 2 d and no others."""
    peft = pytest.importorskip("peft")
    model = load_model(TINY).model
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    d = np.array([3.0, 2.0, 1.0, 0.5])
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in peft_model.modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
                B.copy_(torch.linalg.qr(torch.randn(B.shape[0], 4, generator=g))[0])
                A.copy_(torch.diag(torch.tensor(d, dtype=A.dtype)) @ torch.linalg.qr(torch.randn(A.shape[1], 4, generator=g))[0].T)
    directory = tmp_path_factory.mktemp("nb01-lora") / "adapter"
    peft_model.save_pretrained(directory)
    return directory, 8 / 4 * d


def test_notebook_01_lora_updates_have_rank_r_and_scale_alpha_over_r(run_notebook, lora_adapter):
    directory, s = lora_adapter
    out = run_notebook("01_weight_spectra", TINY, lora=str(directory), **FAST)
    assert not (out / "weight_spectra.csv").exists()  # notebooks 03 and 07 would read it as W's spectra
    df = pd.read_csv(out / "lora_update_spectra.csv")
    L = load_model(TINY).dims.L
    assert sorted(zip(df.layer, df.weight)) == sorted((i, w) for i in range(L) for w in ("q", "v"))
    assert (df.lora_rank == 4).all() and (df.matrix_rank == 4).all() and (df.rank_loss == df.max_rank - 4).all()
    np.testing.assert_allclose(df.sv_max, s[0], rtol=1e-5)  # the CSV keeps 6 significant digits
    np.testing.assert_allclose(df.norm, (s**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(df.stable_rank, (s**2).sum() / s[0] ** 2, rtol=1e-5)
    np.testing.assert_allclose(df.lambda_max, s[0] ** 2, rtol=1e-5)
    assert "LoRA updates" in (out / "report.md").read_text() and "lora_update_spectra.csv" in (out / "report.md").read_text()
