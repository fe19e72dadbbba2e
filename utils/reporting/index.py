"""One place to see the results: an index of every notebook report under an output folder.

    python -m utils.index [output]

writes `<output>/index.md` (a table of the models, then for each model and notebook a link to
its report, the report's findings and its first figure), `<output>/<model>/index.md` (the same
for one model, with every finding), and HTML renderings of both (`index.html`) and of every
report (`report.html` beside `report.md`), with figures inline, for a browser opening the files
from disk. Markdown is rendered with markdown-it-py (CommonMark plus tables). `make` runs this
after the notebooks of every target.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

from utils.atomic_io import write_text
from utils.models.params import ParamsError, load_params
from utils.paths import STAGE_ENV

HEADLINE_FINDINGS = 3  # findings per report in the overall index (each model's index has them all)
MODEL_COLUMNS = ("architecture", "layers (L)", "hidden size (d)", "parameters", "quantization of source", "source")
_FIGURE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LONE_FIGURE = re.compile(r"(?<!\[)!\[([^\]]*)\]\(([^)\s]+)\)")  # an image not already inside a link
CONTENT_WIDTH_PX = 1100  # the widest a page shows a figure (body max-width; utils.reporting.plotting sizes for it)
FILE_KINDS = {".csv": "table", ".npy": "array", ".npz": "arrays", ".json": "data", ".ipynb": "executed notebook",
              ".md": "markdown", ".png": "figure"}


@dataclass
class NotebookResult:
    """What the index shows of one notebook's output folder."""

    notebook: str
    folder: Path
    title: str = ""
    findings: list[str] = field(default_factory=list)
    figure: tuple[str, str] | None = None  # (caption, path relative to the folder)
    model_table: dict[str, str] = field(default_factory=dict)
    failed: bool = False  # the last run failed (its executed notebook is <notebook>.failed.ipynb)
    interrupted: bool = False  # the last run was interrupted (<notebook>.interrupted.ipynb), which is no failure

    @property
    def has_report(self) -> bool:
        return (self.folder / "report.md").exists()


def _sections(text: str) -> dict[str, list[str]]:
    """Level-2 heading -> the lines under it."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def _table(lines: list[str]) -> dict[str, str]:
    """The first two columns of the first markdown table among `lines`, header and rule skipped."""
    rows = [line for line in lines if line.lstrip().startswith("|")]
    table = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2:
            table[cells[0]] = cells[1]
    return table


def read_result(folder: Path, notebook: str | None = None) -> NotebookResult:
    """Title, findings (the bullets of its Findings section), first figure and model table of the
    report in `folder`, the output folder of `notebook` (default: the folder's name)."""
    folder = Path(folder)
    notebook = notebook or folder.name
    result = NotebookResult(notebook, folder, failed=(folder / f"{notebook}.failed.ipynb").exists(),
                            interrupted=(folder / f"{notebook}.interrupted.ipynb").exists())
    if not result.has_report:
        return result
    text = _read_report(folder / "report.md")
    first = text.splitlines()[0] if text else ""
    result.title = first[2:].strip() if first.startswith("# ") else folder.name
    sections = _sections(text)
    result.findings = [line[2:].strip() for line in sections.get("Findings", []) if line.startswith("- ")]
    result.model_table = _table(sections.get("Model", []))
    figure = _FIGURE.search(text)
    if figure:
        result.figure = (figure.group(1), figure.group(2))
    return result


def _read_report(path: Path) -> str:
    """A report's text; bytes that are not UTF-8 become U+FFFD (the index is still written)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def collect(output_root: str | Path) -> dict[str, list[NotebookResult]]:
    """model name -> its notebook results, for every <output_root>/<model>/<notebook>/ folder
    holding a report or a failed run (hidden staging folders are left out)."""
    models = {}
    for model_dir in sorted(p for p in Path(output_root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        results = [read_result(nb) for nb in sorted(model_dir.iterdir()) if nb.is_dir() and not nb.name.startswith(".")]
        results = [r for r in results if r.has_report or r.failed or r.interrupted]
        if results:
            models[model_dir.name] = results
    return models


def _description(model: str) -> str:
    try:
        return load_params(model).description
    except ParamsError:
        return ""


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def model_table(models: dict[str, list[NotebookResult]], ext: str = ".md", prefix: str = "") -> str:
    """A markdown table: one row per model (link to its index), its description and the facts of
    the first report with a Model section."""
    header = ["model", "description", *MODEL_COLUMNS, "notebooks"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, results in models.items():
        facts = next((r.model_table for r in results if "architecture" in r.model_table), {})
        row = [f"[{model}]({prefix}{model}/index{ext})", _description(model),
               *(facts.get(c, "") for c in MODEL_COLUMNS), str(sum(r.has_report for r in results))]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def notebook_section(result: NotebookResult, prefix: str, ext: str, max_findings: int | None) -> str:
    """Markdown for one notebook: linked title, findings, first figure; paths start with `prefix`."""
    base = f"{prefix}{result.notebook}/"
    if not result.has_report:
        how, marker = ("failed", "failed") if result.failed else ("was interrupted", "interrupted")
        return (f"### {result.notebook}\n\nThe run {how} before writing a report: see "
                f"[{result.notebook}.{marker}.ipynb]({base}{result.notebook}.{marker}.ipynb).\n")
    report = "report.html" if ext == ".html" else "report.md"
    out = [f"### [{result.title}]({base}{report})", ""]
    if result.failed:
        out += [f"> The last run failed ([{result.notebook}.failed.ipynb]({base}{result.notebook}.failed.ipynb)); "
                "these are the previous run's results.", ""]
    elif result.interrupted:
        out += [f"> The last run was interrupted ([{result.notebook}.interrupted.ipynb]({base}{result.notebook}"
                ".interrupted.ipynb)); these are the previous run's results.", ""]
    shown = result.findings if max_findings is None else result.findings[:max_findings]
    out += [f"- {line}" for line in shown]
    if len(shown) < len(result.findings):
        out.append(f"- ... {len(result.findings) - len(shown)} more in the report")
    if shown:
        out.append("")
    if result.figure:
        caption, path = result.figure
        out += [f"![{caption}]({base}{path})", "", f"*{caption}*", ""]
    return "\n".join(out)


def index_markdown(models: dict[str, list[NotebookResult]], ext: str = ".md") -> str:
    """The overall index: the model table, then each model's notebooks with headline findings."""
    out = ["# transformer-spectra results", ""]
    if not models:
        return "\n".join(out + ["No notebook has written a report yet: run `make`.", ""])
    out += ["## Models", "", model_table(models, ext)]
    for model, results in models.items():
        out += [f"## [{model}]({model}/index{ext})", ""]
        out += [notebook_section(r, f"{model}/", ext, HEADLINE_FINDINGS) for r in results]
    return "\n".join(out).rstrip() + "\n"


def model_index_markdown(model: str, results: list[NotebookResult], ext: str = ".md") -> str:
    """One model's index: its row of the model table, then every notebook with all findings."""
    out = [f"# {model}", "", f"[All models](../index{ext})", "", model_table({model: results}, ext, "../"), ""]
    out += [notebook_section(r, "", ext, None) for r in results]
    return "\n".join(out).rstrip() + "\n"


_STYLE = f"""body{{font-family:system-ui,sans-serif;max-width:{CONTENT_WIDTH_PX}px;margin:2em auto;padding:0 1em;line-height:1.45}}
table{{border-collapse:collapse;font-size:.9em}}th,td{{border:1px solid #ccc;padding:.25em .5em;text-align:left}}
img{{max-width:100%;height:auto}}code{{background:#f3f3f3;padding:0 .2em}}
blockquote{{color:#555;border-left:3px solid #ccc;margin-left:0;padding-left:1em}}"""
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_html(markdown: str, title: str) -> str:
    """A standalone HTML page of `markdown` (CommonMark plus tables; raw HTML is escaped); every
    image not already in a link links to itself, to be opened at full size."""
    body = _MARKDOWN.render(_LONE_FIGURE.sub(r"[![\1](\2)](\2)", markdown))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _escaped(text: str) -> str:
    """`text` with the characters markdown would read as markup backslash-escaped."""
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def _link(name: str) -> str:
    return f"[{_escaped(name)}](<{name}>)"


def files_section(folder: Path) -> str:
    """Markdown bullets linking every file (and sub-folder) of a notebook's output folder but its
    report and hidden files: tables, arrays, the executed notebook, figures."""
    lines = []
    for path in sorted(Path(folder).iterdir(), key=lambda p: (p.is_dir(), p.suffix != ".ipynb", p.suffix, p.name)):
        if path.name.startswith(".") or path.name in ("report.md", "report.html"):
            continue
        if path.is_dir():
            lines.append(f"- {_link(path.name + '/')} (folder)")
        else:
            kind = FILE_KINDS.get(path.suffix, path.suffix.lstrip(".") or "file")
            lines.append(f"- {_link(path.name)} ({kind}, {_size(path.stat().st_size)})")
    return "\n".join(["## Files", "", *lines, ""]) if lines else ""


def report_page_markdown(result: NotebookResult) -> str:
    """A report as its HTML page shows it: links to its model's and the overall index, the
    report, then its folder's files."""
    model = result.folder.parent.name
    nav = f"[{_escaped(model)} index](../index.html) · [all models](../../index.html)"
    text = _read_report(result.folder / "report.md")
    return "\n\n".join(part for part in (nav, text.rstrip(), files_section(result.folder), nav) if part) + "\n"


def write_index(output_root: str | Path, model: str | None = None) -> Path:
    """Write every index file (see the module doc); return <output_root>/index.md. With `model`,
    only that model's pages and the overall index."""
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".index.lock"):
        return _write_pages(root, model)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created), held while the pages are read and written: runs under
    `make -j` refresh the indexes one at a time, so the last refresh sees every swapped-in folder."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_pages(root: Path, model: str | None) -> Path:
    models = collect(root)
    for name, results in models.items():
        if model is not None and name != model:
            continue
        write_text(root / name / "index.md", model_index_markdown(name, results))
        write_text(root / name / "index.html", render_html(model_index_markdown(name, results, ".html"), name))
        for r in results:
            if r.has_report:
                write_text(r.folder / "report.html", render_html(report_page_markdown(r), r.title))
    write_text(root / "index.html", render_html(index_markdown(models, ".html"), "transformer-spectra results"))
    return write_text(root / "index.md", index_markdown(models))


def _is_output_folder(folder: Path) -> bool:
    """<root>/<model>/NN_name/: a notebook's output folder."""
    return bool(re.fullmatch(r"\d\d_\w+", folder.name))


def refresh(folder: str | Path) -> None:
    """Rewrite the pages of one notebook output folder <root>/<model>/NN_name/: its report.html,
    its model's index and the overall index (other models' pages are left as they are). A folder
    not laid out so is left alone."""
    folder = Path(folder).absolute()
    if _is_output_folder(folder) and folder.is_dir():
        write_index(folder.parent.parent, model=folder.parent.name)


def refresh_for_report(report: str | Path) -> None:
    """After a report.md is written: inside a run staged by `utils.run` (its folder is the staging
    folder of STAGE_ENV), render its report.html only, and `utils.run` refreshes the indexes once
    the folder is swapped in; elsewhere (JupyterLab, nbconvert) `refresh` its folder."""
    report = Path(report).absolute()
    final, sep, staging = os.environ.get(STAGE_ENV, "").partition(os.pathsep)
    if sep and Path(staging).absolute() == report.parent:
        result = read_result(report.parent, Path(final).name)
        write_text(report.with_name("report.html"), render_html(report_page_markdown(result), result.title))
    elif _is_output_folder(report.parent):
        refresh(report.parent)
    else:
        result = read_result(report.parent)
        write_text(report.with_name("report.html"), render_html(report.read_text(encoding="utf-8"), result.title))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "output")
    index = write_index(root)
    models = collect(root)
    reports = sum(r.has_report for results in models.values() for r in results)
    print(f"index of {reports} reports ({len(models)} models): {index} and {index.with_suffix('.html')}")
    return 0
