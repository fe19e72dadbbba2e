"""utils.pipeline.compare_outputs: byte-for-byte tables and arrays, reports as text, notebooks and figures left out."""

from __future__ import annotations

import numpy as np

from utils.pipeline.compare_outputs import differences, main


def _run(root, value=1.0, report="# 01\n\nalpha 2.5\n"):
    (root / "01_x").mkdir(parents=True)
    (root / "01_x" / "table.csv").write_text(f"a,b\n1,{value}\n")
    np.save(root / "01_x" / "eigs.npy", np.arange(4.0) * value)
    (root / "01_x" / "report.md").write_text(report)
    (root / "01_x" / "01_x.ipynb").write_text(f"{{'took': {value}}}")
    (root / "01_x" / "fig.png").write_bytes(bytes([int(value)]))
    return root


def test_identical_runs(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    (b / "01_x" / "01_x.ipynb").write_text("other timings")
    (b / "01_x" / "fig.png").write_bytes(b"other pixels")
    assert differences(a, b) == [] and main([str(a), str(b)]) == 0


def test_changed_table_array_report_and_missing_file(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", value=2.0, report="# 01\n\nalpha 2.6\n")
    (a / "01_x" / "extra.csv").write_text("x\n")
    found = differences(a, b)
    assert any(f.startswith("01_x/table.csv differs") for f in found)
    assert any(f.startswith("01_x/eigs.npy differs") for f in found)
    assert any("-alpha 2.5" in f and "+alpha 2.6" in f for f in found)
    assert any(f.endswith("01_x/extra.csv") and f.startswith("only in") for f in found)
    assert main([str(a), str(b)]) == 1
