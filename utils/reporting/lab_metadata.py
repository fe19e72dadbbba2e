"""The notebook metadata JupyterLab writes when it opens a notebook on the python3 kernel.

JupyterLab sets `kernelspec` and `language_info` from the kernel as a notebook opens, and marks
the notebook modified when they differ from what the file holds. The notebooks' jupytext headers
carry the kernelspec (display name "Python 3 (ipykernel)"); `language_info` names this Python's
version, so it is not in the sources: `make` adds it when it writes `notebooks/*.ipynb`

    jupytext --to ipynb --update-metadata "$(python -m utils.reporting.lab_metadata)" ...

Standard library only (ipykernel reports the same dict; tests/test_html.py checks that).
"""

from __future__ import annotations

import json
import sys


def language_info() -> dict:
    """ipykernel's `IPythonKernel.language_info` for this interpreter."""
    return {
        "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": f"ipython{sys.version_info[0]}",
        "version": sys.version.split()[0],
    }


def main() -> int:
    print(json.dumps({"language_info": language_info()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
