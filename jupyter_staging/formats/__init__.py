"""Tabular formats: format detection, streaming readers (CSV, FITS, VOTable, ECSV, Parquet), the Parquet part
writer and Arrow metadata; :func:`jupyter_staging.formats.convert.convert_to_parquet` ties them together.

Arrow's memory: the pyarrow wheels allocate through mimalloc, which keeps the pages of freed buffers for
``MIMALLOC_PURGE_DELAY`` milliseconds (1,000 in pyarrow 26's; ``MIMALLOC_VERBOSE=1`` prints its options) and
purges them only when the thread that owns them allocates again (mimalloc's README, "Environment Options"). A
conversion frees whole parts' worth of batches on threads that then wait, so about 90 MiB of freed pages
stayed in a 500 MB CSV conversion's peak RSS (530 MiB; about 440 MiB with them purged, for about 7 % more
time: the pages are faulted in again). mimalloc reads its options once, when ``libarrow`` loads, from the
environment only: the first import of this package, which comes before any of its modules imports pyarrow,
sets ``MIMALLOC_PURGE_DELAY=0`` for that load and takes it out of the environment again (the processes this
one starts, such as kernels, are left as they were). Nothing is changed when pyarrow is loaded already or when
``MIMALLOC_PURGE_DELAY`` is set (a site sets it, to ``1000`` say, to keep mimalloc's own delay).
:mod:`jupyter_staging.engine` and :mod:`jupyter_staging.kernel` import this package first.
"""

from __future__ import annotations

import os
import sys

#: mimalloc's option (its README, "Environment Options"): milliseconds before freed pages are purged.
PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY"
#: The names mimalloc reads that option from (any case): its own and the older ``reset_delay``.
_SITE_SETTINGS = {"mimalloc_purge_delay", "mimalloc_reset_delay"}


def _purge_freed_arrow_memory() -> bool:
    """Load pyarrow with mimalloc set to purge freed pages at once (see the module's docstring), unless
    pyarrow is loaded already or the site set the delay (``MIMALLOC_PURGE_DELAY`` or the older
    ``MIMALLOC_RESET_DELAY``, in any case, as mimalloc reads them). Returns whether it did; the environment
    is left as it was either way. The variable is in the environment while pyarrow loads: a process
    another thread starts in that instant gets it (the server loads this package on its main thread, as it
    starts, before any kernel)."""
    if "pyarrow" in sys.modules or any(name.lower() in _SITE_SETTINGS for name in os.environ):
        return False
    os.environ[PURGE_DELAY_VARIABLE] = "0"
    try:
        import pyarrow

        pyarrow.default_memory_pool()  # the allocator is set up, its options read
    finally:
        os.environ.pop(PURGE_DELAY_VARIABLE, None)
    return True


#: Whether this process loaded pyarrow with freed pages purged at once.
PURGED_AT_ONCE = _purge_freed_arrow_memory()
