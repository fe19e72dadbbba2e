"""Notebooks 04, 05 and 08 on the layer-major engine (issue 16): their analyses, run on a
checkpoint streamed block by block (`open_model` -> `StreamedModel`), equal the same quantities
from today's model-major engine on the loaded model (`collect_activations`, `LogitLens`, `Drift`,
the embedding's covariance from `adapter.embedding()`), on every tiny family; each checkpoint
tensor is read once; the caches give back what was computed; NaN weights are named as read.

Tolerance: relative RTOL = 1e-6 of each quantity's largest entry (float rounding: both engines
feed the accumulators the same batches in the same order; the Gram route, exact algebra, differs
from the covariance route by the eigen-solver's rounding).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_causal_models, tiny_model_ids, tiny_models
from utils.analyses import checkpoint_dynamics as ckd
from utils.analyses import ffn_eigenspectrum as ffn
from utils.analyses import representations as rep
from utils.engine.activations import collect_activations
from utils.engine.corpus import sample_tokens
from utils.engine.layerwise import BlockWeightSpectra, LayerwiseModel, ffn_layer_bytes, holds_exactly, run_layerwise
from utils.engine.representations import Drift, LogitLens
from utils.metrics.covariance import StreamingCovariance
from utils.metrics.spectra import spectrum_metrics
from utils.metrics.weight_spectra import weight_spectra
from utils.models.loading import LoadedModel, StreamedModel, load_model, open_checkpoint, open_model
from utils.models.params import params_from_mapping
from utils.models.tensor_store import NonFiniteWeightError, TensorStore

RTOL = 1e-6
CAUSAL_IDS = [m.split("/")[-1].removesuffix(".yaml") for m in tiny_causal_models]


def _close(a, b, what: str, rtol: float = RTOL) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} != {b.shape}"
    scale = max(float(np.abs(a).max()), 1e-30)
    err = float(np.abs(a - b).max()) / scale
    assert err <= rtol, f"{what}: relative difference {err:.2e}"


def _checkpoint(model: str, directory) -> tuple[LoadedModel, StreamedModel]:
    """The tiny random model, loaded, and saved as a local safetensors checkpoint opened for the
    layer-major engine, with the loaded model's byte tokenizer (saved beside a Qwen2 config,
    transformers would reload it as Qwen2's tokenizer, one special token larger)."""
    loaded = load_model(model)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    streamed = open_checkpoint(_local_params(directory, loaded.params.task, f"{loaded.params.name}-local"))
    return loaded, StreamedModel(streamed.adapter, streamed.params, streamed.load_seconds, streamed.origin,
                                 loaded.tokenizer)


def _local_params(directory, task: str = "causal_lm", name: str = "local"):
    return params_from_mapping({"source": {"kind": "local", "path": str(directory)}, "task": task, "dtype": "float32",
                                "device": "cpu"}, directory / "params.yaml", name=name)


def test_open_model_streams_a_checkpoint_with_its_tokenizer_and_loads_a_random_config(tmp_path):
    loaded = load_model(tiny_causal_models[0])
    assert isinstance(open_model(tiny_causal_models[0]), LoadedModel)  # no files: the random config is built
    loaded.model.save_pretrained(tmp_path, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp_path)
    streamed = open_model(_local_params(tmp_path))
    assert isinstance(streamed, StreamedModel) and streamed.tokenizer.get_vocab() == loaded.tokenizer.get_vocab()
    assert "block by block" in streamed.describe()["weights read"]


def _count_reads(monkeypatch) -> dict:
    reads: dict[str, int] = {}
    get = TensorStore.get

    def counted(self, name):
        reads[name] = reads.get(name, 0) + 1
        return get(self, name)

    monkeypatch.setattr(TensorStore, "get", counted)
    return reads


@pytest.mark.parametrize("model", tiny_models, ids=tiny_model_ids)
def test_04_streamed_equals_todays_engine_and_reads_each_tensor_once(model, tmp_path, monkeypatch):
    loaded, streamed = _checkpoint(model, tmp_path)
    p = rep.RepresentationsParameters(n_sequences=5, seq_len=32, batch_size=2, keep_samples=64, lens_tokens=40,
                                      cache=False)
    reads = _count_reads(monkeypatch)
    run = rep.measure(streamed, p)
    store = TensorStore(tmp_path)
    assert reads and set(reads.values()) == {1}, "a tensor was read more than once"
    assert set(reads) == set(store.names), f"never read: {sorted(set(store.names) - set(reads))}"

    tokens = sample_tokens(loaded.tokenizer, p.corpus, p.n_sequences, p.seq_len, p.seed)
    mask = torch.ones_like(tokens.input_ids, dtype=torch.bool)
    mask[:, :p.skip_first] = False
    adapter = loaded.adapter
    lens = LogitLens(adapter, tuple(tokens.input_ids.shape), p.lens_tokens, p.seed, mask=mask,
                     max_logit_elements=p.max_logit_elements) if adapter.is_causal_lm else None
    drift = Drift(has_final_norm=adapter.final_norm is not None)
    ref = collect_activations(loaded, tokens, keep_samples=p.keep_samples, batch_size=p.batch_size, seed=p.seed,
                              cache=False, consumers=[c for c in (lens, drift) if c is not None],
                              skip_first=p.skip_first)
    assert len(run.eigenvalues) == len(ref.residual) == loaded.dims.L + 2 and run.n_tokens == ref.n_tokens
    for j, (a, b) in enumerate(zip(ref.residual, run.eigenvalues)):
        _close(a.eigenvalues(), b, f"residual state {j} eigenvalues")
    _close(ref.samples, run.samples, "CKA samples")
    assert torch.equal(ref.sample_positions, run.sample_positions)
    pd.testing.assert_frame_equal(drift.result(), run.drift, rtol=RTOL)
    if lens is not None:
        # KL and cross-entropy are float32 differences of terms of order ln V: absolute rounding ~1e-7
        pd.testing.assert_frame_equal(lens.result(), run.lens, rtol=RTOL, atol=1e-6)
    else:
        assert run.lens is None
    embedding = StreamingCovariance(loaded.dims.d)
    embedding.update(adapter.embedding())
    _close(embedding.eigenvalues(), rep.embedding_vs_final(run).embedding_eigenvalues, "embedding spectrum")
    assert "streamed" in run.engine


def test_04_cache_gives_back_the_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    _, streamed = _checkpoint(tiny_causal_models[0], tmp_path)
    p = rep.RepresentationsParameters(n_sequences=4, seq_len=16, batch_size=2, keep_samples=16, lens_tokens=20)
    first = rep.measure(streamed, p)
    reads = _count_reads(monkeypatch)
    again = rep.measure(streamed, p)
    assert not first.from_cache and again.from_cache and not reads  # no tensor read on a hit
    pd.testing.assert_frame_equal(first.lens, again.lens)
    pd.testing.assert_frame_equal(first.drift, again.drift)
    assert torch.equal(first.samples, again.samples)
    assert all(np.array_equal(a, b) for a, b in zip(first.eigenvalues, again.eigenvalues))
    assert np.array_equal(rep.embedding_vs_final(first).embedding_eigenvalues,
                          rep.embedding_vs_final(again).embedding_eigenvalues)
    other = rep.measure(streamed, rep.RepresentationsParameters(**{**p.__dict__, "lens_tokens": 10}))
    assert not other.from_cache  # another parameter: another entry


def _reference_ffn(loaded: LoadedModel, p: ffn.FFNParameters) -> dict[str, np.ndarray]:
    """Notebook 05's eigenvalues from today's engine: sink-free, then the skipped rows merged."""
    tokens = sample_tokens(loaded.tokenizer, p.corpus, p.n_sequences, p.seq_len, p.seed)
    L = loaded.dims.L
    stats = collect_activations(loaded, tokens, residual=False, ffn_layers=range(L), batch_size=p.batch_size,
                                cache=False, skip_first=p.skip_first, keep_skipped=True)
    out = {k: [] for k in ("pre", "post", "pre_all", "post_all")}
    for i in range(L):
        for kind, accs, skipped in (("pre", stats.ffn_pre, stats.ffn_pre_skipped),
                                    ("post", stats.ffn_post, stats.ffn_post_skipped)):
            out[kind].append(accs[i].eigenvalues().numpy())
            accs[i].update(skipped[i])
            out[f"{kind}_all"].append(accs[i].eigenvalues().numpy())
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("n_sequences", [10, 2], ids=["covariance-route", "gram-route"])
@pytest.mark.parametrize("model", tiny_causal_models, ids=CAUSAL_IDS)
def test_05_streamed_equals_todays_engine(model, n_sequences, tmp_path):
    loaded, streamed = _checkpoint(model, tmp_path)
    p = ffn.FFNParameters(n_sequences=n_sequences, seq_len=32, batch_size=4, skip_first=1)
    plan = ffn.plan(streamed, p)
    assert plan.route == ("Gram" if p.n_all_tokens < loaded.dims.d_ff else "covariance")
    spectra = ffn.measure(streamed, plan, p)
    ref = _reference_ffn(loaded, p)
    for i in range(loaded.dims.L):
        r = min(p.n_tokens - 1, loaded.dims.d_ff)  # nonzero eigenvalues: the Gram route gives exact zeros beyond
        _close(ref["pre"][i][:r], spectra.eig_pre[i][:r], f"layer {i} pre")
        _close(ref["post"][i][:r], spectra.eig_post[i][:r], f"layer {i} post")
    table = ffn.metrics_table([ffn.layer_row(i, ref["pre_all"][i], ref["post_all"][i], plan.rank_floor)
                               for i in range(loaded.dims.L)], p.n_all_tokens, loaded.dims.d_ff)
    for column in ("se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post"):
        _close(table[column], spectra.table_all[column], f"all-token {column}", rtol=1e-5)
    # JS weighs the rank-matched tail, where the eigenvalues are the solver's rounding: absolute 1e-6
    np.testing.assert_allclose(spectra.table_all.js, table.js, rtol=0, atol=1e-6)


def test_05_refuses_a_layer_beyond_its_budget_before_the_pass(tmp_path, monkeypatch):
    _, streamed = _checkpoint(tiny_causal_models[0], tmp_path)
    p = ffn.FFNParameters(n_sequences=8, seq_len=32)
    plan = ffn.plan(streamed, p)
    assert plan.layer_bytes == ffn_layer_bytes(p.n_tokens, streamed.dims.d_ff, pre_width=streamed.dims.d)[1] > 0
    monkeypatch.setattr(ffn, "default_ffn_budget", lambda device: plan.layer_bytes - 1)  # "half the free memory"
    reads = _count_reads(monkeypatch)
    with pytest.raises(MemoryError, match="ffn_memory_mb"):
        ffn.plan(streamed, p)
    assert not reads  # refused before any tensor was read


def test_05_cache_gives_back_the_eigenvalues(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    _, streamed = _checkpoint(tiny_causal_models[0], tmp_path)
    p = ffn.FFNParameters(n_sequences=4, seq_len=16, batch_size=2, cache=True)
    first = ffn.measure(streamed, ffn.plan(streamed, p), p)
    reads = _count_reads(monkeypatch)
    again = ffn.measure(streamed, ffn.plan(streamed, p), p)
    assert not reads and again.from_cache and not first.from_cache
    pd.testing.assert_frame_equal(first.table_all, again.table_all)
    assert np.array_equal(first.eig_post, again.eig_post)


@pytest.mark.parametrize("model", tiny_causal_models[:2], ids=CAUSAL_IDS[:2])
def test_08_checkpoint_streamed_equals_loaded(model, tmp_path):
    loaded, streamed = _checkpoint(model, tmp_path)
    tokens = sample_tokens(loaded.tokenizer, "stdlib-docs", 6, 32, 0)
    a = ckd.measure_checkpoint(loaded, tokens, batch_size=4, tail_window=(2, 16))
    b = ckd.measure_checkpoint(streamed, tokens, batch_size=4, tail_window=(2, 16))
    assert list(a.metric) == list(b.metric) and list(a.layer) == list(b.layer)
    np.testing.assert_allclose(b.value, a.value, rtol=1e-6, atol=1e-9, equal_nan=True)
    stats = collect_activations(loaded, tokens, ffn_layers=range(loaded.dims.L), batch_size=4, cache=False,
                                skip_first=1)
    eff = a[a.metric == "act.eff_rank"].value.to_numpy()
    expected = [spectrum_metrics(acc.eigenvalues().numpy())["eff_rank"] for acc in stats.residual]
    np.testing.assert_allclose(eff, expected, rtol=1e-6)


def test_nan_weight_is_named_when_its_block_is_read(tmp_path):
    _, _ = _checkpoint(tiny_causal_models[0], tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = next(n for n in tensors if ".1." in n and n.endswith("down_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = load_model(tiny_causal_models[0])
    opened = open_checkpoint(_local_params(tmp_path))
    streamed = StreamedModel(opened.adapter, opened.params, 0.0, opened.origin, loaded.tokenizer)
    with pytest.raises(NonFiniteWeightError, match=name.replace(".", r"\.")):
        rep.measure(streamed, rep.RepresentationsParameters(n_sequences=2, seq_len=16, cache=False))


def test_05_float32_solver_stays_within_its_stated_tolerance(tmp_path):
    """eigen_solver="float32": SE, PR, EEE within 1e-5 relative of the float64 solve (the
    tolerance notebook 05's parameter states), eigenvalues within 1e-4 of the largest."""
    _, streamed = _checkpoint(tiny_causal_models[0], tmp_path)
    p64 = ffn.FFNParameters(n_sequences=10, seq_len=32, batch_size=5)
    p32 = ffn.FFNParameters(n_sequences=10, seq_len=32, batch_size=5, eigen_solver="float32")
    a = ffn.measure(streamed, ffn.plan(streamed, p64), p64)
    b = ffn.measure(streamed, ffn.plan(streamed, p32), p32)
    for column in ("se_pre", "se_post", "pr_pre", "pr_post", "eee_pre", "eee_post"):
        _close(a.table[column], b.table[column], column, rtol=1e-5)
    for i in range(len(a.eig_post)):
        _close(a.eig_post[i], b.eig_post[i], f"layer {i} post eigenvalues", rtol=1e-4)
    with pytest.raises(ValueError, match="eigen_solver"):
        ffn.FFNParameters(eigen_solver="float16")
    acc = StreamingCovariance(4)
    acc.update(torch.randn(8, 4))
    with pytest.raises(ValueError, match="precision"):
        acc.eigenvalues("float16")


@pytest.mark.parametrize("model", tiny_models, ids=tiny_model_ids)
def test_weight_spectra_in_the_pass_equal_the_streamed_read_and_read_each_tensor_once(model, tmp_path, monkeypatch):
    """08's weight metrics come from the blocks the layer-major pass holds: the table equals
    `weight_spectra` of the streamed checkpoint, and the pass reads every tensor once."""
    loaded, streamed = _checkpoint(model, tmp_path)
    expected, expected_sv = weight_spectra(streamed.adapter, progress=False)
    tokens = sample_tokens(loaded.tokenizer, "stdlib-docs", 4, 16, 0)
    reads = _count_reads(monkeypatch)
    lw = LayerwiseModel.from_model(streamed)
    consumer = BlockWeightSpectra(lw)
    run_layerwise(lw, tokens, [consumer], batch_size=2, progress=False)
    assert reads and set(reads.values()) == {1} and set(reads) == set(TensorStore(tmp_path).names)
    got, got_sv = consumer.table()
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)
    assert got_sv.keys() == expected_sv.keys() and all(np.array_equal(got_sv[k], expected_sv[k]) for k in got_sv)


def test_weight_spectra_in_the_pass_warn_when_the_compute_dtype_rounds_the_stored_weights(tmp_path):
    """A float32 checkpoint run in bfloat16 would give 08 weight metrics of rounded weights: said
    before the pass; float32 compute of bfloat16 or float32 weights is exact and says nothing."""
    assert holds_exactly("BF16", torch.float32) and holds_exactly("F32", torch.float32)
    assert holds_exactly("BF16", torch.bfloat16) and not holds_exactly("F32", torch.bfloat16)
    assert not holds_exactly("F16", torch.bfloat16) and not holds_exactly("F64", torch.float32)
    _, streamed = _checkpoint(tiny_causal_models[0], tmp_path)
    exact = LayerwiseModel.from_model(streamed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockWeightSpectra(exact)
    rounded = LayerwiseModel.from_checkpoint(exact.checkpoint, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="bfloat16 compute copies of weights stored as F32"):
        BlockWeightSpectra(rounded)
