"""Markdown reports: `Report` assembles a notebook's report.md section by section; `fmt` formats
numbers for it. Files are written through `utils.atomic_io`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from utils.atomic_io import write_text
from utils.engine.corpus import corpus_notes


def fmt(value, digits: int = 4) -> str:
    """Compact number formatting for reports."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


class Report:
    """A markdown report assembled section by section, written atomically.

    >>> r = Report("01 · Weight spectra: smollm2-135m")
    >>> r.heading("Model"); r.table({"layers": 30}); r.write(out / "report.md")
    """

    def __init__(self, title: str):
        self.lines: list[str] = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> "Report":
        self.lines += ["#" * level + " " + text, ""]
        return self

    def paragraph(self, text: str) -> "Report":
        self.lines += [text, ""]
        return self

    def bullets(self, items) -> "Report":
        self.lines += [f"- {item}" for item in items] + [""]
        return self

    def table(self, data, digits: int = 4, index: bool = False) -> "Report":
        """A markdown table from a DataFrame, or from a dict (two columns: key, value)."""
        if isinstance(data, dict):
            data = pd.DataFrame({"quantity": list(data.keys()), "value": [fmt(v, digits) for v in data.values()]})
        else:
            data = data.copy()
            for col in data.columns:
                if pd.api.types.is_float_dtype(data[col]):
                    data[col] = data[col].map(lambda v: fmt(v, digits))
        self.lines += [data.to_markdown(index=index), ""]
        return self

    def figure(self, path: str | Path, caption: str, relative_to: str | Path | None = None) -> "Report":
        path = Path(path)
        shown = path.name if relative_to is None else os.path.relpath(path, relative_to)
        self.lines += [f"![{caption}]({shown})", "", f"*{caption}*", ""]
        return self

    def model_section(self, loaded, **extra) -> "Report":
        """The opening every notebook report shares: the model's configuration table (plus the
        notebook's own settings in `extra`) and the quantization note where it applies."""
        self.heading("Model").table({**loaded.describe(), **extra})
        return self.quantization_note(loaded.params)

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

    def write(self, path: str | Path) -> Path:
        return write_text(path, self.text())
