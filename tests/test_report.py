"""Outputs are written atomically and deterministically."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pandas as pd
import pytest

from utils.atomic_io import atomic_path, save_npy, unique_path, write_csv, write_text
from utils.paths import STAGE_ENV, output_dir
from utils.reporting.plotting import save_figure, subplots
from utils.reporting.report import Report


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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_ordinary_permissions_under_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files = [
            write_text(tmp_path / "report.md", "# r\n"),
            write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv"),
            save_npy(np.zeros(2), tmp_path / "a.npy"),
        ]
        fig, _ = subplots(1, 1)
        files.append(save_figure(fig, tmp_path / "f.png", close=True))
        folder = unique_path(tmp_path, ".staging-", directory=True)
    finally:
        os.umask(previous)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_dir()) == ["a.npy", "f.png", "report.md", "t.csv"]


def test_output_dir_of_a_staged_run(tmp_path, monkeypatch):
    staging = tmp_path / "m" / ".01_x.staging-0"
    staging.mkdir(parents=True)
    monkeypatch.setenv(STAGE_ENV, f"{tmp_path / 'm' / '01_x'}{os.pathsep}{staging}")
    assert output_dir("m", "01_x", tmp_path) == staging
    assert not (tmp_path / "m" / "01_x").exists()  # the run's own folder is swapped in by utils.run
    assert output_dir("m", "02_y", tmp_path) == tmp_path / "m" / "02_y"  # other notebooks' folders as usual
    assert output_dir("other/m.yaml", "01_x", tmp_path) == staging  # a params path is named by its stem
