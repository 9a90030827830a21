"""``.. staging-doctor-checks::``: what ``jupyter staging doctor`` checks, and every fix it can print.

Read from the code at build time: the checks are :data:`jupyter_staging.cli.doctor.CHECKS`, in the order the
doctor runs them; for each module that defines checks, the page shows its docstring and a table of every
``Check(...)`` the module can return with a status other than ``ok``: the status, the message (with
``<placeholders>`` for what is filled in at run time) and the fix. A check added to ``CHECKS`` or a new
``Check(...)`` appears without editing the docs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: Statuses shown in the tables (``ok`` results are confirmations, not problems).
SHOWN = ("fail", "warn", "skip")


def check_name(function: Any) -> str:
    """The name the doctor reports for a check function, as :class:`~jupyter_staging.cli.doctor.Doctor`
    derives it for a check that fails unexpectedly: ``check_source_roots`` -> ``source roots``."""
    return function.__name__.removeprefix("check_").replace("_", " ")


#: Names assigned exactly once in the function being read, with the expression assigned.
Locals = dict[str, ast.expr]


def text_of(node: ast.expr | None, module: ModuleType, local: Locals) -> str | None:
    """The text an argument of ``Check(...)`` evaluates to: a string literal, an f-string, a
    concatenation of those, a module-level string constant or a local variable assigned once; anything
    computed otherwise is shown as ``<expression>``. None for ``None``."""
    if node is None:
        return None
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        return "".join(text_of(part, module, local) or "" for part in node.values)
    if isinstance(node, ast.FormattedValue):
        return text_of(node.value, module, local)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = text_of(node.left, module, local), text_of(node.right, module, local)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Name) and isinstance(
        local.get(node.id), (ast.Constant, ast.JoinedStr, ast.BinOp)
    ):
        return text_of(local[node.id], module, {})
    value = constant(node, module)
    return value if value is not None else placeholder(node)


def constant(node: ast.expr, module: ModuleType) -> str | None:
    """The string a module-level constant (``NAME``) or a constant of an imported module (``az.ENV_KEY``)
    holds, else None. Only UPPER_CASE names count: ``sys.prefix`` and the like depend on the machine."""
    if isinstance(node, ast.Name) and node.id.isupper():
        value = getattr(module, node.id, None)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.isupper():
        value = getattr(getattr(module, node.value.id, None), node.attr, None)
    else:
        return None
    return value if isinstance(value, str) else None


def placeholder(node: ast.expr) -> str:
    """What stands for a value filled in at run time: ``<the expression>``."""
    return f"<{ast.unparse(node)}>"


def single_assignments(function: ast.AST) -> Locals:
    """The names ``function`` assigns exactly once (``name = expression``), with their expression."""
    seen: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            seen.setdefault(node.targets[0].id, []).append(node.value)
    return {name: values[0] for name, values in seen.items() if len(values) == 1}


def argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    """Argument ``index`` of ``call``, positional or by ``keyword``."""
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def outcomes(module: ModuleType) -> list[tuple[str, str, str]]:
    """Every ``Check(...)`` of ``module`` whose status is in :data:`SHOWN`: ``(status, message, fix)``."""
    tree = ast.parse(inspect.getsource(module))
    rows: list[tuple[str, str, str]] = []
    for function in tree.body:
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            rows += function_outcomes(function, module)
    order = {status: i for i, status in enumerate(SHOWN)}
    return sorted(rows, key=lambda row: order[row[0]])


def function_outcomes(function: ast.AST, module: ModuleType) -> list[tuple[str, str, str]]:
    """The ``(status, message, fix)`` of every ``Check(...)`` call in ``function``, in source order."""
    local = single_assignments(function)
    rows = []
    for node in ast.walk(function):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Check"):
            continue
        status = text_of(argument(node, 1, "status"), module, local)
        if status in SHOWN:
            message = text_of(argument(node, 2, "message"), module, local) or ""
            fix = text_of(argument(node, 3, "fix"), module, local) or ""
            rows.append((status or "", message, fix))
    return rows


#: A run-time placeholder in a rendered message: ``<expression>``.
PLACEHOLDER = re.compile(r"(<[^<>]+>)")
#: Characters reStructuredText could read as markup (``@`` starts a standalone e-mail link), escaped.
MARKUP = re.compile(r"([\\*`|_\[\]<>:@])")


def cell(text: str) -> str:
    """``text`` for a table cell: plain (wrapping) text, its ``<placeholders>`` as inline literals (between
    escaped spaces, which reStructuredText drops, so a literal may touch the text around it)."""
    parts = PLACEHOLDER.split(" ".join(text.split()))
    return "".join(
        f"\\ ``{part}``\\ " if PLACEHOLDER.fullmatch(part) else MARKUP.sub(r"\\\1", part) for part in parts
    )


def module_rst(module: ModuleType, names: list[str]) -> list[str]:
    """A section for one checks module: the check names, its docstring, the table of outcomes."""
    title = ", ".join(f"``{name}``" for name in names)
    lines = [title, "^" * (len(title) + 4), ""]
    lines += (inspect.getdoc(module) or "").splitlines() + [""]
    rows = outcomes(module)
    if not rows:
        return lines
    lines += [".. list-table::", "   :header-rows: 1", "   :widths: 8 46 46", "", "   * - status"]
    lines += ["     - what the doctor found", "     - the fix it prints"]
    for status, message, fix in rows:
        lines += [f"   * - {status}", f"     - {cell(message)}", f"     - {cell(fix)}"]
    return lines + [""]


def checks_rst() -> list[str]:
    """reStructuredText for every check, grouped by the module that defines it, in the doctor's order."""
    doctor = importlib.import_module("jupyter_staging.cli.doctor")
    grouped: dict[str, list[str]] = {}
    for function in doctor.CHECKS:
        grouped.setdefault(function.__module__, []).append(check_name(function))
    lines: list[str] = []
    for module_name, names in grouped.items():
        lines += module_rst(importlib.import_module(module_name), names)
    return lines


class StagingDoctorChecks(SphinxDirective):
    """The ``staging-doctor-checks`` directive (no arguments)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        nested_parse_with_titles(
            self.state, StringList(checks_rst(), source="jupyter_staging.cli"), container
        )
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register ``staging-doctor-checks``."""
    app.add_directive("staging-doctor-checks", StagingDoctorChecks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
