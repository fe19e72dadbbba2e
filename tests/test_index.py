"""The results index: every report's findings and first figure, in markdown and HTML whose links
and images resolve on disk."""

from __future__ import annotations

import re

import pytest

from utils.reporting.index import HEADLINE_FINDINGS, collect, read_result, refresh, write_index
from utils.reporting.report import Report


def _report(folder, title, findings, figures=("a.png",), model=None):
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(title)
    if model is not None:
        report.heading("Model").table(model)
    report.heading("Findings").bullets(findings)
    report.heading("Figures")
    for name in figures:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n")
        report.figure(folder / name, f"caption of {name}")
    report.write(folder / "report.md", index=False)  # the indexes are what these tests write


@pytest.fixture
def output(tmp_path):
    root = tmp_path / "output"
    facts = {"architecture": "llama (llama)", "layers (L)": 30, "hidden size (d)": 576, "parameters": 134515008}
    _report(root / "m1" / "01_a", "01 · A — m1", [f"finding {i} of `a`" for i in range(5)], ("first.png", "second.png"), facts)
    _report(root / "m1" / "02_b", "02 · B — m1", ["only finding | with a bar"])
    (root / "m1" / "02_b" / "02_b.failed.ipynb").write_text("{}")
    (root / "m1" / "03_c").mkdir()
    (root / "m1" / "03_c" / "03_c.failed.ipynb").write_text("{}")  # failed before any report
    (root / "m1" / "04_empty").mkdir()  # created by another notebook's output_dir, never run
    _report(root / "m1" / ".01_a.staging-0", "staged", ["not yet"])  # a run in progress
    _report(root / "smollm2-135m" / "01_a", "01 · A — smollm2", ["smol finding"], model={"architecture": "llama"})
    return root


def test_read_result_extracts_findings_figure_and_model_table(output):
    result = read_result(output / "m1" / "01_a")
    assert result.title == "01 · A — m1" and result.findings[0] == "finding 0 of `a`" and len(result.findings) == 5
    assert result.figure == ("caption of first.png", "first.png") and not result.failed
    assert result.model_table["layers (L)"] == "30" and result.model_table["architecture"] == "llama (llama)"


def test_collect_skips_hidden_and_empty_folders(output):
    models = collect(output)
    assert list(models) == ["m1", "smollm2-135m"]
    assert [r.notebook for r in models["m1"]] == ["01_a", "02_b", "03_c"]
    assert [r.failed for r in models["m1"]] == [False, True, True]


def test_index_markdown(output):
    index = write_index(output).read_text()
    assert index.startswith("# transformer-spectra results")
    row = next(line for line in index.splitlines() if line.startswith("| [m1]"))
    assert "(m1/index.md)" in row and "| 30 | 576 | 134515008 |" in row and row.endswith("| 2 |")
    smol = next(line for line in index.splitlines() if line.startswith("| [smollm2-135m]"))
    assert "SmolLM2-135M-Instruct" in smol  # the params file's description
    assert "### [01 · A — m1](m1/01_a/report.md)" in index
    assert all(f"- finding {i} of `a`" in index for i in range(HEADLINE_FINDINGS))
    assert f"finding {HEADLINE_FINDINGS} of" not in index and "2 more in the report" in index
    assert "![caption of first.png](m1/01_a/first.png)" in index and "second.png" not in index
    assert "The last run failed" in index and "failed before writing a report" in index
    assert "staged" not in index and "04_empty" not in index
    per_model = (output / "m1" / "index.md").read_text()
    assert all(f"- finding {i} of `a`" in per_model for i in range(5)) and "(../index.md)" in per_model
    assert "![caption of first.png](01_a/first.png)" in per_model


def test_index_html_links_and_images_resolve_on_disk(output):
    write_index(output)
    for page in [output / "index.html", output / "m1" / "index.html", output / "m1" / "01_a" / "report.html"]:
        text = page.read_text()
        assert text.startswith("<!DOCTYPE html>") and "<table>" in text
        targets = re.findall(r'(?:src|href)="([^"]+)"', text)
        assert targets
        for target in targets:
            assert (page.parent / target).exists(), (page, target)
    html = (output / "index.html").read_text()
    assert '<img src="m1/01_a/first.png" alt="caption of first.png"' in html
    assert '<a href="m1/01_a/report.html">' in html and "<code>a</code>" in html
    assert "only finding | with a bar" in (output / "m1" / "index.html").read_text()


def test_empty_output_folder(tmp_path):
    assert "No notebook has written a report yet" in write_index(tmp_path / "output").read_text()


def test_report_pages_link_back_to_the_indexes_and_to_their_files(output):
    (output / "m1" / "01_a" / "weight_spectra.csv").write_text("a\n1\n")
    (output / "m1" / "01_a" / "01_a.ipynb").write_text("{}")
    (output / "m1" / "01_a" / "a [x]_*.npy").write_bytes(b"\x93NUMPY")
    (output / "m1" / "01_a" / "checkpoints").mkdir()
    write_index(output)
    page = (output / "m1" / "01_a" / "report.html").read_text()
    assert page.count('<a href="../index.html">m1 index</a>') == 2 and '<a href="../../index.html">all models</a>' in page
    assert '<a href="01_a.ipynb">01_a.ipynb</a> (executed notebook' in page
    assert '<a href="weight_spectra.csv">weight_spectra.csv</a> (table, 4 bytes)' in page
    assert '<a href="a%20%5Bx%5D_*.npy">a [x]_*.npy</a> (array' in page and '<a href="checkpoints/">checkpoints/</a> (folder)' in page
    assert "report.md</a>" not in page and ".staging" not in page
    assert '<a href="first.png"><img src="first.png" alt="caption of first.png" /></a>' in page  # full size


def test_model_facts_come_from_a_report_with_an_architecture(output):
    _report(output / "m1" / "00_setup", "00 · Setup — m1", ["x"], model={"corpus": "bytes"})
    row = next(line for line in write_index(output).read_text().splitlines() if line.startswith("| [m1]"))
    assert "| llama (llama) |" in row


def test_an_index_of_one_model_leaves_the_others(output):
    write_index(output, model="m1")
    assert (output / "m1" / "index.html").exists() and (output / "m1" / "01_a" / "report.html").exists()
    assert not (output / "smollm2-135m" / "index.md").exists() and not (output / "smollm2-135m" / "01_a" / "report.html").exists()
    assert "smollm2-135m/index.md" in (output / "index.md").read_text()  # the overall index lists every model


def test_refresh_rewrites_one_output_folder_and_ignores_other_folders(output, tmp_path):
    refresh(output / "m1" / "02_b")
    assert (output / "m1" / "02_b" / "report.html").exists() and (output / "index.html").exists()
    refresh(tmp_path)  # not <root>/<model>/NN_name: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]
