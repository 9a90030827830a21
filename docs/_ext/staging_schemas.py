"""``.. staging-openapi-schemas:: path/to/openapi.yaml``: the ``components.schemas`` of an OpenAPI 3.1
description as tables, one per schema (property, type, required, default, description).

sphinxcontrib-openapi renders the paths; this renders the request and answer bodies they refer to, read from
the same YAML at build time. ``:prefix:`` keeps the link targets of two descriptions apart
(``schema-server-createjob``); a ``$ref`` becomes a link to its schema's table.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def label(prefix: str, name: str) -> str:
    """The link target of schema ``name``: ``schema-<prefix>-<name>``, lowercase."""
    return f"schema-{prefix}-{name}".lower()


def type_of(schema: dict[str, Any], prefix: str) -> str:
    """A schema's type as reStructuredText: ``string``, ``integer | null``, a link for a ``$ref``,
    ``array of X``, ``one of "a", "b"``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f":ref:`{name} <{label(prefix, name)}>`"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_of(option, prefix) for option in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(f"``{json.dumps(value)}``" for value in schema["enum"])
    if "const" in schema:
        return f"``{json.dumps(schema['const'])}``"
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(kind)
    if kind == "array" and "items" in schema:
        return f"array of {type_of(schema['items'], prefix)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'], prefix)}"
    return str(kind)


def one_line(text: str) -> str:
    """``text`` on one line, for a table cell."""
    return " ".join(str(text).split())


def schema_rst(name: str, schema: dict[str, Any], prefix: str) -> list[str]:
    """One schema: a link target, a rubric with its name, its description, its properties' table."""
    lines = [f".. _{label(prefix, name)}:", "", f".. rubric:: {name}", ""]
    if schema.get("description"):  # the model's docstring: reStructuredText
        lines += inspect.cleandoc(schema["description"]).splitlines() + [""]
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return lines + [f"Type: {type_of(schema, prefix)}", ""]
    required = set(schema.get("required", []))
    described = any(value.get("description") for value in properties.values())
    header = ["property", "type", "required", "default"] + (["description"] if described else [])
    widths = "20 30 8 12 30" if described else "25 45 10 20"
    lines += [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    lines += [f"   {'*' if i == 0 else ' '} - {title}" for i, title in enumerate(header)]
    for key, value in properties.items():
        default = f"``{json.dumps(value['default'])}``" if "default" in value else ""
        cells = [f"``{key}``", type_of(value, prefix), "yes" if key in required else "", default]
        if described:
            cells.append(one_line(value.get("description", "")))
        lines += [f"   {'*' if i == 0 else ' '} - {text}" for i, text in enumerate(cells)]
    return lines + [""]


class StagingOpenAPISchemas(SphinxDirective):
    """The ``staging-openapi-schemas`` directive: a path relative to the document, and ``:prefix:``."""

    required_arguments = 1
    option_spec = {"prefix": directives.unchanged_required}  # noqa: RUF012 - docutils' API

    def run(self) -> list[nodes.Node]:
        _, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(path)
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        prefix = self.options.get("prefix", "api")
        lines: list[str] = []
        for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
            lines += schema_rst(name, schema, prefix)
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=path), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register ``staging-openapi-schemas``."""
    app.add_directive("staging-openapi-schemas", StagingOpenAPISchemas)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
