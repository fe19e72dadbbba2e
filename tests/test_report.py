"""Outputs are written atomically and deterministically; reports share one scheme, read yes/no,
keep paths and globs as written, and refresh their pages when written."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pandas as pd
import pytest

from utils.atomic_io import atomic_path, save_npy, unique_path, write_csv, write_text
from utils.paths import REPO_ROOT, STAGE_ENV, StagingError, output_dir
from utils.reporting.index import render_html
from utils.reporting.plotting import save_figure, subplots
from utils.reporting.report import Report, fmt, markdown_safe, notebook_title


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
    assert output_dir("m", "02_y", tmp_path) == tmp_path / "m" / "02_y"  # other notebooks' folders, read by the run
    assert output_dir("gemma", "02_y", tmp_path) == tmp_path / "gemma" / "02_y"  # (07 reads 01 of every model) ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # ... and not created: no empty folders
    assert [p.name for p in (tmp_path / "m").iterdir()] == [staging.name]
    with pytest.raises(StagingError, match="outside the run"):  # the staged notebook for another model
        output_dir("gemma", "01_x", tmp_path)


def test_booleans_read_yes_and_no():
    assert fmt(True) == "yes" and fmt(np.bool_(False)) == "no" and fmt(3) == "3" and fmt(0.5) == "0.5"
    text = Report("t").table(pd.DataFrame({"claim": ["a", "b"], "holds": [True, False], "n": [1, 2]})).text()
    assert "| yes " in text and "| no " in text and "True" not in text and "False" not in text
    assert "| holds      | yes     |" in Report("t").table({"holds": True}).text()
    mixed = Report("t").table(pd.DataFrame({"x": ["a", None, 0.25]})).text()
    assert "None" not in mixed and "0.25" in mixed


@pytest.mark.parametrize("text, expected", [
    ("glob checkpoints/*/checkpoint-* here", "glob `checkpoints/*/checkpoint-*` here"),
    ("(/a/b/c, x)", "(`/a/b/c`, x)"),
    ("narrow it, e.g. 'run/checkpoint-*'", "narrow it, e.g. `run/checkpoint-*`"),
    ("see out/report.md.", "see `out/report.md`."),
    ("**Quantization.** The source", "**Quantization.** The source"),
    ("a `q/*` span and __init__", "a `q/*` span and `__init__`"),
    ("ratio 1/(2b), k/d, post/pre, eff_rank", "ratio 1/(2b), k/d, post/pre, eff_rank"),
    ("[link](a/b/c.md)", "[link](a/b/c.md)"),
])
def test_markdown_safe_sets_paths_and_globs_as_code(text, expected):
    assert markdown_safe(text) == expected


def test_paths_below_the_repository_are_shown_relative_to_it():
    assert markdown_safe(f"from {REPO_ROOT / 'output' / 'm' / '06_x'} on") == "from `output/m/06_x` on"


def test_markdown_safe_text_renders_as_written():
    glob = "checkpoints/*/checkpoint-*"
    page = render_html(Report("t").bullets([f"series {glob} of 3"]).text(), "t")
    assert f"<code>{glob}</code>" in page and "<em>" not in page


class _Params:
    name, description, quantization, quantized, source = "q4-model", "a model", "Q4_K_M", True, {"kind": "gguf"}


class _Loaded:
    params = _Params()

    def describe(self):
        return {"params": "q4-model", "layers (L)": 2}


def test_one_heading_and_section_scheme():
    report = Report.for_notebook("04_representations", _Loaded()).model_section(_Loaded(), corpus="c")
    lines = [line for line in report.text().splitlines() if line]
    assert lines[0] == "# 04 · Representations — q4-model"
    assert lines[1] == "## Model" and "layers (L)" in lines[5] and "corpus" in lines[6]
    assert lines[7].startswith("> **Quantization.**")  # the note below the table
    assert Report.for_notebook("99_new_thing", "/x/tiny.yaml").text().startswith("# 99 · New thing — tiny\n")
    assert notebook_title("05_ffn_eigenspectrum") == "05 · FFN eigenspectrum"
    params_only = Report("t").model_section(_Params()).text()
    assert "| description            | a model  |" in params_only and params_only.rstrip().endswith("full-precision weights.")


def test_writing_a_report_refreshes_its_pages_and_indexes(tmp_path):
    folder = tmp_path / "output" / "m" / "01_x"
    folder.mkdir(parents=True)
    Report.for_notebook("01_x", "m").heading("Findings").bullets(["one"]).write(folder / "report.md")
    assert (folder / "report.html").exists()
    assert "one" in (tmp_path / "output" / "m" / "index.md").read_text()
    assert "01 · X — m" in (tmp_path / "output" / "index.html").read_text()


def test_a_staged_report_renders_its_page_only(tmp_path, monkeypatch):
    staging = tmp_path / "output" / "m" / ".01_x.staging-0"
    staging.mkdir(parents=True)
    monkeypatch.setenv(STAGE_ENV, f"{tmp_path / 'output' / 'm' / '01_x'}{os.pathsep}{staging}")
    Report("r").write(staging / "report.md")
    assert sorted(p.name for p in staging.iterdir()) == ["report.html", "report.md"]
    assert sorted(p.name for p in (tmp_path / "output" / "m").iterdir()) == [staging.name]  # utils.run indexes


def test_a_report_elsewhere_writes_nothing_beside_its_folder(tmp_path):
    Report("r").write(tmp_path / "report.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]
