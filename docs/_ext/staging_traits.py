"""``.. staging-traits:: module.Class``: every configurable traitlet of a class, generated at build time.

Each trait the class itself defines becomes a ``confval`` entry (name ``Class.trait``, its type, its default,
its ``help`` text as reStructuredText); the traits it inherits (from ``ExtensionApp``, ``Application``) are
listed by name, with the class that defines them. Nothing is written by hand, so a new trait appears in the
docs the moment it is added to the class.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from traitlets import DefaultHandler, HasTraits, TraitType


def load_class(path: str) -> type[HasTraits]:
    """``"package.module.Class"`` -> the class; raises ``ValueError`` when it is not a ``HasTraits``."""
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (inspect.isclass(cls) and issubclass(cls, HasTraits)):
        raise ValueError(f"{path} is not a traitlets HasTraits class")
    return cls


def computed_defaults(cls: type[HasTraits]) -> set[str]:
    """Names of the traits whose default a ``@default(...)`` method computes at run time."""
    names: set[str] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, DefaultHandler):
                names.add(value.trait_name)
    return names


def trait_type(trait: TraitType[Any, Any]) -> str:
    """The trait's type as a reader wants it: ``List(Unicode)``, ``Int``, ``Type``..."""
    name = type(trait).__name__
    inner = getattr(trait, "_trait", None)
    return f"{name}({type(inner).__name__})" if isinstance(inner, TraitType) else name


def trait_default(trait: TraitType[Any, Any], computed: bool) -> str:
    """The default as inline literal text, or a note that it is computed when the application starts."""
    if computed:
        return "computed at start (see the description)"
    text = trait.default_value_repr()
    return f"``{text}``"


def trait_range(trait: TraitType[Any, Any]) -> str | None:
    """The values a number trait takes, from its ``min`` / ``max`` (``1 to 32``, ``at least 0``), or None
    when it has neither; a value outside is refused when the application starts."""
    low, high = getattr(trait, "min", None), getattr(trait, "max", None)
    low = None if low is not None and math.isinf(low) else low  # a Float's default bounds: no range
    high = None if high is not None and math.isinf(high) else high
    if low is not None and high is not None:
        return f"``{low}`` to ``{high}``"
    if low is not None:
        return f"at least ``{low}``"
    if high is not None:
        return f"at most ``{high}``"
    return None


def trait_lines(cls: type[HasTraits], name: str, trait: TraitType[Any, Any], computed: bool) -> list[str]:
    """reStructuredText of one ``confval`` entry (with its range, for a number trait bounded)."""
    lines = [
        f".. confval:: {cls.__name__}.{name}",
        f"   :type: ``{trait_type(trait)}``",
        f"   :default: {trait_default(trait, computed)}",
        "",
    ]
    bounds = trait_range(trait)
    if bounds:
        lines += [f"   Range: {bounds}.", ""]
    help_text = inspect.cleandoc(trait.help) if trait.help else "(no description)"
    lines += [f"   {line}" if line else "" for line in help_text.splitlines()]
    lines.append("")
    return lines


def summary_rst(cls: type[HasTraits], own: dict[str, TraitType[Any, Any]], computed: set[str]) -> list[str]:
    """A table of the class's own traits, one line each (name linked to its entry, type, default)."""
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 40 20 40", ""]
    lines += ["   * - setting", "     - type", "     - default"]
    for name in sorted(own):
        default = "computed" if name in computed else trait_default(own[name], False)
        lines += [
            f"   * - :confval:`{cls.__name__}.{name}`",
            f"     - ``{trait_type(own[name])}``",
            f"     - {default}",
        ]
    return lines + [""]


def traits_rst(cls: type[HasTraits]) -> list[str]:
    """reStructuredText for every configurable trait of ``cls``: its own in full, inherited ones by name."""
    own = cls.class_own_traits(config=True)
    computed = computed_defaults(cls)
    lines = summary_rst(cls, own, computed)
    for name in sorted(own):
        lines += trait_lines(cls, name, own[name], name in computed)
    inherited: dict[str, list[str]] = {}
    for name, trait in sorted(cls.class_traits(config=True).items()):
        if name not in own:
            owner = trait.this_class.__name__ if trait.this_class else "?"
            inherited.setdefault(owner, []).append(f"``{name}``")
    for owner, names in sorted(inherited.items()):
        lines += [f"Inherited from ``{owner}``: {', '.join(names)}.", ""]
    return lines


class StagingTraits(SphinxDirective):
    """The ``staging-traits`` directive: one argument, the dotted path of a traitlets class."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        cls = load_class(self.arguments[0])
        container = nodes.container()
        self.state.nested_parse(StringList(traits_rst(cls), source=self.arguments[0]), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register ``staging-traits``."""
    app.add_directive("staging-traits", StagingTraits)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
