"""The activation engine against direct computations on the tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import utils.engine.activations as act
from utils import load_model
from utils.engine.corpus import TokenSample

from .conftest import tiny_model_ids, tiny_models


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))


def _tokens(n=5, S=12, seed=0) -> TokenSample:
    g = torch.Generator().manual_seed(seed)
    return TokenSample(input_ids=torch.randint(3, 256, (n, S), generator=g), corpus="random", seed=seed)


def _cov(rows: torch.Tensor) -> np.ndarray:
    return np.cov(rows.double().numpy(), rowvar=False)


def _reference_ffn_rows(loaded, ids, layer):
    """Rows of the FFN pre/post activations by a plain forward with the test's own hooks."""
    got = {}
    a = loaded.adapter
    h1 = a.ffn_pre_module(layer).register_forward_hook(lambda m, i, o: got.__setitem__("pre", o))
    h2 = a.ffn_post_module(layer).register_forward_hook(lambda m, i, o: got.__setitem__("post", i[0]))
    with torch.no_grad():
        loaded.model(ids)
    h1.remove(), h2.remove()
    return got["pre"].reshape(-1, got["pre"].shape[-1]), got["post"].reshape(-1, got["post"].shape[-1])


@pytest.mark.parametrize("params", tiny_models, ids=tiny_model_ids)
def test_residual_covariances_match_hidden_states(params):
    loaded = load_model(params)
    tokens = _tokens()
    L, d = loaded.dims.L, loaded.dims.d
    stats = act.collect_activations(loaded, tokens, keep_samples=17, batch_size=2, cache=False)
    with torch.no_grad():
        hs = loaded.model(tokens.input_ids, output_hidden_states=True).hidden_states  # L + 1, last normed
    assert len(stats.residual) == L + 2 and stats.n_tokens == tokens.n_tokens
    reference = [hs[j] for j in range(L)] + [None, hs[L]]
    for j, ref in enumerate(reference):
        if ref is None:
            continue
        rows = ref.reshape(-1, d)
        np.testing.assert_allclose(stats.residual[j].covariance().numpy(), _cov(rows), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(stats.residual[j].mean().numpy(), rows.double().mean(0).numpy(), atol=1e-6)
        np.testing.assert_allclose(stats.samples[j].numpy(), rows[stats.sample_positions].numpy(), atol=1e-6)
    assert stats.samples.shape == (L + 2, 17, d)


@pytest.mark.parametrize("params", tiny_models, ids=tiny_model_ids)
def test_ffn_covariances_in_several_passes(params):
    loaded = load_model(params)
    tokens = _tokens()
    L, d_ff = loaded.dims.L, loaded.dims.d_ff
    one_layer = 2 * d_ff * d_ff * 8
    layers = list(range(L))
    multi = act.collect_activations(loaded, tokens, residual=False, ffn_layers=layers, cache=False,
                                    ffn_memory_bytes=one_layer, ffn_dtype="float64")  # one layer per pass
    single = act.collect_activations(loaded, tokens, residual=True, ffn_layers=layers, cache=False,
                                     ffn_dtype="float64", ffn_memory_bytes=1 << 30)
    assert act._ffn_groups(layers, d_ff, one_layer, "float64") == [[i] for i in layers]
    assert act._ffn_groups(layers, d_ff, one_layer, "float32") == [layers[i:i + 2] for i in range(0, L, 2)]
    assert multi.residual == [] and multi.samples is None
    for i in layers:
        pre, post = _reference_ffn_rows(loaded, tokens.input_ids, i)
        for stats in (multi, single):
            np.testing.assert_allclose(stats.ffn_pre[i].covariance().numpy(), _cov(pre), rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(stats.ffn_post[i].covariance().numpy(), _cov(post), rtol=1e-6, atol=1e-8)


def test_padding_never_enters_a_statistic():
    loaded = load_model(tiny_models[tiny_model_ids.index("tiny-llama")])
    tokens = _tokens(n=4, S=10)
    pad = torch.randint(3, 256, (4, 6))
    lengths = [10, 7, 10, 4]  # real tokens per row; the rest is right padding
    padded_ids = torch.cat([tokens.input_ids, pad], dim=1)
    mask = torch.zeros(4, 16, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    padded = TokenSample(padded_ids, "random", 0)
    seen = []
    stats = act.collect_activations(loaded, padded, attention_mask=mask, ffn_layers=[1], keep_samples=50,
                                    batch_size=3, cache=False, consumers=[lambda b: seen.append(b.mask.sum())])
    assert stats.n_tokens == sum(lengths) and sum(int(s) for s in seen) == sum(lengths)
    assert bool(mask.reshape(-1)[stats.sample_positions].all())
    # Reference: each row alone, unpadded (causal model: padding after a token cannot change it).
    rows = {j: [] for j in range(loaded.dims.L + 1)}
    ffn = []
    for r, n in enumerate(lengths):
        ids = tokens.input_ids[r : r + 1, :n]
        with torch.no_grad():
            hs = loaded.model(ids, output_hidden_states=True).hidden_states
        for j in range(loaded.dims.L + 1):
            rows[j].append(hs[j][0])
        ffn.append(_reference_ffn_rows(loaded, ids, 1)[0])
    np.testing.assert_allclose(stats.residual[0].covariance().numpy(), _cov(torch.cat(rows[0])), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.residual[-1].covariance().numpy(), _cov(torch.cat(rows[loaded.dims.L])),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.ffn_pre[1].covariance().numpy(), _cov(torch.cat(ffn)), rtol=1e-5, atol=1e-7)


def test_cache_reuses_recomputes_on_changed_key_and_writes_atomically(monkeypatch):
    loaded = load_model(tiny_models[tiny_model_ids.index("tiny-gpt2")])
    tokens = _tokens()
    first = act.collect_activations(loaded, tokens, keep_samples=8, ffn_layers=[0])
    again = act.collect_activations(loaded, tokens, keep_samples=8, ffn_layers=[0])
    assert not first.from_cache and again.from_cache
    torch.testing.assert_close(again.residual[3].covariance(), first.residual[3].covariance())
    torch.testing.assert_close(again.ffn_post[0].covariance(), first.ffn_post[0].covariance())
    torch.testing.assert_close(again.samples, first.samples)
    changed = [
        dict(tokens=_tokens(seed=1), keep_samples=8, ffn_layers=[0]),  # other token content
        dict(tokens=tokens, keep_samples=9, ffn_layers=[0]),
        dict(tokens=tokens, keep_samples=8, ffn_layers=[1]),
        dict(tokens=tokens, keep_samples=8, ffn_layers=[0], seed=3),
    ]
    for kwargs in changed:
        toks = kwargs.pop("tokens")
        assert not act.collect_activations(loaded, toks, **kwargs).from_cache
    # Consumers force one forward pass but reuse the cached statistics.
    calls = []
    hit = act.collect_activations(loaded, tokens, keep_samples=8, ffn_layers=[0], consumers=[calls.append],
                                   batch_size=2)
    assert hit.from_cache and len(calls) == 3 and len(calls[0].residual) == loaded.dims.L + 2
    # An interrupted write leaves no file behind.
    real_save = torch.save

    def broken_save(obj, path):
        real_save({"partial": torch.zeros(3)}, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(act.torch, "save", broken_save)
    key = dict(keep_samples=5, ffn_layers=[])
    with pytest.raises(KeyboardInterrupt):
        act.collect_activations(loaded, tokens, **key)
    monkeypatch.setattr(act.torch, "save", real_save)
    folder = act.cache_path(act.cache_key(loaded, tokens, None, residual=True, ffn_layers=[], keep_samples=5,
                                          seed=0)).parent
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 5 and not any(n.startswith(".") for n in names)
    assert not act.collect_activations(loaded, tokens, **key).from_cache


def test_bad_layer_and_mask_shape_raise():
    loaded = load_model(tiny_models[0])
    with pytest.raises(IndexError, match="out of range"):
        act.collect_activations(loaded, _tokens(), ffn_layers=[99], cache=False)
    with pytest.raises(ValueError, match="attention_mask shape"):
        act.collect_activations(loaded, _tokens(), attention_mask=torch.ones(2, 2), cache=False)


def test_skip_first_leaves_sink_positions_out_of_statistics_only():
    """skip_first drops the first positions of every window from the statistics, while the model
    still attends to them (later positions' activations are unchanged)."""
    loaded = load_model(tiny_models[tiny_model_ids.index("tiny-llama")])
    tokens = _tokens(n=4, S=10)
    stats = act.collect_activations(loaded, tokens, ffn_layers=[0], keep_samples=9, batch_size=3, cache=False,
                                    skip_first=2, ffn_dtype="float64")
    with torch.no_grad():
        hs = loaded.model(tokens.input_ids, output_hidden_states=True).hidden_states
    d = loaded.dims.d
    assert stats.n_tokens == 4 * 8
    rows = hs[1][:, 2:].reshape(-1, d)  # after block 0, positions 2.. of every window
    np.testing.assert_allclose(stats.residual[1].covariance().numpy(), _cov(rows), rtol=1e-6, atol=1e-8)
    assert bool((stats.sample_positions % 10 >= 2).all())
    pre, _ = _reference_ffn_rows(loaded, tokens.input_ids, 0)
    kept = pre.reshape(4, 10, -1)[:, 2:].reshape(-1, pre.shape[-1])
    np.testing.assert_allclose(stats.ffn_pre[0].covariance().numpy(), _cov(kept), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="leaves no token"):
        act.collect_activations(loaded, tokens, cache=False, skip_first=10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_skipped_rows_merge_to_the_all_token_statistics(dtype):
    """keep_skipped: the sink-free accumulator plus the kept skipped rows (Chan's merge) equal the
    all-token statistics computed directly (skip_first=0), in one forward pass."""
    loaded = load_model(tiny_models[tiny_model_ids.index("tiny-llama")])
    tokens = _tokens(n=5, S=12)
    sink_free = act.collect_activations(loaded, tokens, residual=False, ffn_layers=[0, 1], batch_size=2,
                                        cache=False, skip_first=1, keep_skipped=True, ffn_dtype=dtype)
    direct = act.collect_activations(loaded, tokens, residual=False, ffn_layers=[0, 1], batch_size=2,
                                     cache=False, skip_first=0, ffn_dtype=dtype)
    tol = 1e-5 if dtype == "float32" else 1e-10
    for i in (0, 1):
        pre, post = _reference_ffn_rows(loaded, tokens.input_ids, i)
        assert sink_free.ffn_pre_skipped[i].shape == (5, pre.shape[-1])  # position 0 of each window
        np.testing.assert_allclose(sink_free.ffn_pre_skipped[i].numpy(), pre.reshape(5, 12, -1)[:, 0].numpy(),
                                   rtol=1e-6, atol=1e-7)
        for kind, rows in (("pre", pre), ("post", post)):
            acc = getattr(sink_free, f"ffn_{kind}")[i]
            assert acc.count == 5 * 11
            acc.update(getattr(sink_free, f"ffn_{kind}_skipped")[i])
            assert acc.count == 5 * 12
            ref = _cov(rows)
            for got in (acc.covariance().numpy(), getattr(direct, f"ffn_{kind}")[i].covariance().numpy()):
                assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


def test_pass_plan_for_a_3b_shape():
    """Qwen2.5-3B: L = 36, D_ff = 11008. float32: 2 D_ff^2 4 bytes = 0.90 GiB per layer."""
    plan = act.ffn_pass_plan(36, 11008, 8 << 30, "float32")
    assert plan.bytes_per_layer == 2 * 11008 ** 2 * 4
    assert plan.layers_per_pass == (8 << 30) // plan.bytes_per_layer == 8 and plan.passes == 5
    assert plan.blocks_run == 8 + 16 + 24 + 32 + 36
    old = act.ffn_pass_plan(36, 11008, 2 << 30, "float64")  # the former default: one layer per pass
    assert old.passes == 36 and old.layers_per_pass == 1
    assert "5 pass(es)" in plan.describe()
    with pytest.raises(ValueError, match="float32 or float64"):
        act.ffn_pass_plan(36, 11008, 8 << 30, "float16")
