"""``.. staging-error-codes::``: every stable error ``code`` the engine raises, read from the code.

Read at build time: the :class:`~jupyter_staging.errors.StagingError` subclasses (each with its
class-level ``code``, HTTP ``status`` and docstring); every call in the package that makes one of them with
an explicit ``code=`` (such as ``archive_bomb`` or ``manifest_not_ready``), found by walking the package's
syntax trees: a literal (also in ``str(...)``), either branch of ``"a" if ... else "b"``, the fallback of
``x or "b"``, a local variable given such a value, or a literal passed to a helper whose ``code`` parameter
goes on to the error (``_refuse(..., "unsafe_archive_path")``); the codes a request's validators give
(:data:`jupyter_staging.engine.models.ERROR_CODES`, such as ``invalid_ttl``); and the codes of answers the
web framework gives itself (:data:`jupyter_staging.server.web.DEFAULT_CODES`, such as ``not_found``). A new
code therefore appears in the docs without editing them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from http import HTTPStatus
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


def literal_codes(node: ast.AST | None) -> list[str]:
    """The strings ``node`` can evaluate to as far as its syntax says: a literal, both branches of a
    conditional expression, the literal operands of ``or``, through ``str(...)``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return literal_codes(node.body) + literal_codes(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [code for value in node.values for code in literal_codes(value)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
        return literal_codes(node.args[0])
    return []


def assigned_codes(function: ast.AST, name: str) -> list[str]:
    """The literal strings assigned to the local variable ``name`` anywhere in ``function``."""
    found: list[str] = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign):
            continue
        if any(isinstance(target, ast.Name) and target.id == name for target in node.targets):
            found += literal_codes(node.value)
    return found


Classes = dict[str, type[Exception]]
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def error_calls(tree: ast.AST, classes: Classes) -> Iterator[tuple[ast.AST, ast.Call, int]]:
    """``(enclosing function or module, call, HTTP status)`` of every call in ``tree`` to one of ``classes``
    with a ``code=`` keyword (the status is ``status=`` when given as a literal, else the class's)."""
    scopes: list[ast.AST] = [tree] + [n for n in ast.walk(tree) if isinstance(n, FUNCTIONS)]
    for scope in scopes:
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id not in classes:
                continue
            given = {k.arg: k.value for k in node.keywords}
            if "code" not in given:
                continue
            status = given.get("status")
            default: int = classes[node.func.id].status  # type: ignore[attr-defined]
            literal = isinstance(status, ast.Constant) and isinstance(status.value, int)
            yield scope, node, status.value if literal else default  # type: ignore[union-attr]


def raised_codes(tree: ast.AST, classes: dict[str, type[Exception]]) -> Iterator[tuple[str, str, int]]:
    """``(code, class name, HTTP status)`` of every code a call in ``tree`` gives one of ``classes`` (see the
    module's docstring), including the literals passed to the helpers of ``tree`` that pass a ``code``
    parameter on (within one module)."""
    helpers: dict[str, tuple[int, str, int]] = {}  # function -> (position of `code`, class name, status)
    seen: set[tuple[str, str, int]] = set()
    for scope, call, status in error_calls(tree, classes):
        name = call.func.id  # type: ignore[attr-defined]
        value = next(k.value for k in call.keywords if k.arg == "code")
        codes = literal_codes(value)
        if isinstance(value, ast.Name):
            codes += assigned_codes(scope, value.id)
            params = [a.arg for a in scope.args.args] if isinstance(scope, FUNCTIONS) else []
            if value.id in params and isinstance(scope, FUNCTIONS):
                helpers[scope.name] = (params.index(value.id), name, status)
        seen.update((code, name, status) for code in codes)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
            position, name, status = helpers[node.func.id]
            args = node.args[position : position + 1] + [k.value for k in node.keywords if k.arg == "code"]
            seen.update((code, name, status) for arg in args for code in literal_codes(arg))
    yield from sorted(seen)


def explicit_codes(classes: dict[str, type[Exception]]) -> dict[str, dict[str, int]]:
    """Codes given explicitly anywhere in the package's source: code -> {class name: HTTP status}."""
    root = Path(importlib.import_module(PACKAGE).__file__ or "").parent
    codes: dict[str, dict[str, int]] = {}
    for path in sorted(root.rglob("*.py")):
        for code, name, status in raised_codes(ast.parse(path.read_text(encoding="utf-8")), classes):
            codes.setdefault(code, {})[name] = status
    return codes


def other_codes() -> dict[str, tuple[str, str, str]]:
    """code -> (HTTP status, raised as, meaning) of the codes no ``StagingError`` call names: those of a
    request's validators and those of answers the web framework gives itself."""
    validators = importlib.import_module(f"{PACKAGE}.engine.models").ERROR_CODES
    framework = importlib.import_module(f"{PACKAGE}.server.web").DEFAULT_CODES
    meaning = "A field of the request refused by its check; the message names the field."
    rows = {code: ("400", "``InvalidRequest``", meaning) for code in validators}
    for status, code in framework.items():
        phrase = HTTPStatus(status).phrase
        said = f"The web framework's own answer {status} ({phrase}), not a staging check."
        rows.setdefault(code, (str(status), "(the web framework)", said))
    return rows


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
    for code, row in other_codes().items():
        rows.setdefault(code, row)
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
