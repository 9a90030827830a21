"""``python -m jupyter_staging.cli ...``: the same as the ``jupyter-staging`` console script."""

from jupyter_staging.cli.doctor import main

if __name__ == "__main__":
    main()
