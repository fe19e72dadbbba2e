"""Entry point `python -m utils.run NOTEBOOK MODEL [-p name=value ...]`: see `utils.pipeline.run`."""

from utils.pipeline.run import main

if __name__ == "__main__":
    raise SystemExit(main())
