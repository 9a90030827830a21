"""``jupyter staging``: the command line of jupyter_staging (the ``jupyter-staging`` console script).

``jupyter staging doctor`` (:class:`DoctorApp`) reads its settings the way the server reads them: the
traitlets config files ``jupyter_config``, ``jupyter_jupyter_staging_config`` (the extension's own) and
``jupyter_server_config`` (``.py`` / ``.json``, later ones winning) in every folder of ``jupyter --paths``'
config path, then the command line (``--db-url``, ``--staging-dir``, ``--root-dir`` or any
``--StagingApp.<trait>=...``). ``root_dir`` is ``--root-dir``, else ``ServerApp.root_dir`` from those files,
else the current folder; a single-user server spawned by JupyterHub may get its root on its command line,
which the doctor cannot see: pass ``--root-dir`` then. The checks and the report are in
:mod:`jupyter_staging.cli.doctor`.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import Bool, Float, TraitError, Unicode
from traitlets.config import Application, Config

from jupyter_staging._version import __version__
from jupyter_staging.cli.checks_extension import files_naming_extension
from jupyter_staging.cli.doctor import report
from jupyter_staging.cli.model import (
    ENV_AZURE_CONTAINER,
    ENV_BUCKET,
    ENV_HUB_SERVICE_URL,
    GIB,
    DoctorSettings,
)
from jupyter_staging.server.app import StagingApp, parse_source_roots
from jupyter_staging.server.refused import setting_message, setting_name


class DoctorApp(JupyterApp):
    """``jupyter staging doctor``: check what staging needs, and say how to fix what is broken."""

    name = "jupyter-staging-doctor"
    version = __version__
    description = """Check what jupyter_staging needs on this machine and explain how to fix what is broken:
    the server extension, the job database, the staging and scratch folders, the source roots, S3, Azure
    and the hub. Exit status 1 when a check fails."""
    examples = """
    jupyter staging doctor
    jupyter staging doctor --root-dir ~/work --s3-bucket results
    jupyter staging doctor --hub-url http://127.0.0.1:8000/ --hub-service-url http://127.0.0.1:8000/services/staging/
    jupyter staging doctor --json
    """

    aliases = {
        **base_aliases,
        "root-dir": "DoctorApp.root_dir",
        "db-url": "StagingApp.db_url",
        "staging-dir": "StagingApp.staging_dir",
        "s3-bucket": "DoctorApp.s3_bucket",
        "azure-container": "DoctorApp.azure_container",
        "hub-url": "DoctorApp.hub_url",
        "hub-service-url": "DoctorApp.hub_service_url",
        "min-free-gib": "DoctorApp.min_free_gib",
        "timeout": "DoctorApp.timeout",
    }
    flags = {
        "debug": base_flags["debug"],
        "json": ({"DoctorApp": {"json": True}}, "Print the results as one JSON object."),
    }

    json = Bool(False, help="""Print the results as one JSON object instead of text.""").tag(config=True)
    root_dir = Unicode(
        "",
        help="""The Jupyter server's root folder. Default: ServerApp.root_dir from the config files, else the
        current folder.""",
    ).tag(config=True)
    s3_bucket = Unicode(
        "", help=f"""An S3 bucket to HEAD. Default: ${ENV_BUCKET}; none: the endpoint is checked only."""
    ).tag(config=True)
    azure_container = Unicode(
        "", help=f"""An Azure container to check. Default: ${ENV_AZURE_CONTAINER}."""
    ).tag(config=True)
    hub_url = Unicode(
        "",
        help="""The JupyterHub to check: its public URL (http://hub:8000/) or its API URL (.../hub/api).
        Default: $JUPYTERHUB_API_URL.""",
    ).tag(config=True)
    hub_service_url = Unicode(
        "",
        help=f"""URL of the hub's staging service (http://hub:8000/services/staging/).
        Default: ${ENV_HUB_SERVICE_URL}.""",
    ).tag(config=True)
    classes = [StagingApp]  # noqa: RUF012 - traitlets' own convention

    min_free_gib = Float(1.0, help="""Warn when the staging folder has less free space (GiB).""").tag(
        config=True
    )
    timeout = Float(10.0, help="""Seconds to wait for each network request.""").tag(config=True)

    def migrate_config(self) -> None:
        """Never migrate old IPython config: the doctor changes nothing."""

    def load_config_file(self, suppress_errors: bool = True) -> None:  # type: ignore[override]
        """Load the config files the server and the extension load, in the server's order of priority:
        ``jupyter_config``, the extension's ``jupyter_jupyter_staging_config``, ``jupyter_server_config``
        (the command line still wins), plus ``--config FILE`` when given."""
        paths = self.config_file_paths
        for base in ("jupyter_config", StagingApp().config_file_name, "jupyter_server_config"):
            Application.load_config_file(self, base, path=paths)
        if self.config_file:
            folder, filename = os.path.split(self.config_file)
            Application.load_config_file(self, filename, path=[folder or os.getcwd()])

    def settings(self) -> DoctorSettings:
        """The settings to check: config files and command line merged, environment fallbacks."""
        staging, refused = staging_app(self.config)
        server = self.config["ServerApp"] if "ServerApp" in self.config else Config()
        root = self.root_dir or (str(server["root_dir"]) if "root_dir" in server else "") or os.getcwd()
        extensions = server["jpserver_extensions"] if "jpserver_extensions" in server else {}
        hub = self.hub_url or os.environ.get("JUPYTERHUB_API_URL", "")
        if hub and not hub.rstrip("/").endswith("/hub/api"):
            hub = hub.rstrip("/") + "/hub/api"
        return DoctorSettings(
            root_dir=str(Path(os.path.expanduser(root)).absolute()),
            staging_dir=staging.staging_dir,
            scratch_dir=staging.scratch_dir,
            source_roots=parse_source_roots(staging.source_roots),  # as the server reads it
            db_url=staging.db_url,
            jpserver_extensions=dict(extensions),
            config_paths=list(self.config_file_paths),
            extension_config_files=files_naming_extension(self.loaded_config_files),
            s3_bucket=self.s3_bucket or os.environ.get(ENV_BUCKET) or None,
            azure_container=self.azure_container or os.environ.get(ENV_AZURE_CONTAINER) or None,
            hub_api_url=hub or None,
            hub_service_url=self.hub_service_url or os.environ.get(ENV_HUB_SERVICE_URL) or None,
            min_free_bytes=int(self.min_free_gib * GIB),
            timeout=self.timeout,
            refused_settings=refused,
        )

    def start(self) -> None:
        """Run the checks, print them (text or ``--json``), exit 1 if any failed."""
        text, status = report(self.settings(), self.loaded_config_files, as_json=self.json)
        print(text)
        if status:
            self.exit(status)


def staging_app(config: Config) -> tuple[StagingApp, list[str]]:
    """A :class:`StagingApp` of ``config`` and traitlets' message for each of its settings refused
    (``concurrent_items = 0``), those left at their defaults so the other checks still run, where the server
    would serve no staging at all (``staging_misconfigured``)."""
    config = copy.deepcopy(config)
    refused: list[str] = []
    while True:
        try:
            return StagingApp(config=config), refused
        except TraitError as exc:
            refused.append(setting_message(exc))
            name = setting_name(exc)
            section = config["StagingApp"] if "StagingApp" in config else None
            if name is None or section is None or name not in section:  # not one we can leave out
                return StagingApp(), refused
            del section[name]


class StagingCommand(JupyterApp):
    """``jupyter staging``: the command-line tools of jupyter_staging (``jupyter staging doctor``)."""

    name = "jupyter-staging"
    version = __version__
    description = """Command-line tools of jupyter_staging. `jupyter staging doctor` checks what staging
    needs and explains how to fix what is broken."""
    subcommands = {
        "doctor": (DoctorApp, "Check what staging needs here and explain how to fix what is broken."),
    }
    aliases: dict[str, Any] = {}
    flags: dict[str, Any] = {}

    def migrate_config(self) -> None:
        """Never migrate old IPython config."""

    def load_config_file(self, suppress_errors: bool = True) -> None:  # type: ignore[override]
        """The subcommands load what they need."""

    def start(self) -> None:
        """Run the subcommand; without a valid one, print the usage (with a "did you mean" for a near
        miss such as ``doktor``) to stderr and exit 2, as command-line tools do for a usage error."""
        if self.subapp is not None:
            super().start()
            return
        print(self.usage_text(self.extra_args[0] if self.extra_args else None), file=sys.stderr)
        self.exit(2)

    def usage_text(self, typed: str | None) -> str:
        """The usage message for ``jupyter staging TYPED`` (``typed`` None: no subcommand given)."""
        names = sorted(self.subcommands)
        lines = []
        if typed is not None:
            close = difflib.get_close_matches(typed, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"jupyter staging: unknown command {typed!r}{hint}")
        lines.append(f"usage: jupyter staging {{{','.join(names)}}} [options]   (--help for more)")
        lines += [f"  {name:10} {self.subcommands[name][1]}" for name in names]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``jupyter-staging`` script (``jupyter staging ...``): parses ``argv`` (None: the
    process's arguments) and runs the subcommand it names. Exits with the subcommand's status."""
    StagingCommand.launch_instance(argv)


if __name__ == "__main__":
    main()
