"""The pages a reader opens: every HTML page written by a notebook run on a tiny model and by
`write_index` is parsed (the standard library's html.parser: what a browser would request), every
link and image resolves to a file on disk, and the smallest text of every figure is at least
MIN_TEXT_PX high at the width the page shows it. And the notebooks as JupyterLab opens them."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import jupytext
import pytest

from tests.conftest import TESTS_DIR
from utils.paths import NOTEBOOKS_DIR, REPO_ROOT
from utils.reporting.index import CONTENT_WIDTH_PX, write_index
from utils.reporting.lab_metadata import language_info
from utils.reporting.plotting import MIN_TEXT_PX, TEXT_SIZE_KEY, png_facts, text_px_on_page

TINY = str(TESTS_DIR / "params" / "tiny-llama.yaml")
NOTEBOOKS = ["01_weight_spectra", "04_representations"]  # wide grids, log axes, colour bars, a 2x2 lens


class _Targets(HTMLParser):
    """Every href and src of a page, and the src of every image."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == "img":
            self.images.append(attrs["src"])


def _local(page: Path, target: str) -> Path | None:
    url = urlparse(target)
    if url.scheme or target.startswith("#"):
        return None
    return page.parent / unquote(url.path)


@pytest.fixture(scope="module")
def pages(run_notebook, notebook_output_root) -> list[Path]:
    for notebook in NOTEBOOKS:
        run_notebook(notebook, TINY)
    write_index(notebook_output_root)
    return sorted(notebook_output_root.rglob("*.html"))


def test_every_page_is_written(pages, notebook_output_root):
    names = {str(p.relative_to(notebook_output_root)) for p in pages}
    assert {"index.html", "tiny-llama/index.html"} <= names
    assert {f"tiny-llama/{nb}/report.html" for nb in NOTEBOOKS} <= names


def test_every_link_and_image_resolves(pages):
    for page in pages:
        parser = _Targets()
        parser.feed(page.read_text(encoding="utf-8"))
        assert parser.links, page
        for target in parser.links:
            path = _local(page, target)
            assert path is None or path.exists(), f"{page}: {target} does not exist"


def test_report_pages_link_their_files_and_indexes(pages, notebook_output_root):
    page = notebook_output_root / "tiny-llama" / "01_weight_spectra" / "report.html"
    parser = _Targets()
    parser.feed(page.read_text(encoding="utf-8"))
    assert {"../index.html", "../../index.html", "01_weight_spectra.ipynb", "weight_spectra.csv"} <= set(parser.links)
    assert all(image in parser.links for image in parser.images)  # each figure also a link to itself


def test_figure_text_is_legible_at_the_width_the_page_shows_it(pages):
    images = set()
    for page in pages:
        parser = _Targets()
        parser.feed(page.read_text(encoding="utf-8"))
        images |= {_local(page, src).resolve() for src in parser.images}
    assert len(images) >= 5
    for image in sorted(images):
        facts = png_facts(image)
        smallest = float(facts["text"][TEXT_SIZE_KEY])
        shown = text_px_on_page(smallest, facts["width"], facts["dpi"], CONTENT_WIDTH_PX)
        assert shown >= MIN_TEXT_PX, f"{image.name}: {smallest} pt text is {shown:.1f} px on the page"


@pytest.mark.parametrize("source", sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_notebooks_carry_the_kernelspec_jupyterlab_writes(source):
    """JupyterLab rewrites a kernelspec that differs from the kernel's own (and marks the notebook
    modified as it opens, checked in headless Chromium): the headers carry the installed python3's."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    kernelspec = jupytext.read(source).metadata["kernelspec"]
    assert kernelspec == {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


def test_generated_notebooks_carry_the_language_info_jupyterlab_writes(tmp_path):
    """The kernel's language_info, which JupyterLab also writes as a notebook opens, is added by
    make's `notebooks/%.ipynb` rule (jupytext --update-metadata) from utils.reporting.lab_metadata."""
    from ipykernel.ipkernel import IPythonKernel

    assert language_info() == IPythonKernel.language_info
    rule = (REPO_ROOT / "Makefile").read_text().split("notebooks/%.ipynb:")[1].split("\n\n")[0]
    assert "--update-metadata" in rule and "utils.reporting.lab_metadata" in rule
    target = tmp_path / "01.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--update-metadata",
                    subprocess.check_output([sys.executable, "-m", "utils.reporting.lab_metadata"], text=True, cwd=REPO_ROOT),
                    "--output", str(target), str(NOTEBOOKS_DIR / "01_weight_spectra.py")], check=True, cwd=REPO_ROOT)
    metadata = json.loads(target.read_text())["metadata"]
    assert metadata["language_info"] == IPythonKernel.language_info and metadata["kernelspec"]["name"] == "python3"
