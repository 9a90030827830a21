"""engine.

:mod:`jupyter_staging.formats` is imported first: it loads pyarrow with Arrow's freed memory purged at once,
which takes effect only before anything loads pyarrow (``engine.conversion`` imports it at its top).
"""

import jupyter_staging.formats  # noqa: F401  (before pyarrow: see above)
