"""``python -m jupyter_staging.cli ...``: the same as the ``jupyter-staging`` console script."""

from __future__ import annotations

from jupyter_staging.cli.main import main

if __name__ == "__main__":
    main()
