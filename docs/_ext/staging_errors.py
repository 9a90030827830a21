"""``.. staging-error-codes::``: every stable error ``code`` the engine raises, read from the code.

Two sources, both read at build time: the :class:`~jupyter_staging.errors.StagingError` subclasses (each
with its class-level ``code``, HTTP ``status`` and docstring), and every call in the package that raises
one of them with an explicit ``code="..."`` (such as ``archive_bomb`` or ``manifest_not_ready``), found by
walking the package's syntax trees. A new code therefore appears in the docs without editing them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

PACKAGE = "jupyter_staging"


def error_classes() -> dict[str, type[Exception]]:
    """Every subclass of ``StagingError`` defined in the package's modules, by class name."""
    errors = importlib.import_module(f"{PACKAGE}.errors")
    return {cls.__name__: cls for cls in errors.error_classes()}


def summary(cls: type) -> str:
    """The first paragraph of ``cls``'s docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def raised_codes(tree: ast.AST, classes: dict[str, type[Exception]]) -> Iterator[tuple[str, str, int]]:
    """``(code, class name, HTTP status)`` of every call in ``tree`` to one of ``classes`` with a literal
    ``code="..."`` (the status is ``status=`` when given as a literal, else the class's)."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes):
            continue
        given = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
        code, status = given.get("code"), given.get("status")
        if isinstance(code, str):
            default: int = classes[node.func.id].status  # type: ignore[attr-defined]
            yield code, node.func.id, status if isinstance(status, int) else default


def explicit_codes(classes: dict[str, type[Exception]]) -> dict[str, dict[str, int]]:
    """Codes given explicitly anywhere in the package's source: code -> {class name: HTTP status}."""
    root = Path(importlib.import_module(PACKAGE).__file__ or "").parent
    codes: dict[str, dict[str, int]] = {}
    for path in sorted(root.rglob("*.py")):
        for code, name, status in raised_codes(ast.parse(path.read_text(encoding="utf-8")), classes):
            codes.setdefault(code, {})[name] = status
    return codes


def codes_rst() -> list[str]:
    """A table: code, HTTP status, the class raising it, what it means."""
    classes = error_classes()
    rows: dict[str, tuple[str, str, str]] = {}
    for name, cls in classes.items():
        rows.setdefault(cls.code, (str(cls.status), f"``{name}``", summary(cls)))  # type: ignore[attr-defined]
    for code, raised_by in explicit_codes(classes).items():
        if code not in rows:
            names = ", ".join(f"``{name}``" for name in sorted(raised_by))
            statuses = ", ".join(str(status) for status in sorted(set(raised_by.values())))
            rows[code] = (statuses, names, f"A kind of {names}; the message says which item and why.")
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 8 22 50", ""]
    lines += ["   * - code", "     - HTTP", "     - raised as", "     - meaning"]
    for code, (status, names, meaning) in sorted(rows.items()):
        lines += [f"   * - ``{code}``", f"     - {status}", f"     - {names}", f"     - {meaning}"]
    return lines + [""]


class StagingErrorCodes(SphinxDirective):
    """The ``staging-error-codes`` directive (no arguments)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(codes_rst(), source=f"{PACKAGE}.errors"), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register ``staging-error-codes``."""
    app.add_directive("staging-error-codes", StagingErrorCodes)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
