"""Entry point `python -m utils.index [OUTPUT]`: see `utils.reporting.index`."""

from utils.reporting.index import main

if __name__ == "__main__":
    raise SystemExit(main())
