"""Time of every figure cell of a notebook, measured in a real Jupyter kernel (inline backend), as
kernel CPU seconds: a cell that reads `time.process_time()` is run after every code cell, so a
figure cell's time includes the inline backend's rendering after it. CPU time is steadier than
wall time on a shared machine.

    .venv/bin/python bench/bench_figures.py [--notebooks 01_weight_spectra ...] [--models tests/params/tiny-llama.yaml smollm2-135m]

Prints one markdown table: notebook, model, cell (the figures it saves), kernel CPU s, wall s.
Outputs go to a temporary folder. Set PYTHONPATH to measure another checkout's `utils`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

import jupytext
import nbformat
import papermill

from utils.paths import NOTEBOOKS_DIR, REPO_ROOT

_CLOCK_LINE = re.compile(r"BENCH_CPU ([0-9.e+-]+) ([0-9.e+-]+)")
CLOCK = "import time as _bench_time; print('BENCH_CPU', _bench_time.process_time(), _bench_time.time())"


def timed_notebook(source: Path, target: Path) -> list[str]:
    """Write `source` as an .ipynb with a clock cell after every code cell; return each code
    cell's label (the figures it saves, or its first line)."""
    nb = jupytext.read(source)
    cells, labels = [nbformat.v4.new_code_cell(CLOCK)], []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            cells.append(nbformat.v4.new_code_cell(CLOCK))
            figures = re.findall(r'"([\w.-]+\.png)"', cell.source)
            labels.append(", ".join(figures) if figures else cell.source.strip().splitlines()[0][:40])
    nb.cells = cells
    nbformat.write(nb, target)
    return labels


def cell_times(executed: Path) -> list[tuple[float, float]]:
    """(CPU s, wall s) between consecutive clock cells."""
    nb = json.loads(executed.read_text())
    clocks = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            clocks += [(float(cpu), float(wall)) for cpu, wall in _CLOCK_LINE.findall("".join(out.get("text", "")))]
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(clocks, clocks[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", nargs="+", default=["01_weight_spectra"])
    parser.add_argument("--models", nargs="+", default=["tests/params/tiny-llama.yaml", "smollm2-135m"])
    parser.add_argument("--all-cells", action="store_true", help="list every cell, not only those saving figures")
    args = parser.parse_args()
    print("| notebook | model | cell | kernel CPU s | wall s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as tmp:
        for name in args.notebooks:
            for model in args.models:
                model = str(REPO_ROOT / model) if model.endswith(".yaml") else model
                source, executed = Path(tmp) / f"{name}.ipynb", Path(tmp) / f"{name}.out.ipynb"
                labels = timed_notebook(NOTEBOOKS_DIR / f"{name}.py", source)
                papermill.execute_notebook(str(source), str(executed), parameters={"model": model, "output_root": tmp},
                                           cwd=str(NOTEBOOKS_DIR), kernel_name="python3", progress_bar=False)
                for label, (cpu, wall) in zip(labels, cell_times(executed)):
                    if args.all_cells or label.endswith(".png") or ".png," in label:
                        print(f"| {name} | {Path(model).stem} | {label} | {cpu:.2f} | {wall:.2f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
