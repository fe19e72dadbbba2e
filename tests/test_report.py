"""Outputs are written atomically and deterministically."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from utils.plotting import save_figure, subplots
from utils.report import Report, atomic_path, output_dir, save_npy, write_csv


def test_failed_write_keeps_the_good_file(tmp_path):
    target = tmp_path / "table.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), target)
    good = target.read_text()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_npy_round_trip(tmp_path):
    a = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(np.load(save_npy(a, tmp_path / "a.npy")), a)


def test_figures_are_deterministic(tmp_path):
    digests = []
    for name in ("one.png", "two.png"):
        fig, axes = subplots(1, 1)
        axes[0, 0].plot([1, 2, 3], [3, 1, 2])
        digests.append(hashlib.sha256(save_figure(fig, tmp_path / name, close=True).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_report_markdown(tmp_path):
    report = Report("Title").heading("Numbers").table({"pi": 3.14159265, "n": 3})
    report.table(pd.DataFrame({"x": [0.5, float("nan")]}))
    text = report.write(tmp_path / "report.md").read_text()
    assert text.startswith("# Title") and "3.142" in text and "n/a" in text


def test_output_dir_layout(tmp_path):
    assert output_dir("m", "01_x", tmp_path) == tmp_path / "m" / "01_x"
    assert (tmp_path / "m" / "01_x").is_dir()
