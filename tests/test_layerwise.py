"""The layer-major engine against today's model-major engine, and the Gram route.

Equality: `collect_layerwise` gives the `ActivationStats` of `collect_activations` (residual and
FFN accumulators, skipped rows, CKA samples) and the layer-major logit lens and drift give the
tables of `LogitLens` and `Drift`, on every tiny family, with the weights resident and streamed
from a checkpoint, and on SmolLM2-135M streamed from its dequantized safetensors. Both engines
feed every accumulator the same batches in the same order, so the tolerance is float rounding:
relative RTOL = 1e-6 of each tensor's largest entry (observed: bitwise equal on one CPU thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_model_ids, tiny_models
from utils.engine.activations import collect_activations
from utils.engine.corpus import TokenSample
from utils.engine.layerwise import (
    FFNStats,
    LayerConsumer,
    LayerwiseDrift,
    LayerwiseLogitLens,
    LayerwiseModel,
    ResidualStats,
    collect_layerwise,
    run_layerwise,
    sample_positions,
)
from utils.engine.representations import Drift, LogitLens
from utils.metrics import gram_route
from utils.metrics.gram_route import centred_gram, gram_eigenvalues
from utils.models.adapters import CheckpointAdapter, CheckpointShapeError, family_of
from utils.models.loading import load_model, open_checkpoint
from utils.models.params import params_from_mapping
from utils.models.tensor_store import TensorStore

RTOL = 1e-6
N_SEQ, SEQ_LEN, SKIP = 5, 32, 1  # 32 > Gemma 3's sliding window of 16
MODELS = tiny_models + ["tests/params/nanogpt-tiny.yaml"]  # every tiny family and notebook 06's model
MODEL_IDS = tiny_model_ids + ["nanogpt-tiny"]


def _tokens(n: int = N_SEQ, S: int = SEQ_LEN, seed: int = 0) -> TokenSample:
    g = torch.Generator().manual_seed(seed)
    return TokenSample(input_ids=torch.randint(3, 256, (n, S), generator=g), corpus="random", seed=seed)


def _padding_mask(n: int = N_SEQ, S: int = SEQ_LEN) -> torch.Tensor:
    mask = torch.ones(n, S, dtype=torch.long)
    mask[1, S - 7 :] = 0  # one right-padded window: the model's own mask construction is exercised
    return mask


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = max(float(a.abs().max()), 1e-30)
    err = float((a.double() - b.double()).abs().max()) / scale
    assert err <= RTOL, f"{what}: relative difference {err:.2e}"


def _streamed(loaded, directory) -> LayerwiseModel:
    """The loaded tiny model saved as safetensors, opened as a weightless skeleton."""
    loaded.model.save_pretrained(directory, safe_serialization=True)
    config = loaded.model.config
    checkpoint = CheckpointAdapter(TensorStore(directory), config, family_of(config),
                                   causal_lm=loaded.adapter.is_causal_lm, dtype=torch.float32)
    return LayerwiseModel.from_checkpoint(checkpoint, dtype=torch.float32, task=loaded.params.task,
                                          attn_implementation=config._attn_implementation)


def _compare_stats(ref, new) -> None:
    assert new.n_tokens == ref.n_tokens
    assert torch.equal(new.sample_positions, ref.sample_positions)
    assert len(new.residual) == len(ref.residual)
    for j, (a, b) in enumerate(zip(ref.residual, new.residual)):
        assert a.count == b.count
        _close(a.m2.tril(), b.m2.tril(), f"residual state {j} scatter")
        _close(a.mu, b.mu, f"residual state {j} mean")
    _close(ref.samples, new.samples, "CKA samples")
    assert sorted(new.ffn_pre) == sorted(ref.ffn_pre)
    for i in ref.ffn_pre:
        for kind, x, y in (("pre", ref.ffn_pre[i], new.ffn_pre[i]), ("post", ref.ffn_post[i], new.ffn_post[i])):
            assert x.count == y.count
            _close(x.m2.tril(), y.m2.tril(), f"FFN {kind} layer {i}")
            _close(x.mu, y.mu, f"FFN {kind} mean layer {i}")
        _close(ref.ffn_pre_skipped[i], new.ffn_pre_skipped[i], f"skipped pre rows layer {i}")
        _close(ref.ffn_post_skipped[i], new.ffn_post_skipped[i], f"skipped post rows layer {i}")


def _both_engines(loaded, lw: LayerwiseModel, tokens: TokenSample, mask: torch.Tensor | None, ffn_layers,
                  lens_chunk: int | None = None) -> None:
    """Both engines on the same tokens; the lens computes logits `lens_chunk` tokens at a time
    (default: 4096 logits at a time, a few tokens of a tiny vocabulary)."""
    stat = torch.ones_like(tokens.input_ids, dtype=torch.bool) if mask is None else mask.bool().clone()
    stat[:, :SKIP] = False
    shape, causal = tuple(tokens.input_ids.shape), loaded.adapter.is_causal_lm
    elements = 4096 if lens_chunk is None else lens_chunk * loaded.dims.V
    lens = LogitLens(loaded.adapter, shape, 40, 0, mask=stat, max_logit_elements=elements) if causal else None
    lens2 = LayerwiseLogitLens(lw.adapter, shape, 40, 0, mask=stat, max_logit_elements=elements) if causal else None
    drift, drift2 = Drift(loaded.adapter.final_norm is not None), LayerwiseDrift(lw.adapter.dims.L,
                                                                                 lw.adapter.final_norm is not None)
    kw = dict(ffn_layers=ffn_layers, keep_samples=25, batch_size=2, skip_first=SKIP, keep_skipped=True,
              attention_mask=mask)
    ref = collect_activations(loaded, tokens, cache=False, consumers=[c for c in (lens, drift) if c], **kw)
    new = collect_layerwise(lw, tokens, consumers=[c for c in (lens2, drift2) if c], progress=False, **kw)
    _compare_stats(ref, new)
    a, b = drift.result(), drift2.result()
    assert list(a.step) == list(b.step)
    np.testing.assert_allclose(b[["cosine", "l2"]].to_numpy(), a[["cosine", "l2"]].to_numpy(), rtol=RTOL)
    if causal:
        a, b = lens.result(), lens2.result()
        assert list(a.columns) == list(b.columns)
        np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_resident_blocks_equal_todays_engine(model):
    loaded = load_model(model)
    before = list(loaded.adapter.blocks)
    _both_engines(loaded, LayerwiseModel.from_loaded(loaded), _tokens(), _padding_mask(), range(loaded.dims.L))
    assert all(a is b for a, b in zip(before, loaded.adapter.blocks, strict=True))  # the capture restored them


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_streamed_blocks_equal_todays_engine_and_read_each_tensor_once(model, tmp_path):
    loaded = load_model(model)
    lw = _streamed(loaded, tmp_path)
    _both_engines(loaded, lw, _tokens(), _padding_mask(), range(loaded.dims.L))
    assert set(lw.reads) == set(lw.checkpoint.store.names)
    assert set(lw.reads.values()) == {1}


def test_each_layer_type_gets_its_own_mask_and_rotary_table(tmp_path):
    """Gemma 3 with a sliding layer then a full-attention layer (windows of 32 > sliding window 16):
    the model passes each block the mask and rotary table of its layer type, and so must the engine."""
    path = Path("tests/params/tiny-gemma3.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["source"]["config"]["layer_types"] = ["sliding_attention", "full_attention"]
    loaded = load_model(params_from_mapping(raw, path, name="tiny-gemma3-mixed"))
    for lw in (LayerwiseModel.from_loaded(loaded), _streamed(loaded, tmp_path)):
        _both_engines(loaded, lw, _tokens(), _padding_mask(), range(loaded.dims.L))


class _Residency(LayerConsumer):
    """Records how many block parameters hold data whenever a state arrives."""

    def __init__(self, lw: LayerwiseModel):
        self.lw, self.seen = lw, []

    def on_state(self, s) -> None:
        blocks = self.lw.adapter.blocks
        self.seen.append((s.state, [int(any(p.device.type != "meta" for p in b.parameters())) for b in blocks]))


@pytest.mark.parametrize("model", ["tests/params/tiny-llama.yaml", "tests/params/tiny-gpt2.yaml"])
def test_one_block_in_memory_at_a_time(model, tmp_path):
    loaded = load_model(model)
    lw = _streamed(loaded, tmp_path)
    probe = _Residency(lw)
    run_layerwise(lw, _tokens(), [probe], batch_size=2, progress=False)
    L = lw.adapter.dims.L
    for state, resident in probe.seen:
        expected = [int(i == state - 1) for i in range(L)] if 1 <= state <= L else [0] * L
        assert resident == expected, f"state {state}: blocks with weights {resident}"
    assert lw.model.get_input_embeddings().weight.device.type == "meta"  # dropped after the capture


def test_reduced_consumers_equal_eigenvalues_of_the_accumulators():
    """keep=False: each layer reduced at once; the FFN through the N x N Gram (N = 60 < D_ff = 96)."""
    loaded = load_model("tests/params/tiny-llama.yaml")
    tokens, L, dims = _tokens(4, 16), loaded.dims.L, loaded.dims
    ref = collect_activations(loaded, tokens, cache=False, ffn_layers=range(L), skip_first=SKIP, keep_skipped=True,
                              ffn_dtype="float64", batch_size=2)
    stat = torch.ones_like(tokens.input_ids, dtype=torch.bool)
    stat[:, :SKIP] = False
    n = int(stat.sum())
    res = ResidualStats(L, dims.d, "cpu", sample_positions(stat, 0, 0), 16, keep=False)
    res_gram = ResidualStats(L, dims.d, "cpu", sample_positions(stat, 0, 0), 16, keep=False, route="auto", n_rows=n)
    assert res_gram.gram and not res.gram  # N = 60 < d = 64
    ffn = FFNStats(range(L), dims.d_ff, "cpu", "float64", keep=False, keep_skipped=True, route="auto", n_rows=n)
    assert ffn.gram
    run_layerwise(LayerwiseModel.from_loaded(loaded), tokens, [res, res_gram, ffn], batch_size=2, skip_first=SKIP,
                  progress=False)
    for j in range(L + 2):
        e = ref.residual[j].eigenvalues().numpy()
        np.testing.assert_allclose(res.eigenvalues[j], e, rtol=0, atol=1e-9 * e[0])
        np.testing.assert_allclose(res_gram.eigenvalues[j], e, rtol=0, atol=1e-9 * e[0])
    for i in range(L):
        for kind, acc, skipped in (("pre", ref.ffn_pre[i], ref.ffn_pre_skipped[i]),
                                   ("post", ref.ffn_post[i], ref.ffn_post_skipped[i])):
            e = acc.eigenvalues().numpy()
            np.testing.assert_allclose(ffn.eigenvalues[i][kind], e, rtol=0, atol=1e-9 * e[0])
            acc.update(skipped)
            e_all = acc.eigenvalues().numpy()
            np.testing.assert_allclose(ffn.eigenvalues[i][f"{kind}_all"], e_all, rtol=0, atol=1e-9 * e_all[0])
    assert not ffn.pre and not ffn._rows  # every layer freed


def test_smollm2_streamed_equals_todays_engine():
    """SmolLM2-135M: the loaded model model-major vs its safetensors cache layer-major."""
    loaded = load_model("smollm2-135m")
    streamed = open_checkpoint("smollm2-135m")
    assert streamed is not None, "smollm2-135m has a dequantized safetensors cache"
    lw = LayerwiseModel.from_streamed(streamed, device="cpu")
    g = torch.Generator().manual_seed(1)
    tokens = TokenSample(input_ids=torch.randint(3, 49152, (3, 24), generator=g), corpus="random", seed=1)
    # 16 tokens a lens chunk (3 chunks of the 40 lens tokens): each chunk reads the 113 MB LM head once a layer
    _both_engines(loaded, lw, tokens, None, [0, loaded.dims.L - 1], lens_chunk=16)
    assert set(lw.reads.values()) == {1} and set(lw.reads) == set(streamed.adapter.store.names)


def test_missing_tensor_is_named_before_any_work(tmp_path):
    loaded = load_model("tests/params/tiny-llama.yaml")
    loaded.model.save_pretrained(tmp_path, safe_serialization=True)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    gone = next(n for n in tensors if "layers.1.mlp.down_proj" in n)
    del tensors[gone]
    save_file(tensors, path)
    config = loaded.model.config
    with pytest.raises(CheckpointShapeError, match=r"layers\.1\.mlp\.down_proj.*missing"):  # the checkpoint's shape check
        CheckpointAdapter(TensorStore(tmp_path), config, family_of(config), dtype=torch.float32)


def test_bad_inputs_are_refused():
    loaded = load_model("tests/params/tiny-llama.yaml")
    lw = LayerwiseModel.from_loaded(loaded)
    with pytest.raises(IndexError):
        collect_layerwise(lw, _tokens(), ffn_layers=[7])
    with pytest.raises(ValueError, match="skip_first"):
        collect_layerwise(lw, _tokens(), skip_first=SEQ_LEN)
    with pytest.raises(ValueError, match="attention_mask shape"):
        collect_layerwise(lw, _tokens(), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="route"):
        FFNStats([0], 8, "cpu", route="gram")
    with pytest.raises(ValueError, match="route"):
        ResidualStats(2, 8, "cpu", torch.zeros(0, dtype=torch.long), 4, route="gram")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_on_gpu_matches_cpu(tmp_path):
    loaded = load_model("tests/params/tiny-llama.yaml")
    lw = _streamed(loaded, tmp_path)
    kw = dict(ffn_layers=range(loaded.dims.L), keep_samples=10, batch_size=2, ffn_dtype="float64", progress=False)
    cpu = collect_layerwise(lw, _tokens(), **kw)
    gpu = collect_layerwise(LayerwiseModel.from_checkpoint(lw.checkpoint, dtype=torch.float32, device="cuda",
                                                           attn_implementation="eager"), _tokens(), **kw)
    for a, b in zip(cpu.residual, gpu.residual):
        np.testing.assert_allclose(b.eigenvalues().numpy(), a.eigenvalues().numpy(), rtol=1e-4, atol=1e-6)


# --- the Gram route ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, dim", [(7, 30), (40, 100), (30, 30), (50, 12)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gram_eigenvalues_equal_covariance_eigenvalues(n, dim, dtype, tol):
    """Nonzero eigenvalues of Xc^T Xc / (N - 1) (D x D) = those of Xc Xc^T / (N - 1) (N x N),
    against numpy's covariance of the same rows (float64); zeros fill the length up to D."""
    g = torch.Generator().manual_seed(n * dim)
    X = torch.randn(n, dim, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, dim, dtype=torch.float64)
    X = (X + 5.0).to(dtype)  # a mean far from zero: the route must centre
    expected = np.clip(np.linalg.eigvalsh(np.cov(X.double().numpy(), rowvar=False))[::-1], 0, None)
    got = gram_eigenvalues(X).numpy()
    assert got.shape == (dim,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol * expected[0])
    assert np.all(got[min(n - 1, dim):] <= tol * expected[0])  # rank <= N - 1 after centring


def test_centred_gram_is_blockwise_exact(monkeypatch):
    X = torch.randn(9, 50, dtype=torch.float64)
    monkeypatch.setattr(gram_route, "ROW_BLOCK_BYTES", 8 * 9 * 7)  # 7 columns per block
    Xc = X - X.mean(0)
    torch.testing.assert_close(centred_gram(X), Xc @ Xc.T, rtol=1e-12, atol=1e-12)


def test_gram_route_refuses_bad_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        gram_eigenvalues(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gram_eigenvalues(torch.zeros(5))


def test_tied_head_without_a_lens_consumer_reads_the_embedding_at_the_end(tmp_path):
    """No consumer needs the head: the tied embedding is not kept during the blocks; `head()`
    then reads it again (the one case of a second read) and gives the loaded model's logits."""
    loaded = load_model("tests/params/tiny-qwen2.yaml")  # tied LM head
    lw = _streamed(loaded, tmp_path)
    res = ResidualStats(loaded.dims.L, loaded.dims.d, "cpu", torch.zeros(0, dtype=torch.long), SEQ_LEN, keep=False)
    run_layerwise(lw, _tokens(), [res], batch_size=2, progress=False)
    assert lw._tied is None
    name = lw.checkpoint.embedding_name
    assert lw.reads[name] == 1
    head = lw.head()
    assert lw.reads[name] == 2
    h = torch.randn(3, loaded.dims.d)
    with torch.inference_mode():
        torch.testing.assert_close(head.logits(head.final_norm(h)),
                                   loaded.adapter.logits(loaded.adapter.apply_final_norm(h)), rtol=0, atol=0)


@pytest.mark.parametrize("n_sequences", [5, 1], ids=["covariance-route", "gram-route"])
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_pre_activations_from_the_input_equal_the_direct_spectra(model, n_sequences):
    """FFNStats(pre_from_input=True): the pre problem d wide (X R^T), D_ff - d exact zeros, every
    eigenvalue equal to the D_ff-wide statistics of the hooked outputs in the same pass."""
    loaded = load_model(model)
    dims, tokens = loaded.dims, _tokens(n_sequences)
    assert dims.d < dims.d_ff, "every tiny family widens its FFN"
    n = n_sequences * SEQ_LEN  # every attended row: the largest problem of the layer
    common = dict(dtype="float64", keep=False, keep_skipped=True, route="auto", n_rows=n)
    direct = FFNStats(range(dims.L), dims.d_ff, "cpu", **common)
    factored = FFNStats(range(dims.L), dims.d_ff, "cpu", **common, pre_from_input=True)
    run_layerwise(LayerwiseModel.from_loaded(loaded), tokens, [direct, factored], batch_size=2, skip_first=SKIP,
                  progress=False)
    for i in range(dims.L):
        for kind in ("pre", "pre_all", "post", "post_all"):
            ours, ref = factored.eigenvalues[i][kind], direct.eigenvalues[i][kind]
            assert ours.shape == ref.shape == (dims.d_ff,)
            if kind.startswith("post"):
                assert np.array_equal(ours, ref), f"layer {i} {kind}: the post route is unchanged"
                continue
            assert np.all(ours[dims.d :] == 0), f"layer {i} {kind}: the pre problem is d = {dims.d} wide"
            np.testing.assert_allclose(ours, ref, rtol=0, atol=RTOL * ref[0], err_msg=f"layer {i} {kind}")
    assert not factored._projection and not factored.pre and not factored._rows  # every layer freed


def test_pre_from_input_needs_reduced_layers():
    with pytest.raises(ValueError, match="keep=False"):
        FFNStats([0], 8, "cpu", keep=True, pre_from_input=True)
