"""A real ``jupyter lab`` with the staging panel, and Debian's chromium driven by Playwright.

Everything is module-scoped: one server and one browser page serve all the UI tests of a module, which
build on each other the way a user's session does. The tests skip (never fail) when chromium, Python
Playwright or the built extension is missing; ``scripts/ci-ui-deps.sh`` installs the first two and
``pip install -e .`` builds the third.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.groups import skip_group
from tests.helpers.jupyter import JupyterServerProcess

#: Debian's chromium: $JUPYTER_STAGING_CHROMIUM, else found on PATH (a missing one skips the ui group).
CHROMIUM = Path(
    os.environ.get("JUPYTER_STAGING_CHROMIUM") or shutil.which("chromium") or "chromium-not-on-PATH"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
#: Where the extension is built (``jlpm build:prod`` in labextension/, or the install-time hook).
BUILT_EXTENSION = REPO / "jupyter_staging" / "labextension"
INSTALLED_EXTENSION = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyter-staging"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"

#: JupyterLab settings that keep pop-ups (news, update checks) out of the way of the tests.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # Quick refreshes, so polling fallbacks and the job view are exercised within the tests' waits.
    "jupyter-staging/plugin.jupyterlab-settings": {"refreshInterval": 1},
}


def _extension_to_test() -> Path | None:
    """The repository's own build if there is one (what the developer just built), else the installed one."""
    for candidate in (BUILT_EXTENSION, INSTALLED_EXTENSION):
        if (candidate / "package.json").is_file() and (candidate / "static" / "style.js").is_file():
            return candidate
    return None


class JupyterLabProcess(JupyterServerProcess):
    """``jupyter lab`` (rather than ``jupyter server``) with the staging server extension and the panel.

    The extension under test is linked into the private ``JUPYTER_DATA_DIR`` (searched before
    ``sys.prefix``), so a fresh ``jlpm build:prod`` is what the browser gets.
    """

    def __init__(self, root_dir: Path, state_dir: Path, extension: Path) -> None:
        super().__init__(root_dir, state_dir)
        self.extension = extension

    app_module = "jupyterlab"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--ServerApp.allow_unauthenticated_access=False",
            "--LabApp.expose_app_in_browser=True",
        ]

    def prepare(self) -> None:
        # jupyter_core >= 5 in a venv searches the venv's share/jupyter before JUPYTER_DATA_DIR: without
        # this the lab would load the copy installed by `pip install -e .`, not the build under test.
        self.env["JUPYTER_PREFER_ENV_PATH"] = "0"
        data = Path(self.env["JUPYTER_DATA_DIR"])
        link = data / "labextensions" / "jupyter-staging"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(self.extension, target_is_directory=True)
        settings = Path(self.env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings"
        for name, values in USER_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))

    def start(self, timeout: float = 90.0) -> None:
        super().start(timeout)

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}{path}?token={self.token}"


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"chromium is not on PATH ({CHROMIUM}; run scripts/ci-ui-deps.sh)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (run scripts/ci-ui-deps.sh)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (pip install -e '.[lab]')"
    if _extension_to_test() is None:
        return "the labextension is not built (pip install -e . or jlpm build:prod in labextension/)"
    return None


@pytest.fixture
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """pytest-jupyter's autouse loop, made private here: its version adopts the current event loop, which
    under Playwright's sync API is Playwright's own (running) loop, and then closes it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def jp_server_cleanup() -> None:
    """pytest-jupyter's autouse clean-up of an in-process ServerApp: these tests run none."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLabProcess]:
    """A running ``jupyter lab`` rooted at a fresh folder, with the staging extension."""
    reason = _skip_reason()
    if reason:
        skip_group("ui", reason)
    extension = _extension_to_test()
    assert extension is not None
    base = tmp_path_factory.mktemp("ui")
    server = JupyterLabProcess(base / "root", base / "state", extension)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # Kernels started by the notebook test die with the server; nothing else to clean.


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _skip_reason()
    if reason:
        skip_group("ui", reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(lab: JupyterLabProcess, browser: Any) -> Iterator[Any]:
    """JupyterLab loaded in a 1400×900 page, the Staging panel not yet opened."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(lab.lab_url())
    page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.commands.hasCommand('staging:open-panel')"
    )
    page.errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """``tests/ui/screenshots/`` (gitignored), emptied once per session."""
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _screenshot_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failing UI test leaves ``screenshots/FAILED-<test>.png`` of the page as it was."""
    yield
    if request.node.stash.get(_CALL_FAILED, False) and "page" in request.fixturenames:
        page = request.getfixturevalue("page")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"FAILED-{request.node.name}.png"))
