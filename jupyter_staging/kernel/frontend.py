"""What this process runs under: a plain script, terminal IPython, or a Jupyter kernel whose frontend
renders widgets. Importing this module imports neither IPython nor ipywidgets.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["has_widget_frontend", "in_ipython"]


def in_ipython() -> bool:
    """True when running under IPython (a terminal or a kernel), False in a plain script."""
    return _shell() is not None


def has_widget_frontend() -> bool:
    """True inside a Jupyter kernel (a frontend renders widgets); False in terminal IPython or a script."""
    shell = _shell()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _shell() -> Any:
    """The running IPython shell, or None. A process that has not imported IPython runs none, so IPython
    is looked up in ``sys.modules`` rather than imported."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None
