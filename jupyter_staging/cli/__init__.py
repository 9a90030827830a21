"""``jupyter staging ...``: the command line of jupyter_staging (the doctor and its checks)."""
