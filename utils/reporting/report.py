"""Markdown reports: `Report` assembles a notebook's report.md section by section; `fmt` formats
numbers for it. Files are written through `utils.atomic_io`.

Every report has one scheme: `Report.for_notebook(notebook, model)` opens it with the title
"# NN · Title — model", `model_section` follows with "## Model" (the configuration table, then
the quantization note where it applies), then "## Findings" and the notebook's own sections.
Text given to the report is made safe for markdown (`markdown_safe`): paths below the repository
are shown relative to it, and paths, globs and identifiers that markdown would eat (`*`, `_`) are
set as code. Writing a report.md also renders it as report.html and refreshes the indexes of its
model and of the output folder (`utils.reporting.index.refresh_for_report`), so a notebook run
from JupyterLab or nbconvert leaves no stale page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from utils.atomic_io import write_text
from utils.engine.corpus import corpus_notes
from utils.paths import REPO_ROOT, params_name
from utils.reporting.index import refresh_for_report

# Notebook name -> the title of its report (a notebook not listed is titled from its name).
TITLES = {
    "01_weight_spectra": "Weight spectra",
    "02_attention_kernels": "Attention kernels",
    "03_subspace_geometry": "Subspace geometry",
    "04_representations": "Representations",
    "05_ffn_eigenspectrum": "FFN eigenspectrum",
    "06_training_dynamics": "Training dynamics",
    "07_model_comparison": "Model comparison",
    "08_checkpoint_dynamics": "Checkpoint dynamics",
}
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_TOKEN = re.compile(r"\S+")
_EDGE = "()[]{},;:.!?'\""
_EMPHASIS = re.compile(r"^(\*{1,2})[A-Za-z][^*]*\1$|^\*{1,2}[A-Za-z][^*]*$|^[^*]*[A-Za-z.,:;!?]\*{1,2}$")


def fmt(value, digits: int = 4) -> str:
    """Compact number formatting for reports; booleans read yes / no."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return markdown_safe(str(value))


def notebook_title(notebook: str) -> str:
    """'04_representations' -> '04 · Representations' (TITLES, else from the name)."""
    number, _, rest = notebook.partition("_")
    return f"{number} · {TITLES.get(notebook, rest.replace('_', ' ').capitalize())}"


def _needs_code(token: str) -> bool:
    """A path, glob or identifier that markdown would misread: it holds `*`, a `_` at its edge
    or between non-letters, or a `/` with a file-like part (an extension, several slashes, a
    leading / or ./)."""
    if "](" in token or token.startswith(("http://", "https://")) or not re.search(r"[A-Za-z0-9]", token):
        return False
    if _EMPHASIS.match(token):  # **bold** or *italic* meant as such
        return False
    if "*" in token or token.startswith("_") or token.endswith("_") or "__" in token:
        return True
    if "/" in token:
        return token.startswith(("/", "./", "../", "~/")) or token.count("/") >= 2 or bool(re.search(r"\.[A-Za-z]\w*$", token))
    return False


def _code_token(token: str) -> str:
    start, end = 0, len(token)
    while start < end and token[start] in _EDGE:
        start += 1
    while end > start and token[end - 1] in _EDGE:
        end -= 1
    core = token[start:end]
    if not core or not _needs_code(core):
        return token
    lead, trail = token[:start], token[end:]
    if lead.endswith("'") and trail.startswith("'"):  # 'quoted' -> `quoted`
        lead, trail = lead[:-1], trail[1:]
    return f"{lead}`{core}`{trail}"


def markdown_safe(text: str) -> str:
    """`text` with absolute paths below the repository shown relative to it, and paths, globs and
    identifiers outside code spans set as code (so `a/*/b-*` is not read as emphasis)."""
    text = str(text).replace(f"{REPO_ROOT}{os.sep}", "")
    parts, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(_TOKEN.sub(lambda m: _code_token(m.group(0)), text[last:span.start()]))
        parts.append(span.group(0))
        last = span.end()
    parts.append(_TOKEN.sub(lambda m: _code_token(m.group(0)), text[last:]))
    return "".join(parts)


def _cell(value, digits: int):
    """A table cell: integers as they are (tabulate aligns them), missing values empty, else `fmt`."""
    if value is None or value is pd.NA:
        return ""
    return value if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) else fmt(value, digits)


class Report:
    """A markdown report assembled section by section, written atomically.

    >>> r = Report.for_notebook("01_weight_spectra", "smollm2-135m")   # "# 01 · Weight spectra — smollm2-135m"
    >>> r.model_section(loaded); r.heading("Findings").bullets(findings); r.write(out / "report.md")
    """

    def __init__(self, title: str):
        self.lines: list[str] = [f"# {title}", ""]

    @classmethod
    def for_notebook(cls, notebook: str, model, note: str = "") -> "Report":
        """The report of notebook `notebook` ('04_representations') for `model` (a params name,
        `Params` or loaded model): '# 04 · Representations — smollm2-135m', then `note`."""
        params = getattr(model, "params", model)
        name = getattr(params, "name", None) or str(params)
        if name.endswith((".yaml", ".yml")):  # a params path is named as output_dir names it
            name = params_name(name)
        report = cls(f"{notebook_title(notebook)} — {name}")
        return report.paragraph(note) if note else report

    def heading(self, text: str, level: int = 2) -> "Report":
        self.lines += ["#" * level + " " + text, ""]
        return self

    def paragraph(self, text: str) -> "Report":
        self.lines += [markdown_safe(text), ""]
        return self

    def bullets(self, items) -> "Report":
        self.lines += [f"- {markdown_safe(item)}" for item in items] + [""]
        return self

    def table(self, data, digits: int = 4, index: bool = False) -> "Report":
        """A markdown table from a DataFrame, or from a dict (two columns: key, value). Floats go
        through `fmt`, booleans read yes / no, text is made markdown-safe."""
        if isinstance(data, dict):
            data = pd.DataFrame({"quantity": list(data.keys()), "value": [fmt(v, digits) for v in data.values()]})
        else:
            data = data.copy()
            for col in data.columns:
                if not pd.api.types.is_integer_dtype(data[col]) or pd.api.types.is_bool_dtype(data[col]):
                    data[col] = data[col].map(lambda v: _cell(v, digits)).astype(object)
        self.lines += [data.to_markdown(index=index), ""]
        return self

    def figure(self, path: str | Path, caption: str, relative_to: str | Path | None = None) -> "Report":
        path = Path(path)
        shown = path.name if relative_to is None else os.path.relpath(path, relative_to)
        caption = markdown_safe(caption)
        self.lines += [f"![{caption}]({shown})", "", f"*{caption}*", ""]
        return self

    def model_section(self, model=None, **extra) -> "Report":
        """The section every report opens with, '## Model': the configuration table of `model`
        (a loaded model's or streamed weights' `describe()`; a `Params` gives its name, description
        and source; None: `extra` only), then `extra` (the notebook's own settings), then the
        quantization note where the source weights were quantized."""
        params = getattr(model, "params", model)
        if hasattr(model, "describe"):
            facts = model.describe()
        elif params is not None:
            facts = {"params": params.name, "description": params.description,
                     "source": params.source.get("kind", ""), "quantization of source": params.quantization}
        else:
            facts = {}
        self.heading("Model").table({**facts, **extra})
        return self.quantization_note(params) if params is not None else self

    def quantization_note(self, params) -> "Report":
        if params.quantized:
            self.paragraph(
                f"> **Quantization.** The source weights are {params.quantization}-quantized and were "
                "dequantized for this analysis. Block-wise 4-bit quantization adds noise of roughly uniform "
                "spectrum, which lifts the smallest singular values and flattens spectral tails: effective "
                "ranks read high and power-law alphas read larger than those of the original "
                "full-precision weights."
            )
        return self

    def text(self) -> str:
        """The markdown; notes on the corpora this process decoded with replacements come last."""
        notes = [f"> **Corpus decoding.** {note}" for note in corpus_notes()]
        return "\n\n".join(["\n".join(self.lines).rstrip(), *notes]) + "\n"

    def write(self, path: str | Path, index: bool = True) -> Path:
        """Write the report; a report.md is also rendered as report.html, and (`index`) the
        indexes of its model and output folder are rewritten (see the module doc)."""
        path = write_text(path, self.text())
        if index and path.name == "report.md":
            refresh_for_report(path)
        return path
