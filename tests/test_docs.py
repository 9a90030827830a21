"""The documentation site builds with warnings as errors, and its generated pages cover the code.

`make docs` runs the same ``sphinx-build -W --keep-going``; this test builds into a temporary folder so that
`make test` catches a broken page, a docstring autodoc cannot read, or a setting, endpoint or doctor check
that the generated reference pages lost.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jupyter_staging.cli.doctor import CHECKS
from jupyter_staging.errors import InsufficientSpace, PathNotAllowed, StagingError
from jupyter_staging.hub.app import StagingHub
from jupyter_staging.server.app import StagingApp

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The modules the docs extra brings; the test installs the extra when one is missing.
DOCS_MODULES = ("sphinx", "myst_parser", "pydata_sphinx_theme", "sphinxcontrib.openapi")


def docs_extra_installed() -> bool:
    """Whether every module of :data:`DOCS_MODULES` can be imported here."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in DOCS_MODULES)
    except ModuleNotFoundError:  # a missing parent package (sphinxcontrib)
        return False


def ensure_docs_extra() -> None:
    """Install the ``docs`` extra's requirements (as the installed package's metadata lists them) into this
    environment when a module of it is missing."""
    if docs_extra_installed():
        return
    requires = importlib.metadata.requires("jupyter_staging") or []
    wanted = [r.split(";")[0].strip() for r in requires if re.search(r"extra\s*==\s*['\"]docs['\"]", r)]
    assert wanted, "pyproject.toml has no docs extra (reinstall the package: make setup)"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)


def texts(html: str, pattern: str) -> list[str]:
    """The text (tags removed, spaces collapsed) of every match of ``pattern``'s first group in ``html``."""
    return [" ".join(re.sub(r"<[^>]+>", " ", m).split()) for m in re.findall(pattern, html, flags=re.S)]


def resource_anchor(method: str, path: str) -> str:
    """The HTML id sphinxcontrib-httpdomain gives an operation: ``GET /jobs/{id}`` -> ``get--jobs-id``."""
    return method.lower() + "-" + re.sub(r"[<>:/]", "-", re.sub(r"[{}]", "", path))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from docs/ with ``-W --keep-going`` into a temporary folder."""
    ensure_docs_extra()
    out = tmp_path_factory.mktemp("docs")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    return out / "html"


def test_every_page_is_built(site: Path) -> None:
    pages = {p.relative_to(DOCS).with_suffix(".html") for p in DOCS.rglob("*.md") if "_build" not in p.parts}
    missing = [str(page) for page in pages if not (site / page).is_file()]
    assert not missing
    assert "jupyter_staging.kernel.api.stage" in (site / "reference" / "python.html").read_text()


def test_configuration_lists_every_setting(site: Path) -> None:
    html = (site / "reference" / "configuration.html").read_text()
    for cls in (StagingApp, StagingHub):
        names = cls.class_own_traits(config=True)
        assert names, cls
        missing = [name for name in names if f'id="confval-{cls.__name__}.{name}"' not in html]
        assert not missing, f"{cls.__name__}: {missing}"
    # A bounded setting states its range (a value outside is refused at start: staging_misconfigured).
    for name, high in (("streams_per_file", 32), ("concurrent_items", 256)):
        entry = html.split(f'id="confval-StagingApp.{name}"')[1].split('id="confval-')[0]
        text = " ".join(re.sub(r"<[^>]+>", " ", entry).split())
        assert f"Range: 1 to {high} ." in text, text[:600]


def test_rest_reference_renders_every_operation_and_body(site: Path) -> None:
    html = (site / "reference" / "rest.html").read_text()
    schemas = set(texts(html, r'<p class="rubric"[^>]*>(.*?)</p>'))
    for spec_path in ("jupyter_staging/server/openapi.yaml", "jupyter_staging/hub/openapi.yaml"):
        spec = yaml.safe_load((ROOT / spec_path).read_text())
        for path, operations in spec["paths"].items():
            for method in set(operations) & {"get", "post", "put", "patch", "delete"}:
                assert f'id="{resource_anchor(method, path)}"' in html, (spec_path, method, path)
        assert set(spec["components"]["schemas"]) <= schemas, spec_path


def test_troubleshooting_lists_every_doctor_check_and_error_code(site: Path) -> None:
    html = (site / "troubleshooting.html").read_text()
    headings = " | ".join(texts(html, r"<h4[^>]*>(.*?)</h4>"))
    for check in CHECKS:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        assert name in headings, name
    codes = set(texts(html, r"<td><p><code[^>]*>(.*?)</code></p></td>"))
    assert {StagingError.code, PathNotAllowed.code, InsufficientSpace.code} <= codes
    # Codes no class names and no call gives as a literal: through a helper's argument
    # (unsafe_archive_path), a local variable (hardlink_failed), a request's validator (invalid_ttl), the
    # web framework (not_found, method_not_allowed), a fallback (server_error).
    given_indirectly = {"unsafe_archive_path", "hardlink_failed", "symlink_failed", "invalid_ttl"}
    assert given_indirectly | {"not_found", "method_not_allowed", "server_error"} <= codes
