"""Entry point `python -m utils.targets NAME ...` (what `make all` runs): see `utils.pipeline.targets`."""

from utils.pipeline.targets import main

if __name__ == "__main__":
    raise SystemExit(main())
