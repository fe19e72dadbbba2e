"""Notebook 07 compares tiny models of different families and depths end to end."""

from __future__ import annotations

import pandas as pd

from .conftest import tiny_models


def test_notebook_07(run_notebook, tmp_path):
    llama = next(p for p in tiny_models if p.endswith("tiny-llama.yaml"))
    gpt2 = next(p for p in tiny_models if p.endswith("tiny-gpt2.yaml"))
    missing = tmp_path / "missing.yaml"
    missing.write_text("source: {kind: bundled, package: not_installed_pkg_xyz, file: m.gguf}\n")
    out = run_notebook("07_model_comparison", llama, compare_with=[gpt2, str(missing), llama])
    comparison = pd.read_csv(out / "weight_comparison.csv")
    summary = pd.read_csv(out / "model_summary.csv")
    assert list(summary.model) == ["tiny-llama", "tiny-gpt2"]  # the duplicate is dropped, the missing one skipped
    assert summary.layers.tolist() == [3, 2]
    blocks = comparison[comparison.layer >= 0]
    assert blocks.rel_depth.between(0, 1).all() and blocks.rel_eff_rank.between(0, 1 + 1e-9).all()
    assert len(blocks[blocks.model == "tiny-llama"]) == 3 * 7 and len(blocks[blocks.model == "tiny-gpt2"]) == 2 * 6
    report = (out / "report.md").read_text()
    assert "not_installed_pkg_xyz" in report and "## Findings" in report
    assert (out / "weight_depth_profiles.png").stat().st_size > 1000
