"""The notebook side: api (stage, list_jobs, get_job, resolve, use_local, use_server), job (Job, Chunk),
backends and discovery, magics (``%stage``), widgets, and the formatting, paths and frontend helpers."""

import jupyter_staging.formats  # noqa: F401  (loads pyarrow with Arrow's freed memory purged at once: first)
