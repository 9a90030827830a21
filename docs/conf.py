"""Sphinx configuration of the jupyter_staging documentation (MyST Markdown, pydata-sphinx-theme).

Build: ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``). The configuration,
REST and troubleshooting references are generated at build time from the code (``docs/_ext``) and from the
OpenAPI descriptions shipped in the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the package itself, when the docs are built from a checkout

from jupyter_staging._version import __version__  # noqa: E402 - after the path set-up above

project = "jupyter_staging"
author = "the jupyter_staging contributors"
copyright = "the jupyter_staging contributors, BSD-3-Clause"  # noqa: A001 - Sphinx's setting name
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib.openapi",
    "staging_traits",
    "staging_doctor",
    "staging_errors",
    "staging_schemas",
    "staging_napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
root_doc = "index"
# Commands and settings are quoted as they are typed: no curly quotes, no "--" turned into a dash.
smartquotes = False

# MyST: ::: fences, definition and field lists, anchors for headings down to ### (hub.md#zero-to-jupyterhub).
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# autodoc: members in source order, type hints in the description, no imported-member duplicates.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False

html_theme = "pydata_sphinx_theme"
html_title = f"jupyter_staging {version}"
html_theme_options = {
    "navbar_align": "left",
    "navbar_persistent": ["search-button"],
    "header_links_before_dropdown": 6,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
}
# Pages without sub-pages have no section navigation: no empty left sidebar for them.
html_sidebars = {page: [] for page in ("index", "getting-started", "panel", "security", "troubleshooting")}
html_show_sourcelink = False
