"""A screenshot of the results index for the README: `<output>/index.html` rendered to
`<output>/index.png` by headless Chromium, when one is installed (`make` runs this after the index).

    python -m utils.reporting.screenshot [output]

Without a Chromium it prints one line and exits 0: the screenshot is a convenience, not a result.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from utils.atomic_io import atomic_path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 1600)  # px: the page's 1100 px column and its first screens
TIMEOUT_S = 120


def browser() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(page: Path, target: Path, executable: str) -> Path:
    """Render `page` (an HTML file) to the PNG `target`, WINDOW wide and high, written atomically."""
    with atomic_path(target) as tmp:
        command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", "--disable-extensions", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                   f"--screenshot={tmp}", page.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0 or not tmp.stat().st_size:
            raise RuntimeError(f"{executable} could not render {page}: {done.stderr.strip()[-500:]}")
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "output")
    page, executable = root / "index.html", browser()
    if not page.exists():
        print(f"no {page}: run `make` first", file=sys.stderr)
        return 2
    if executable is None:
        print(f"screenshot skipped: no Chromium installed ({', '.join(BROWSERS)}; e.g. apt-get install chromium)")
        return 0
    print(f"screenshot of the index: {screenshot(page, root / 'index.png', executable)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
