"""Compare two output folders of the same notebooks: what a refactoring must leave unchanged.

    python -m utils.pipeline.compare_outputs output-before/smollm2-135m output/smollm2-135m

Tables (CSV), arrays (NPY), checkpoints (safetensors, JSON) are compared byte for byte and
report.md as text; executed notebooks, figures and HTML are left out (they hold timings, or
change with figure layout). Exits 1 and lists every file that differs or exists on one side only.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

COMPARED = (".csv", ".npy", ".md", ".json", ".safetensors", ".txt")
SKIPPED_NAMES = ("index.md",)


def compared_files(root: Path) -> set[str]:
    """Relative paths of the files under `root` that a comparison covers."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.suffix in COMPARED and p.name not in SKIPPED_NAMES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def differences(before: Path, after: Path, context: int = 1) -> list[str]:
    """One entry per differing file (with a short unified diff for reports)."""
    a, b = compared_files(before), compared_files(after)
    found = [f"only in {before}: {f}" for f in sorted(a - b)] + [f"only in {after}: {f}" for f in sorted(b - a)]
    for rel in sorted(a & b):
        x, y = (before / rel).read_bytes(), (after / rel).read_bytes()
        if x == y:
            continue
        if rel.endswith(".md"):
            diff = difflib.unified_diff(x.decode().splitlines(), y.decode().splitlines(), lineterm="", n=context)
            found.append(f"{rel} differs:\n" + "\n".join(list(diff)[2:40]))
        else:
            found.append(f"{rel} differs ({len(x)} vs {len(y)} bytes)")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args(argv)
    found = differences(args.before, args.after)
    n = len(compared_files(args.before) | compared_files(args.after))
    print("\n".join(found) if found else f"identical: {n} files")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
