"""``jupyter-staging-hub``: the JupyterHub service that stages shared-storage files into users' areas.

Run it as a managed service (https://jupyterhub.readthedocs.io/en/stable/reference/services.html): the
hub starts it and gives it ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_SERVICE_PREFIX``,
``JUPYTERHUB_SERVICE_URL`` (where to listen), ``JUPYTERHUB_SERVICE_NAME`` and the OAuth client settings.
Options come from ``jupyter_staging_hub_config.py`` (``c.StagingHub.shared_roots = [...]``) and from
kebab-case flags (``--shared-roots /archive``); ``docs/hub.md`` has a complete ``jupyterhub_config.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import stat
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jinja2
from jupyterhub._data import DATA_FILES_PATH
from jupyterhub.services.auth import HubOAuth
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Float, Int, List, Unicode, default
from traitlets.config import Application

from jupyter_staging._version import __version__
from jupyter_staging.errors import AccessCheckUnavailable, DatabaseTooNew
from jupyter_staging.hub import access, oplog
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.db import OperationStore
from jupyter_staging.hub.handlers import default_handlers, log_request
from jupyter_staging.hub.hubapi import HubAPI
from jupyter_staging.hub.operations import StagingOperations

#: Environment variable holding the operations database's URL (with its password): never the command line.
DB_URL_ENV = "JUPYTER_STAGING_HUB_DB_URL"
#: The service's templates (``staging.html`` extends JupyterHub's ``page.html``).
TEMPLATES = Path(__file__).with_name("templates")


class StagingHub(Application):
    """Copy, link or stream files from the site's shared storage into JupyterHub users' areas, on the
    authenticated user's behalf, recording every operation."""

    name = "jupyter-staging-hub"
    version = __version__
    description = __doc__
    examples = """
    jupyter-staging-hub --shared-roots /archive --user-area-template '/home/{username}/staging'
    jupyter-staging-hub --config /etc/jupyterhub/jupyter_staging_hub_config.py
    """

    aliases = {
        "config": "StagingHub.config_file",
        "shared-roots": "StagingHub.shared_roots",
        "user-area-template": "StagingHub.user_area_template",
        "server-root-template": "StagingHub.server_root_template",
        "db-url": "StagingHub.db_url",
        "log-file": "StagingHub.log_file",
        "cookie-secret-file": "StagingHub.cookie_secret_file",
        "admin-scope": "StagingHub.admin_scope",
        "proxy-url": "StagingHub.proxy_url",
        "bind-url": "StagingHub.bind_url",
        "concurrency": "StagingHub.concurrency",
        "replica-id": "StagingHub.replica_id",
        "lease-seconds": "StagingHub.lease_seconds",
        "heartbeat-interval": "StagingHub.heartbeat_interval",
        "log-level": "Application.log_level",
    }
    flags = {
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log debug messages to the console."),
    }

    config_file = Unicode(
        "jupyter_staging_hub_config.py",
        help="""Python config file to load (``c.StagingHub.<option> = ...``); a missing file is fine.""",
    ).tag(config=True)

    shared_roots = List(
        Unicode(),
        help="""Folders of the shared storage that sources must lie in, after every symlink is
        resolved. Required.""",
    ).tag(config=True)

    user_area_template = Unicode(
        "/home/{username}/staging",
        help="""Absolute path of a user's area; ``{username}`` is the escaped JupyterHub user name
        (ASCII letters and digits kept, other bytes as ``-xx``). Folders from the ``{username}``
        component down are never followed through symlinks and are created when missing.""",
    ).tag(config=True)

    server_root_template = Unicode(
        help="""The folder a user's own server serves as its root_dir, as this service sees it
        (``{username}`` as in user_area_template). ``jupyter_copy`` sends destinations relative to it,
        so the user area must lie inside it. Default: the parent of user_area_template.""",
    ).tag(config=True)

    db_url = Unicode(
        help="""SQLAlchemy URL of the operations database: SQLite (default, in the working directory),
        ``postgresql+psycopg://user:password@host/db`` or ``mysql+pymysql://user:password@host/db``.
        Default: $JUPYTER_STAGING_HUB_DB_URL, else ``sqlite:///jupyter_staging_hub.sqlite``. Give a URL
        holding a password through that variable (from a Kubernetes secret, or the service's
        ``environment``), never on the command line, where every local user can read it.""",
    ).tag(config=True)

    log_file = Unicode(
        "jupyter_staging_hub.log",
        help="""The operations log: one JSON line per operation, rotated at log_max_bytes.""",
    ).tag(config=True)

    log_max_bytes = Int(10 * 1024 * 1024, help="""Size in bytes at which the log file rotates.""").tag(
        config=True
    )

    log_backup_count = Int(5, help="""Rotated log files kept (``<log_file>.1`` ...).""").tag(config=True)

    cookie_secret_file = Unicode(
        "jupyter_staging_hub_cookie_secret",
        help="""File holding the secret that signs the service's login cookie (hex). Created, mode 0600,
        when missing, so logins survive restarts; refused when readable by others.""",
    ).tag(config=True)

    admin_scope = Unicode(
        "custom:jupyter-staging:admin",
        help="""Scope that lets its holder act for other users (``?username=``) and see every
        operation and the log. Define it in ``c.JupyterHub.custom_scopes`` and grant it with a role.""",
    ).tag(config=True)

    concurrency = Int(4, help="""File operations running at once (others wait).""").tag(config=True)

    server_start_timeout = Float(
        300.0, help="""Seconds to wait for a user's server to become ready (jupyter_copy)."""
    ).tag(config=True)

    job_poll_interval = Float(
        1.0, help="""Seconds between two polls of a jupyter_copy job in the user's server."""
    ).tag(config=True)

    replica_id = Unicode(
        help="""This process's name among the service's replicas sharing one database (at most 128
        characters). Default: host name, process id and random digits, new at every start.""",
    ).tag(config=True)

    lease_seconds = Float(
        60.0,
        help="""Seconds a replica holds a running operation without renewing its lease. When a replica
        dies, another one takes its operations over this long after its last renewal.""",
    ).tag(config=True)

    heartbeat_interval = Float(
        0.0,
        help="""Seconds between two lease renewals (and looks for operations to take over). Default
        (0): a third of lease_seconds.""",
    ).tag(config=True)

    proxy_url = Unicode(
        help="""URL of the JupyterHub proxy as this service reaches it (users' servers are under
        ``/user/<name>/`` there). Default: the origin of $JUPYTERHUB_PUBLIC_URL, else
        http://127.0.0.1:8000. In Zero to JupyterHub: http://proxy-public.""",
    ).tag(config=True)

    api_token = Unicode(help="""The service's Hub API token. Default: $JUPYTERHUB_API_TOKEN.""").tag(
        config=True
    )

    hub_api_url = Unicode(help="""The Hub's REST API. Default: $JUPYTERHUB_API_URL.""").tag(config=True)

    service_name = Unicode(help="""The service's name. Default: $JUPYTERHUB_SERVICE_NAME or staging.""").tag(
        config=True
    )

    service_prefix = Unicode(
        help="""URL prefix of the service. Default: $JUPYTERHUB_SERVICE_PREFIX or /services/<name>/."""
    ).tag(config=True)

    bind_url = Unicode(
        help="""Where the service listens. Default: $JUPYTERHUB_SERVICE_URL (the service's ``url`` in
        the hub's config) or http://127.0.0.1:10101. In Zero to JupyterHub, where that URL is
        http://hub:<port>, listen on http://0.0.0.0:<port>.""",
    ).tag(config=True)

    hub_base_url = Unicode(help="""JupyterHub's base URL. Default: $JUPYTERHUB_BASE_URL or /.""").tag(
        config=True
    )

    template_paths = List(
        Unicode(),
        help="""Extra folders searched first for templates (override ``staging.html`` or ``page.html``).""",
    ).tag(config=True)

    @default("server_root_template")
    def _default_server_root(self) -> str:
        return str(Path(self.user_area_template).parent)

    @default("proxy_url")
    def _default_proxy_url(self) -> str:
        public = os.environ.get("JUPYTERHUB_PUBLIC_URL", "")
        if public:
            parts = urlsplit(public)
            return urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return "http://127.0.0.1:8000"

    @default("db_url")
    def _default_db_url(self) -> str:
        return os.environ.get(DB_URL_ENV) or "sqlite:///jupyter_staging_hub.sqlite"

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "staging")

    @default("service_prefix")
    def _default_service_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{self.service_name}/")

    @default("bind_url")
    def _default_bind_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    @default("hub_base_url")
    def _default_hub_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_BASE_URL", "/")

    # -- life cycle -------------------------------------------------------------------------------

    def initialize(self, argv: Any = None) -> None:
        """Parse the command line, load the config file (the command line wins), check the settings."""
        super().initialize(argv)
        if self.config_file and Path(self.config_file).exists():
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)
        self._init_logging()
        problems = self._check_settings()
        if problems:
            for problem in problems:
                self.log.critical("%s", problem)
            self.exit(1)

    def _check_settings(self) -> list[str]:
        problems = []
        if not self.api_token:
            problems.append("no Hub API token: run as a JupyterHub service (JUPYTERHUB_API_TOKEN is unset)")
        problems += self._check_leases()
        problems += _check_access_program()
        if not self.shared_roots:
            problems.append("StagingHub.shared_roots is empty: name the shared storage folders")
        for root in self.shared_roots:
            if not Path(root).is_dir():
                problems.append(f"shared root {root!r} is not a folder")
        for name in ("user_area_template", "server_root_template"):
            try:
                areas = UserAreas(getattr(self, name))
            except ValueError as err:
                problems.append(f"StagingHub.{name}: {err}")
                continue
            if name == "user_area_template" and not areas.base.is_dir():
                problems.append(f"the base folder of the user areas, {areas.base}, does not exist")
        return problems

    def _check_leases(self) -> list[str]:
        problems = []
        if len(self.replica_id) > 128:
            problems.append("StagingHub.replica_id is longer than 128 characters")
        if self.lease_seconds <= 0:
            problems.append("StagingHub.lease_seconds must be positive")
        elif not 0 <= self.heartbeat_interval < self.lease_seconds:
            problems.append("StagingHub.heartbeat_interval must be 0 (default) or shorter than lease_seconds")
        return problems

    def _init_logging(self) -> None:
        """Console logging for the service, tornado and JupyterHub's auth helpers (stderr)."""
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"))
        for name in ("jupyter_staging", "tornado"):
            logger = logging.getLogger(name)
            logger.handlers = [handler]
            logger.setLevel(self.log.getEffectiveLevel())
            logger.propagate = False

    def start(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        asyncio.run(self.serve())

    async def serve(self) -> None:
        """Open the database and the log, listen, take over operations whose lease expired and keep
        this replica's leases renewed, wait for a signal.

        Raises :class:`SystemExit` (status 1, one line: the revision, or the driver's reason) when a later
        release upgraded the operations database, or it cannot be opened."""
        try:
            store = OperationStore(self.db_url)
        except DatabaseTooNew as err:
            raise SystemExit(f"jupyter-staging-hub: {err.message}") from None
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            reason = f"{type(orig).__name__}: {(str(orig).strip().splitlines() or [''])[0]}"
            shown = _safe_url(self.db_url)
            message = f"jupyter-staging-hub: cannot open the operations database {shown} ({reason})"
            raise SystemExit(message) from None
        operations = self.make_operations(store)
        bind = urlsplit(self.bind_url)
        server = HTTPServer(self.make_web_app(operations), xheaders=True)
        server.listen(bind.port or 80, address=bind.hostname or "127.0.0.1")
        await operations.start()
        self.log.info(
            "jupyter-staging-hub %s at %s%s (operations in %s, replica %s)",
            __version__,
            self.bind_url.rstrip("/"),
            self.service_prefix,
            _safe_url(self.db_url),
            operations.leases.replica_id,
        )
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        self.log.info("stopping")
        server.stop()
        await operations.stop()
        await asyncio.to_thread(store.close)

    def make_operations(self, store: OperationStore) -> StagingOperations:
        """The service's :class:`StagingOperations` over ``store``, logging to the operations log file."""
        operations_log = oplog.open_log(
            self.log_file, max_bytes=self.log_max_bytes, backup_count=self.log_backup_count
        )
        return StagingOperations(
            store,
            UserAreas(self.user_area_template),
            list(self.shared_roots),
            HubAPI(self.hub_api_url, self.api_token, self.proxy_url),
            server_root_template=self.server_root_template,
            concurrency=self.concurrency,
            server_start_timeout=self.server_start_timeout,
            job_poll_interval=self.job_poll_interval,
            oplog=operations_log,
            replica_id=self.replica_id or None,
            lease_seconds=self.lease_seconds,
            heartbeat_interval=self.heartbeat_interval or None,
        )

    def make_web_app(self, operations: StagingOperations) -> web.Application:
        """The tornado application: the routes under the service prefix, Hub OAuth, the page's templates."""
        hub_prefix = url_join(self.hub_base_url, "hub/")
        hub_auth = HubOAuth(
            parent=self,
            api_token=self.api_token,
            api_url=self.hub_api_url,
            base_url=self.service_prefix,
            hub_prefix=hub_prefix,
        )
        return web.Application(
            default_handlers(self.service_prefix),
            cookie_secret=load_cookie_secret(self.cookie_secret_file),
            hub_auth=hub_auth,
            log_function=log_request,
            jinja_env=jinja2.Environment(
                loader=jinja2.FileSystemLoader(self._template_search_path()), autoescape=True
            ),
            staging_operations=operations,
            staging_admin_scope=self.admin_scope,
            staging_service_prefix=self.service_prefix,
            staging_hub_prefix=hub_prefix,
            staging_hub_base_url=self.hub_base_url,
            staging_shared_roots=list(self.shared_roots),
            staging_user_area_template=self.user_area_template,
            staging_log_file=self.log_file,
            staging_log_backups=self.log_backup_count,
        )

    def _template_search_path(self) -> list[str]:
        """Site templates, the service's, JupyterHub's (``page.html``), then the fallback page."""
        paths = [*self.template_paths, str(TEMPLATES)]
        hub_templates = Path(DATA_FILES_PATH) / "templates"
        if (hub_templates / "page.html").exists():
            paths.append(str(hub_templates))
        paths.append(str(TEMPLATES / "fallback"))
        return paths


#: The account the start-up check of :func:`_check_access_program` asks as (``nobody`` on Debian and RHEL).
_PROBE_ID = 65534


def _check_access_program() -> list[str]:
    """When this process runs as root, whether the kernel answers the service's access checks
    (:mod:`jupyter_staging.hub.access`: ``find`` run as each user): asked once, as an unprivileged uid, at
    start. Without it every call for a user in the password database would answer 503
    ``access_check_unavailable``; the service says so and does not start."""
    if os.geteuid() != 0:
        return []
    probe = access.Reader("an unprivileged account", _PROBE_ID, frozenset({_PROBE_ID}), _PROBE_ID)
    try:
        access.kernel_answers([access.FIND], probe)
    except AccessCheckUnavailable:
        return [
            f"running as root, the service asks the kernel what each user may read and write through "
            f"{access.FIND} (GNU findutils) run as that user, and {access.FIND} gave no answer: install "
            "GNU findutils, or run the service as an account of its own"
        ]
    return []


def url_join(*pieces: str) -> str:
    """Join URL path pieces with exactly one ``/`` between them (keeps a trailing ``/``)."""
    out = pieces[0]
    for piece in pieces[1:]:
        out = out.rstrip("/") + "/" + piece.lstrip("/")
    return out


def load_cookie_secret(path: str | os.PathLike[str]) -> bytes:
    """The cookie secret stored (hex) at ``path``; 32 random bytes written there (mode 0600) when the
    file is missing. Raises :class:`SystemExit` when the file is readable or writable by others, or
    does not hold hex."""
    file = Path(path)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_cookie_secret(file)
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex())
    return secret


def _read_cookie_secret(file: Path) -> bytes:
    mode = file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SystemExit(f"cookie secret file {file} is open to others (mode {mode & 0o777:o}); chmod 600 it")
    try:
        return bytes.fromhex(file.read_text().strip())
    except ValueError:
        raise SystemExit(f"cookie secret file {file} does not hold a hex secret") from None


def _safe_url(url: str) -> str:
    """A database URL for a log line: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"


main = StagingHub.launch_instance

if __name__ == "__main__":
    main()
