"""Keep prose that follows a NumPy-style ``Parameters`` section out of the parameter list.

Some docstrings end their ``Parameters`` section with a plain paragraph ("Returns the :class:`Job`. Raises
...") instead of ``Returns`` / ``Raises`` sections. NumPy style (and so ``sphinx.ext.napoleon``) reads every
unindented line of a section as one more parameter, which renders that paragraph as a list of bogus
parameters and breaks the field list. Before napoleon runs, this hook puts a ``Notes`` header in front of
such a paragraph: a paragraph after a blank line, inside ``Parameters``, whose first line is not a parameter
(``name:``, ``name : type`` or ``a, b:``). Docstrings without that pattern pass through unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from sphinx.application import Sphinx

#: A parameter line of a NumPy-style section: ``name``, ``name:``, ``name : type``, ``a, b:``, ``**kwargs``.
PARAMETER = re.compile(r"^\*{0,2}\w+(\s*,\s*\*{0,2}\w+)*\s*(:.*)?$")
#: The underline of a NumPy-style section header.
UNDERLINE = re.compile(r"^-{3,}\s*$")


def close_parameter_prose(lines: list[str]) -> None:
    """Insert ``Notes`` before a prose paragraph that follows a ``Parameters`` section (in place)."""
    in_parameters = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if index + 1 < len(lines) and UNDERLINE.match(lines[index + 1]) and line.strip():
            in_parameters = line.strip() in ("Parameters", "Other Parameters")
            index += 2
            continue
        after_blank = index > 0 and not lines[index - 1].strip()
        if in_parameters and after_blank and line and not line[0].isspace() and not PARAMETER.match(line):
            lines[index:index] = ["Notes", "-----"]
            in_parameters = False
            index += 2
        index += 1


def process_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """``autodoc-process-docstring`` handler, connected before napoleon's."""
    close_parameter_prose(lines)


def setup(app: Sphinx) -> dict[str, Any]:
    """Connect the hook at a priority that runs before ``sphinx.ext.napoleon`` (500)."""
    app.connect("autodoc-process-docstring", process_docstring, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
