"""``StagingApp``: the Jupyter server extension that runs staging jobs inside the user's own server."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from sqlalchemy.exc import SQLAlchemyError
from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, default, validate
from traitlets import Type as TypeTrait

from jupyter_staging._version import __version__
from jupyter_staging.engine.database import SQLITE_BUSY_TIMEOUT, database_reason
from jupyter_staging.engine.executors import (
    DEFAULT_CONCURRENT_ITEMS,
    DEFAULT_RANGE_BYTES,
    DEFAULT_STREAMS_PER_FILE,
    MAX_CONCURRENT_ITEMS,
    MAX_STREAMS_PER_FILE,
    DaskExecutor,
)
from jupyter_staging.engine.leases import DEFAULT_HEARTBEAT_INTERVAL, outlasts_lock_wait
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import JobState
from jupyter_staging.errors import DatabaseTooNew, DatabaseUnavailable, StagingError
from jupyter_staging.server.handlers import default_handlers
from jupyter_staging.server.keepalive import KeepAlive
from jupyter_staging.server.refused import misconfigured, setting_message

#: Environment variables the extension sets for the kernels its server starts, so that ``%stage`` finds
#: this server with no configuration (kernels inherit the server's environment).
ENV_URL = "JUPYTER_STAGING_SERVER_URL"
ENV_TOKEN = "JUPYTER_STAGING_SERVER_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_ROOT = "JUPYTER_STAGING_ROOT_DIR"
ENV_CERT = "JUPYTER_STAGING_SERVER_CERT"


class StagingApp(ExtensionApp):
    """Stage data into the server's root directory as tracked, resumable jobs.

    REST API under ``<base_url>api/v1/staging`` (``DESIGN.md``). Jobs run on worker threads of this
    server process, at most :attr:`max_concurrent_jobs` at once, and are persisted in :attr:`db_url`.
    """

    name = "jupyter_staging"
    version = __version__
    description = __doc__

    staging_dir = Unicode(
        "staging",
        help="""Folder, relative to the server's root_dir, under which jobs without a destination land.""",
    ).tag(config=True)

    source_roots = List(
        Unicode(),
        default_value=[],
        help="""Local folders jobs may read. Empty: any readable path. A symlink leaving these roots is
        refused. On a command line: one folder per flag (``--StagingApp.source_roots=/a
        --StagingApp.source_roots=/b``), a list (``--StagingApp.source_roots="['/a', '/b']"``) or a
        ``:``-separated list (``/a:/b``); see :func:`parse_source_roots`.""",
    ).tag(config=True)

    db_url = Unicode(
        help="""SQLAlchemy URL of the job database. Default: a SQLite file under the Jupyter data dir.""",
    ).tag(config=True)

    max_concurrent_jobs = Int(
        4, min=1, help="""How many staging jobs run at once (at least 1); others wait queued."""
    ).tag(config=True)

    sweep_interval = Float(
        10.0,
        help="""Seconds between two sweeps that expire jobs past their TTL and remove their output.""",
    ).tag(config=True)

    heartbeat_interval = Float(
        DEFAULT_HEARTBEAT_INTERVAL,
        help="""Seconds between two renewals of this server's leases on its queued and running jobs (one
        database write per interval, whatever the number of jobs and files). A server of another host
        sharing the job database (JupyterHub named servers in several pods, one shared home) takes such a
        job over only once its lease has gone three intervals unrenewed: the server running it is gone.
        With SQLite keep it above 15 s, so a lease outlasts a renewal that waited the busy timeout (30 s).
        Servers of one host check each other's process instead.""",
    ).tag(config=True)

    @validate("heartbeat_interval")
    def _valid_heartbeat_interval(self, proposal: dict[str, object]) -> float:
        value = float(proposal["value"])  # type: ignore[arg-type]
        if value <= 0:
            raise TraitError(f"StagingApp.heartbeat_interval must be positive, not {value}")
        if not outlasts_lock_wait(value):
            self.log.warning(
                "StagingApp.heartbeat_interval = %s s: a lease of three intervals does not outlast a renewal "
                "that waited the SQLite busy timeout (%s s); another host may take over a live server's job",
                value,
                SQLITE_BUSY_TIMEOUT,
            )
        return value

    executor_class = TypeTrait(
        default_value="jupyter_staging.engine.executors.LocalExecutor",
        klass="jupyter_staging.engine.executors.Executor",
        help="""How staging jobs run: ``jupyter_staging.engine.executors.LocalExecutor`` (threads of this
        server) or ``jupyter_staging.engine.executors.DaskExecutor`` (files, byte ranges and table parts as
        tasks on a Dask cluster; the ``dask`` extra; see the ``dask_*`` settings and docs/scale-out.md).""",
    ).tag(config=True)

    dask_scheduler_address = Unicode(
        "",
        help="""DaskExecutor: address of an existing Dask scheduler (``tcp://host:8786``, e.g. a
        dask-jobqueue cluster's). Empty: a dask-gateway cluster when ``dask_gateway`` is set, else a
        LocalCluster of ``dask_local_workers`` processes on 127.0.0.1.""",
    ).tag(config=True)

    dask_gateway = Dict(
        {},
        help="""DaskExecutor: create the cluster through dask-gateway: ``address``, ``proxy_address``,
        ``auth`` (default ``"jupyterhub"``), ``cluster_options`` (dict), ``workers`` (default 2).""",
    ).tag(config=True)

    dask_local_workers = Int(
        2,
        min=1,
        help="""DaskExecutor without a scheduler address or gateway: worker processes of the LocalCluster.""",
    ).tag(config=True)

    dask_range_bytes = Int(
        DEFAULT_RANGE_BYTES,
        min=1024**2,
        help="""DaskExecutor: local files larger than this (bytes) are copied as ranges of this size, one
        task each, and assembled into one verified file.""",
    ).tag(config=True)

    max_unpacked_bytes = Int(
        100 * 1024**3,
        help="""Most bytes one archive (``"unpack": true``) or compressed file (``"decompress": true``) may
        expand to; larger ones, and any expanding more than 100:1, are refused (codes ``archive_too_large``,
        ``archive_bomb``). Default 100 GiB.""",
    ).tag(config=True)

    presign_expiry_seconds = Int(
        3600,
        min=1,
        max=7 * 24 * 3600,
        help="""Seconds a presigned GET URL of a chunk in object storage stays valid (SigV4 allows at most
        7 days). Each ``GET .../chunks`` or ``.../refresh`` hands out URLs valid this long from then.""",
    ).tag(config=True)

    secret_key_file = Unicode(
        "",
        help="""File holding the key that seals secret-bearing sources (presigned URLs) in the job
        database; created with mode 0600 when missing. Empty: ``<database file>.key`` beside a SQLite
        database, or for other databases a key kept in memory (jobs reading presigned URLs then cannot
        resume after a restart) — set it when ``db_url`` is not SQLite.""",
    ).tag(config=True)

    scratch_dir = Unicode(
        "",
        help="""Local folder where jobs writing to S3 or Azure prepare each file (a download, a conversion's
        Parquet) before uploading it: relative to the server's root, or absolute (``~`` expanded). Empty:
        ``<staging_dir>/.staging-scratch`` below the root. A folder outside the root (a local disk of the
        node, a pod's own ``/tmp``) is made with mode 0700 when missing and must be one no other account
        controls, nor any folder or link on its way (owned by this account or root; writable by others
        only with the sticky bit, as ``/tmp``): a job starting with another fails ``path_not_allowed``.
        It is never removed. Each job works in its own subfolder (mode 0700), removed when the job ends.
        On a DaskExecutor the workers prepare their files in their own temporary folders.""",
    ).tag(config=True)

    min_free_bytes = Int(
        0,
        min=0,
        help="""Bytes that must stay free on the file system of a job's (local) destination. When set, a
        job whose total size is known at creation (local files, an HTTP ``Content-Length``, an S3 or Azure
        listing) and would leave less free is refused with ``insufficient_space`` (409), the message naming
        both figures; the listing made for the check is handed to the job, so sources are not asked twice.
        A disk that fills up anyway fails the item with ``no_space``. Default 0: no check — a fixed
        reserve would refuse every job on a small or nearly full disk (a laptop, a CI runner), which the
        server cannot tell from a misconfiguration; sites set it to the reserve they want kept.""",
    ).tag(config=True)

    quota_bytes = Int(
        0,
        min=0,
        help="""Most bytes the staged output of this server's jobs may hold together (local destinations;
        queued, running and paused jobs count their announced size). A job whose known size would go beyond
        it is refused with ``insufficient_space`` (409). Default 0: no quota.""",
    ).tag(config=True)

    concurrent_items = Int(
        DEFAULT_CONCURRENT_ITEMS,
        min=1,
        max=MAX_CONCURRENT_ITEMS,
        help="""Items (files of a folder, entries of a manifest, objects of a prefix) one job stages at once,
        sharing its connection pools: a count of files, 1 to 256. Many small files are then limited by the
        storage, not by one round trip after another. Entries of a manifest converted to Parquet or
        unpacked: at most 4 at once (each takes a core and its own memory).""",
    ).tag(config=True)

    raise_open_file_limit = Bool(
        True,
        help="""Raise the server's soft open-file limit (RLIMIT_NOFILE) to its hard limit (at most 65,536)
        when the extension starts; kernels and terminals started afterwards inherit it. systemd starts
        services with a soft limit of 1,024, which four jobs of deep trees came near. Off: the limit stays
        as it is; each job then keeps fewer folders and files open under a low limit.""",
    ).tag(config=True)

    streams_per_file = Int(
        DEFAULT_STREAMS_PER_FILE,
        min=1,
        max=MAX_STREAMS_PER_FILE,
        help="""Byte ranges of one large download (64 MiB and more, from an HTTP server that serves ranges of
        a file with a strong validator, S3 or Azure) fetched at once, each conditional on the file's
        validator, into one file hashed and verified once at the end: a count of connections, 1 to 32 (the
        connections kept per host; aria2c allows 16). 1: one stream. Ranges are 32 to 256 MiB, at most 4
        per stream (1 GiB on 4 streams: 16 ranges of 64 MiB); a pause or a restart fetches the ranges in
        flight again.""",
    ).tag(config=True)

    keep_alive_while_staging = Bool(
        True,
        help="""While a job of this server is queued or running, report the server as active to JupyterHub,
        so jupyterhub-idle-culler does not stop it in the middle of a job (kernels and terminals do the
        same for their own activity).""",
    ).tag(config=True)

    max_keep_alive_seconds = Int(
        24 * 3600,
        min=0,
        help="""Longest time (seconds) jobs alone keep the server active without a break; after it the idle
        culler may stop the server even though a job still runs. 0: no limit.""",
    ).tag(config=True)

    keep_alive_interval = Float(
        30.0,
        min=0.1,
        help="""Seconds between two keep-alive checks (one small database query each). JupyterHub reads the
        activity every $JUPYTERHUB_ACTIVITY_INTERVAL seconds (300 by default).""",
    ).tag(config=True)

    owner = Unicode(
        help="""Name recorded as the owner of jobs (default: the JupyterHub user or the
        account running the server)."""
    ).tag(config=True)

    @validate("source_roots")
    def _validate_source_roots(self, proposal: dict[str, object]) -> list[str]:
        try:
            return parse_source_roots(proposal["value"])  # type: ignore[arg-type]
        except ValueError as exc:
            raise TraitError(f"StagingApp.source_roots: {exc}") from None

    @default("db_url")
    def _default_db_url(self) -> str:
        folder = Path(jupyter_data_dir()) / "jupyter_staging"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # our own folder: the job database, its WAL and key are the owner's alone
        return f"sqlite:///{folder / 'jobs.sqlite'}"

    @default("owner")
    def _default_owner(self) -> str:
        import getpass

        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    _exported: dict[str, str] = {}  # noqa: RUF012 - replaced per instance in _export_env

    #: The setting jupyter_server could not apply when it linked this extension (None: all applied).
    _config_error: TraitError | None = None

    def _link_jupyter_server_extension(self, serverapp) -> None:  # type: ignore[no-untyped-def]
        """Apply this extension's settings; a value a setting refuses (``concurrent_items = 0``) is kept
        as :attr:`_config_error`, so staging is then off with ``staging_misconfigured`` naming the setting,
        not left half-configured (jupyter_server would log the traceback and load the extension anyway,
        whose job database then read as unreachable)."""
        try:
            super()._link_jupyter_server_extension(serverapp)
        except TraitError as exc:
            self._config_error = exc
            self.serverapp = serverapp
            self._linked = True

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        if self._config_error is not None:
            self.log.error("jupyter_staging: a setting was refused: %s", setting_message(self._config_error))
            self._staging_off(misconfigured(self._config_error))
            return
        root_dir = Path(os.path.expanduser(self.serverapp.root_dir)).resolve()
        try:
            self.manager = self._make_manager(root_dir)
        except DatabaseTooNew as err:
            # Every staging request answers 503 database_newer_than_code (not a 404 of a missing extension,
            # nor a traceback in the log); the rest of the server works.
            self._staging_off(err)
            return
        except SQLAlchemyError as exc:
            reason = database_reason(exc)
            self._staging_off(
                DatabaseUnavailable(
                    f"the job database could not be opened when this server started ({reason}); "
                    "restart the server once it is reachable (jupyter staging doctor checks it)"
                )
            )
            return
        self.settings.update({"staging_manager": self.manager, "staging_owner": self.owner})
        self.log.info("jupyter_staging %s: jobs in %s", __version__, _safe_url(self.db_url))

    def _staging_off(self, err: StagingError) -> None:
        """Serve no staging: every staging request answers ``err`` (a 503), logged once here."""
        self.log.error("jupyter_staging: staging is off (%s): %s", _safe_url(self.db_url), err.message)
        self.settings.update({"staging_unavailable": err, "staging_owner": self.owner})

    def _make_manager(self, root_dir: Path) -> StagingManager:
        """The :class:`StagingManager` of these settings (its database upgraded to the newest revision).

        Raises :class:`~jupyter_staging.errors.DatabaseTooNew` when a later release upgraded the database."""
        return StagingManager(
            root_dir,
            db_url=self.db_url,
            staging_dir=self.staging_dir,
            source_roots=list(self.source_roots) or None,
            max_concurrent_jobs=self.max_concurrent_jobs,
            executor_class=self.executor_class,
            executor_options=self._executor_options(),
            default_owner=self.owner,
            sweep_interval=self.sweep_interval,
            heartbeat_interval=self.heartbeat_interval,
            presign_expiry_seconds=self.presign_expiry_seconds,
            max_unpacked_bytes=self.max_unpacked_bytes,
            secret_key_file=self.secret_key_file or None,
            scratch_dir=self.scratch_dir or None,
            min_free_bytes=self.min_free_bytes,
            quota_bytes=self.quota_bytes,
            concurrent_items=self.concurrent_items,
            streams_per_file=self.streams_per_file,
            raise_open_files=self.raise_open_file_limit,
        )

    def _executor_options(self) -> dict[str, object]:
        """Keyword arguments of ``executor_class`` beyond its thread count (the ``dask_*`` settings)."""
        if not issubclass(self.executor_class, DaskExecutor):
            return {}
        return {
            "scheduler_address": self.dask_scheduler_address or None,
            "gateway": dict(self.dask_gateway),
            "local_workers": self.dask_local_workers,
            "range_bytes": self.dask_range_bytes,
        }

    def initialize_handlers(self) -> None:
        self.handlers.extend(default_handlers)

    async def _start_jupyter_server_extension(self, serverapp) -> None:  # type: ignore[no-untyped-def]
        import asyncio

        if getattr(self, "manager", None) is None:  # the database could not be opened (logged)
            return
        resumed = await asyncio.to_thread(self.manager.start)
        if resumed:
            self.log.info("jupyter_staging: resumed %d job(s) after restart", len(resumed))
        self._export_env(serverapp)
        self._stop_on_sigint(serverapp)
        if self.keep_alive_while_staging:
            self.keep_alive = KeepAlive(
                serverapp.web_app.settings,
                self._has_active_jobs,
                interval_seconds=self.keep_alive_interval,
                max_seconds=self.max_keep_alive_seconds,
            )
            self.keep_alive.start()

    def _stop_on_sigint(self, serverapp) -> None:  # type: ignore[no-untyped-def]
        """Make SIGINT stop the server as SIGTERM does (its extensions stopped: running jobs left to resume at
        the next start) when nothing handles it. JupyterHub's local spawners stop a server with SIGINT; with
        no terminal on stdin jupyter_server leaves SIGINT to Python, whose KeyboardInterrupt ends the server
        without stopping its extensions, so the running jobs met the interpreter's shutdown and failed
        (``internal_error``). A handler the server (its ^C prompt), JupyterHub or a program set is kept."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._sigint_stop = serverapp._signal_stop
            signal.signal(signal.SIGINT, self._sigint_stop)

    def _has_active_jobs(self) -> bool:
        """True when a job of this server's root is queued or running (one indexed query, one row)."""
        active = [JobState.queued.value, JobState.running.value]
        root = str(self.manager.root_dir)
        return bool(self.manager.store.list_jobs(root=root, states=active, limit=1))

    def _export_env(self, serverapp) -> None:  # type: ignore[no-untyped-def]
        """Tell kernels started by this server where its staging API is (they inherit os.environ)."""
        try:
            certfile = serverapp.certfile or ""
            url = f"{'https' if certfile else 'http'}://127.0.0.1:{serverapp.port}{serverapp.base_url}"
            if serverapp.sock:
                return
        except Exception:
            return
        self._exported = {ENV_URL: url, ENV_ROOT: str(self.manager.root_dir)}
        if certfile:  # kernels trust this server's own certificate (it may not name 127.0.0.1)
            self._exported[ENV_CERT] = os.path.abspath(os.path.expanduser(certfile))
        token = getattr(serverapp.identity_provider, "token", "") or ""
        if token:
            self._exported[ENV_TOKEN] = token
        os.environ.update(self._exported)

    async def stop_extension(self) -> None:
        import asyncio
        import signal
        import threading

        ours = getattr(self, "_sigint_stop", None)
        if ours is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) == ours:  # SIGINT as it was (a server run inside a program)
                signal.signal(signal.SIGINT, signal.default_int_handler)

        keep_alive = getattr(self, "keep_alive", None)
        if keep_alive is not None:
            keep_alive.stop()
        manager = getattr(self, "manager", None)
        if manager is not None:
            await asyncio.to_thread(manager.stop)
        for var in (ENV_URL, ENV_TOKEN, ENV_ROOT, ENV_CERT):
            if os.environ.get(var) == self._exported.get(var):
                os.environ.pop(var, None)


def parse_source_roots(value: str | Iterable[str]) -> list[str]:
    """The folders of ``StagingApp.source_roots`` as people write them, one path per item.

    ``value`` is a list of paths or one text; each text may be a path (``/archive``), a list literal
    (``['/a', '/b']`` or ``["/a", "/b"]``, as ``--StagingApp.source_roots=[...]`` passes it: jupyter_server
    defers extension options, so such a list arrives as one text) or an ``os.pathsep``-separated list
    (``/a:/b``, like ``PATH``). Empty items are dropped, duplicates kept once, order kept. The server
    (this trait's validator) and ``jupyter staging doctor`` (through the same trait) read it with this
    one function.

    Raises :class:`ValueError` for a text starting with ``[`` that is not a list literal of texts.
    """
    texts = [value] if isinstance(value, str) else list(value)
    roots: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"expected folders as text, got {type(text).__name__}")
        for root in _split_roots(text.strip()):
            if root and root not in roots:
                roots.append(root)
    return roots


def _split_roots(text: str) -> list[str]:
    """One text of :func:`parse_source_roots`: a list literal, else ``os.pathsep``-separated paths."""
    if not text.startswith("["):
        return [part.strip() for part in text.split(os.pathsep)]
    try:
        items = json.loads(text)
    except ValueError:
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot read {text!r} as a list of folders") from None
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"{text!r} must list folders as text, e.g. ['/archive', '/data']")
    return [item.strip() for item in items]


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"
