"""What this process runs under: a plain script, terminal IPython, or a Jupyter kernel whose frontend
renders widgets. Importing this module imports neither IPython nor ipywidgets.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

__all__ = ["has_widget_frontend", "in_ipython", "shown_live"]

#: The objects a live widget shows in the cell now running (emptied when an execution starts and ends).
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


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


def shown_live(obj: Any) -> None:
    """Record that a live widget of ``obj`` (a job) is in the output of the cell now running, so that the
    cell's result does not show ``obj`` again: ``%stage URL`` on its own line (or ``job`` as the cell's last
    line) would add a table of the job as it was when submitted, "queued" for good under a widget that says
    "succeeded". Shown in a later cell, ``obj`` is a table of the job as it is then, as before; so is a job
    whose widget was shown outside a cell (an ipywidgets button's callback): the record ends when the next
    execution starts. Outside IPython this does nothing."""
    shell = _shell()
    if shell is None:
        return
    _LIVE.add(obj)
    printers = shell.display_formatter.ipython_display_formatter
    if type(obj) in printers.type_printers:
        return
    printers.for_type(type(obj), _display_unless_live)

    def fresh(*_: Any) -> None:  # an execution starts: no widget of it shown yet
        _LIVE.clear()

    def forget(*_: Any) -> None:  # after it (a silent one too): the type is displayed its own way again
        _LIVE.clear()
        printers.type_printers.pop(type(obj), None)
        shell.events.unregister("pre_execute", fresh)
        shell.events.unregister("post_execute", forget)

    shell.events.register("pre_execute", fresh)
    shell.events.register("post_execute", forget)


def _display_unless_live(obj: Any) -> None:
    """Show ``obj`` as its own ``_repr_html_`` and ``repr`` do, unless a live widget of it is in this cell."""
    if obj in _LIVE:
        return
    from IPython.display import display  # IPython runs: a shell called this

    display({"text/plain": repr(obj), "text/html": obj._repr_html_()}, raw=True)
