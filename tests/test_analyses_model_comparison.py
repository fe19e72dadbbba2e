"""utils.analyses.model_comparison (notebook 07): the weight spectra cache (a second run reuses, a
changed checkpoint recomputes, an unreadable entry is a miss, a failed write a warning), which
models are compared, and the comparison's fields."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import utils.analyses.model_comparison as mc
from utils import load_model
from utils.metrics.weight_spectra import weight_spectra
from utils.models.params import load_params

PARAMS = Path(__file__).parent / "params"


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(root))
    return root


@pytest.fixture
def loads(monkeypatch):
    """Counts the checkpoint loads of `cached_weight_spectra`."""
    calls = []

    def counting(params, *args, **kwargs):
        calls.append(params.name)
        return real(params, *args, **kwargs)

    real = mc.load_weights
    monkeypatch.setattr(mc, "load_weights", counting)
    return calls


def local_checkpoint(tmp_path: Path, seed: int = 0):
    """tiny-llama saved as a local safetensors checkpoint, and its params file."""
    loaded = load_model(str(PARAMS / "tiny-llama.yaml"))
    if seed:
        with torch.no_grad():
            loaded.model.model.layers[1].self_attn.q_proj.weight.mul_(1.0 + seed)
    directory = tmp_path / "ckpt"
    loaded.model.save_pretrained(directory, safe_serialization=True)
    params = tmp_path / "local-llama.yaml"
    params.write_text(f"source: {{kind: local, path: '{directory}'}}\ntask: causal_lm\n")
    return load_params(str(params))


def test_second_run_reuses_and_changed_checkpoint_recomputes(tmp_path, cache_root, loads):
    params = local_checkpoint(tmp_path)
    assert params.name.startswith("local-llama-")  # a params file outside params/ is named by stem and content hash
    first = mc.cached_weight_spectra(params)
    assert first.status == "computed" and loads == [params.name]
    assert len(list((cache_root / "weight_spectra").glob(f"{params.name}-*.json"))) == 1
    second = mc.cached_weight_spectra(params)
    assert second.status == "cache" and loads == [params.name]  # no second load
    pd.testing.assert_frame_equal(second.table, first.table, check_exact=True)
    assert second.origin == first.origin
    reference, _ = weight_spectra(mc.load_weights(params).adapter, progress=False)
    pd.testing.assert_frame_equal(second.table, reference, check_exact=True)
    local_checkpoint(tmp_path, seed=1)  # the same directory, other weights
    changed = mc.cached_weight_spectra(params)
    assert changed.status == "computed" and loads.count(params.name) == 3
    row = (changed.table.layer == 1) & (changed.table.weight == "q")
    before, after = first.table.loc[row].iloc[0], changed.table.loc[row].iloc[0]  # q of layer 1 scaled by 2
    assert after.spectral_norm == pytest.approx(2 * before.spectral_norm, rel=1e-5)
    assert after.stable_rank == pytest.approx(before.stable_rank, rel=1e-5)  # scale-invariant
    assert not mc.cached_weight_spectra(params, cache=False).status == "cache"


def test_unreadable_entry_is_a_miss_and_failed_write_a_warning(tmp_path, cache_root, loads, monkeypatch):
    params = local_checkpoint(tmp_path)
    first = mc.cached_weight_spectra(params)
    (entry,) = (cache_root / "weight_spectra").glob("*.json")
    entry.write_text('{"key": {"trunc')
    again = mc.cached_weight_spectra(params)
    assert again.status.startswith(f"recomputed: the cache entry {entry.name} was unreadable")
    assert "\n" not in again.status and len(loads) == 2
    pd.testing.assert_frame_equal(again.table, first.table, check_exact=True)
    assert mc.cached_weight_spectra(params).status == "cache" and len(loads) == 2  # overwritten
    entry.unlink()

    def fail(path, text):
        raise OSError("disk full")

    monkeypatch.setattr(mc, "write_text", fail)
    with pytest.warns(UserWarning, match="could not write the weight spectra cache entry .*disk full"):
        assert mc.cached_weight_spectra(params).status == "computed"
    assert not list((cache_root / "weight_spectra").glob("*.json"))


def test_random_configs_are_keyed_by_their_source(cache_root, loads):
    llama, gpt2 = load_params(str(PARAMS / "tiny-llama.yaml")), load_params(str(PARAMS / "tiny-gpt2.yaml"))
    key = mc.spectra_cache_key(llama)
    assert key == mc.spectra_cache_key(llama) and key["content"] != mc.spectra_cache_key(gpt2)["content"]
    assert mc.cached_weight_spectra(llama).status == "computed"
    assert mc.cached_weight_spectra(llama).status == "cache" and loads == ["tiny-llama"]


def test_weight_tables_prefer_notebook_01_and_say_where_spectra_came_from(tmp_path, cache_root, loads):
    llama, gpt2 = load_params(str(PARAMS / "tiny-llama.yaml")), load_params(str(PARAMS / "tiny-gpt2.yaml"))
    csv = tmp_path / "out" / "tiny-gpt2" / "01_weight_spectra" / "weight_spectra.csv"
    csv.parent.mkdir(parents=True)
    table, _ = weight_spectra(load_model(gpt2).adapter, progress=False)
    table.to_csv(csv, index=False)
    first = mc.weight_tables([llama, gpt2], tmp_path / "out")
    assert first.provenance["tiny-gpt2"] == "notebook 01 output `weight_spectra.csv`"
    assert first.provenance["tiny-llama"].startswith("computed here (")
    assert first.cache_lines == ["`tiny-llama`: weight spectra computed"] and loads == ["tiny-llama"]
    second = mc.weight_tables([llama, gpt2], tmp_path / "out")
    assert second.cache_lines == ["`tiny-llama`: weight spectra read from the cache"] and loads == ["tiny-llama"]
    assert second.provenance == first.provenance
    assert mc.weight_tables([llama, gpt2], tmp_path / "out", recompute=True).provenance["tiny-gpt2"].startswith("computed")


def test_comparison_models_and_parameters(tmp_path):
    llama = load_params(str(PARAMS / "tiny-llama.yaml"))
    missing = tmp_path / "missing.yaml"
    missing.write_text("source: {kind: bundled, package: not_installed_pkg_xyz, file: m.gguf}\n")
    models = mc.comparison_models(llama, [str(PARAMS / "tiny-gpt2.yaml"), str(missing), str(PARAMS / "tiny-llama.yaml")])
    assert [p.name for p in models.models] == ["tiny-llama", "tiny-gpt2"]
    assert len(models.skipped) == 1 and "not_installed_pkg_xyz" in models.skipped[0]
    with pytest.raises(Exception, match="no_such_model"):
        mc.comparison_models(llama, ["no_such_model"])
    mc.check_parameters(1, 2.0)
    with pytest.raises(ValueError, match="parameter depth_bins=0 must be at least 1"):
        mc.check_parameters(0, 2.0)
    with pytest.raises(ValueError, match="parameter heavy_tail_alpha=0"):
        mc.check_parameters(4, 0.0)


def _table(n_layers: int, width: int, rank_share: float, alpha: float) -> pd.DataFrame:
    rows = [{"layer": layer, "weight": w, "rows": width, "cols": width, "eff_rank": rank_share * width * (1 + layer / 10),
             "stable_rank": 2.0, "alpha": alpha, "mp_signal_ratio": 0.1 * rank_share}
            for layer in range(n_layers) for w in ("q", "ffn_out")]
    return pd.DataFrame(rows)


def test_model_comparison_fields():
    llama, gpt2 = load_params(str(PARAMS / "tiny-llama.yaml")), load_params(str(PARAMS / "tiny-gpt2.yaml"))
    tables = mc.WeightTables({"tiny-llama": _table(6, 64, 0.5, 3.0), "tiny-gpt2": _table(4, 64, 0.8, 1.5)},
                             {"tiny-llama": "a", "tiny-gpt2": "b"}, [])
    cmp = mc.compare_models([llama, gpt2], tables, heavy_tail_alpha=2.0, depth_bins=10)
    assert cmp.bins == 4 and cmp.shared == ["q", "ffn_out"] and cmp.quantized == []
    assert cmp.summary["weights from"].tolist() == ["a", "b"] and cmp.summary.quantization.tolist() == ["none", "none"]
    assert cmp.by_type.loc["q", "tiny-gpt2"] == pytest.approx(np.mean(0.8 * (1 + np.arange(4) / 10)))
    lo, hi, n = cmp.profile_correlation("rel_eff_rank")
    prof = cmp.profiles["rel_eff_rank"]
    r = np.corrcoef(prof["tiny-llama"], prof["tiny-gpt2"])[0, 1]
    assert n == 4 and lo == hi == pytest.approx(r) and r > 0.99  # both rise with depth
    sentences = cmp.sentences()
    assert len(sentences) == 4 and sentences[0].startswith("`tiny-gpt2` uses the most")
    one = mc.compare_models([llama], mc.WeightTables({"tiny-llama": _table(3, 8, 0.5, 3.0)}, {"tiny-llama": "a"}, []))
    assert one.sentences()[0].startswith("Only one model was available offline")
