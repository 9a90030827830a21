"""``jupyter staging``: command-line tools of jupyter_staging.

``jupyter staging doctor`` checks, and explains how to fix, what breaks staging on this machine:

========================  =====================================================================
check                     what it does
========================  =====================================================================
``extension``             the server extension imports and is enabled in Jupyter's configuration
``database``              ``StagingApp.db_url`` opens; a probe row is written and deleted
``staging folder``        ``<root_dir>/<staging_dir>`` (or its nearest existing parent) takes a
                          probe file, and its file system has free space
``source root``           each ``StagingApp.source_roots`` folder exists and can be listed
``s3``                    boto3 finds credentials and the endpoint answers a HEAD on a bucket
``azure``                 the ``azure`` extra is installed and the account (or a container) answers
``hub`` / ``hub service`` the JupyterHub API answers (and accepts ``JUPYTERHUB_API_TOKEN``); the
                          staging service answers at its URL
========================  =====================================================================

Each check ends ``ok``, ``warn``, ``fail`` or ``skip`` (not configured here), with a message and, unless
``ok``, a concrete fix. The exit status is 1 when any check fails, else 0.

Settings are read the way the server reads them: the traitlets config files ``jupyter_config``,
``jupyter_jupyter_staging_config`` (the extension's own) and ``jupyter_server_config`` (``.py`` /
``.json``, later ones winning) in every folder of ``jupyter --paths``' config path, then the command
line (``--db-url``, ``--staging-dir``, ``--root-dir`` or any ``--StagingApp.<trait>=...``). The enabled
server extensions are merged from those files and their ``jupyter_server_config.d/*.json`` exactly as
``ServerApp.find_server_extensions`` does. ``root_dir`` is ``--root-dir``, else ``ServerApp.root_dir``
from those files, else the current folder; a single-user server spawned by JupyterHub may get its root
on its command line, which the doctor cannot see: pass ``--root-dir`` then.

Nothing printed holds a secret: URLs go through :func:`~jupyter_staging.safety.redact.redact_url`, database
URLs lose their password, and the values of secret environment variables (AWS secret keys and session
tokens, ``JUPYTERHUB_API_TOKEN``, Azure keys, SAS tokens and connection strings) are replaced by
``REDACTED`` wherever they would appear.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import Bool, Float, Unicode
from traitlets.config import Application, Config

from jupyter_staging._version import __version__
from jupyter_staging.safety.redact import REDACTED, redact_text, redact_url
from jupyter_staging.server.app import StagingApp

#: Environment variables naming the bucket / container the doctor HEADs when no flag names one.
ENV_BUCKET = "JUPYTER_STAGING_DOCTOR_BUCKET"
ENV_AZURE_CONTAINER = "JUPYTER_STAGING_DOCTOR_AZURE_CONTAINER"
#: Environment variable giving the hub staging service's URL when ``--hub-service-url`` is not given.
ENV_HUB_SERVICE_URL = "JUPYTER_STAGING_HUB_SERVICE_URL"
#: Environment variables whose values are secrets: never printed, whatever the check found.
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "JUPYTERHUB_API_TOKEN",
    "JPY_API_TOKEN",
    "JUPYTER_STAGING_SERVER_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)
EXTENSION = "jupyter_staging"
GIB = 1024**3

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    """The outcome of one check.

    ``name``: what was checked (``"database"``, ``"source root"``, ...). ``status``: ``"ok"``,
    ``"warn"``, ``"fail"`` or ``"skip"``. ``message``: what was found. ``fix``: what to do about it
    (None when ``ok``).
    """

    name: str
    status: str
    message: str
    fix: str | None = None


@dataclass
class DoctorSettings:
    """What the doctor checks, as the server would see it.

    ``root_dir``: the server's root (absolute). ``staging_dir``: default destination folder, relative to
    it. ``source_roots``: allowed local source folders (empty: any). ``db_url``: SQLAlchemy URL of the
    job database. ``jpserver_extensions``: the ``ServerApp.jpserver_extensions`` of the config files
    (without the ``.d`` folders) and ``extension_config_files`` the loaded files that may set it.
    ``config_paths``: the config folders, highest priority first.
    ``s3_bucket`` / ``azure_container``: what to HEAD (None: not named). ``hub_api_url`` /
    ``hub_service_url``: where the hub's API and the staging service are (None: not configured).
    ``min_free_bytes``: free space below which the staging folder warns. ``timeout``: seconds per
    network request.
    """

    root_dir: str
    staging_dir: str
    source_roots: list[str]
    db_url: str
    jpserver_extensions: dict[str, bool]
    config_paths: list[str]
    extension_config_files: list[str] = field(default_factory=list)
    s3_bucket: str | None = None
    azure_container: str | None = None
    hub_api_url: str | None = None
    hub_service_url: str | None = None
    min_free_bytes: int = GIB
    timeout: float = 10.0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def safe_db_url(url: str) -> str:
    """``url`` with its password hidden (``***``) and secret query values redacted."""
    from sqlalchemy.engine import make_url

    from jupyter_staging.safety.redact import SECRET_PARAMS

    try:
        parsed = make_url(url)
        if parsed.query:
            parsed = parsed.set(
                query={
                    k: REDACTED if k.lower() in SECRET_PARAMS or "password" in k.lower() else v
                    for k, v in parsed.query.items()
                }
            )
        return parsed.render_as_string(hide_password=True)
    except Exception:
        return "<database URL that does not parse>"


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest parent that exists (or is a symlink)."""
    current = path
    while not (current.exists() or current.is_symlink()) and current != current.parent:
        current = current.parent
    return current


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Doctor:
    """Runs the checks on :class:`DoctorSettings`; :meth:`run` returns the :class:`Check` list.

    Blocking and synchronous (files, SQL, HTTP with ``settings.timeout``); changes nothing but a probe
    row (written and deleted in one transaction), a probe file (created and deleted) and, for SQLite,
    the database file and its tables when they did not exist yet, as the server would create them.
    """

    def __init__(self, settings: DoctorSettings) -> None:
        self.settings = settings

    def run(self) -> list[Check]:
        """Every check, in a fixed order: extension, database, staging folder, source roots, S3,
        Azure, hub, hub service. A check that raises unexpectedly is reported as ``fail``."""
        checks: list[Check] = []
        for method in (
            self.check_extension,
            self.check_database,
            self.check_staging_folder,
            self.check_source_roots,
            self.check_s3,
            self.check_azure,
            self.check_hub,
            self.check_hub_service,
        ):
            name = method.__name__.removeprefix("check_").replace("_", " ")
            try:
                result = method()
            except Exception as exc:  # a bug or an environment the checks did not foresee
                result = [
                    Check(
                        name,
                        FAIL,
                        f"the check itself failed: {type(exc).__name__}: {_first_line(exc)}",
                        "run again with --debug and report it, with the output, to the maintainers",
                    )
                ]
            checks.extend(result if isinstance(result, list) else [result])
        return checks

    # -- extension ---------------------------------------------------------------------------------

    def check_extension(self) -> Check:
        """The extension imports, validates (``_jupyter_server_extension_points``) and is enabled."""
        from jupyter_server.extension.config import ExtensionConfigManager
        from jupyter_server.extension.manager import ExtensionPackage

        name = "extension"
        try:
            package = ExtensionPackage(name=EXTENSION, enabled=True)
            package.validate()
        except Exception as exc:
            return Check(
                name,
                FAIL,
                f"{EXTENSION} is installed in {sys.prefix} but does not load as a server extension: "
                f"{type(exc).__name__}: {_first_line(exc)}",
                f'reinstall it in this environment: pip install --force-reinstall "{EXTENSION}"',
            )
        paths = self.settings.config_paths
        explicit = self.settings.jpserver_extensions
        if EXTENSION in explicit:
            enabled = bool(explicit[EXTENSION])
            files = self.settings.extension_config_files
            where = "ServerApp.jpserver_extensions in " + (" or ".join(files) or "a config file")
        else:
            merged = ExtensionConfigManager(read_config_path=paths).get_jpserver_extensions()
            enabled = bool(merged.get(EXTENSION, False))
            setters = _files_setting_extension(paths)
            where = setters[0][0] if setters else ""
        if enabled:
            return Check(
                name,
                OK,
                f"{EXTENSION} {package.version} is installed in {sys.prefix} and enabled ({where})",
            )
        if where:
            fix = f'set "{EXTENSION}": true in ServerApp.jpserver_extensions there (or delete that entry)'
            command = _enable_command(where)
            if command:
                fix += f", e.g. with: {command}"
            return Check(
                name, FAIL, f"{EXTENSION} {package.version} is installed but disabled by {where}", fix
            )
        return Check(
            name,
            FAIL,
            f"{EXTENSION} {package.version} is installed in {sys.prefix} but no Jupyter config enables "
            "it (its jupyter_server_config.d/jupyter_staging.json was not installed with it)",
            f"jupyter server extension enable {EXTENSION}",
        )

    # -- database ----------------------------------------------------------------------------------

    def check_database(self) -> Check:
        """The job database opens, and a probe row can be written and deleted in one transaction."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

        name = "database"
        url = self.settings.db_url
        shown = safe_db_url(url)
        try:
            parsed = make_url(url)
        except ArgumentError:
            return Check(
                name,
                FAIL,
                f"StagingApp.db_url is not a SQLAlchemy URL: {shown}",
                "set StagingApp.db_url to e.g. sqlite:////path/to/jobs.sqlite or "
                "postgresql+psycopg://user@host/db",
            )
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            problem = self._sqlite_location_problem(parsed.database, shown)
            if problem is not None:
                return problem
        try:
            jobs = self._probe_database(url)
        except (ModuleNotFoundError, NoSuchModuleError) as exc:
            hint = {
                "postgresql": 'pip install "psycopg[binary]"',
                "mysql": "pip install pymysql",
                "mariadb": "pip install pymysql",
            }.get(backend, "install the driver the URL names")
            return Check(
                name,
                FAIL,
                f"the database driver for {shown} is not installed ({_first_line(exc)})",
                f'{hint} (or the project\'s hub extra: pip install "jupyter_staging[hub]")',
            )
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            return Check(
                name,
                FAIL,
                f"cannot open or write to the job database {shown}: "
                f"{type(orig).__name__}: {_first_line(orig)}",
                self._database_fix(backend, parsed.database),
            )
        except OSError as exc:
            return Check(
                name,
                FAIL,
                f"cannot open the job database {shown}: {exc.strerror or exc}",
                self._database_fix(backend, parsed.database),
            )
        return Check(
            name,
            OK,
            f"job database {shown} is reachable and writable ({jobs} job(s) recorded)",
        )

    def _sqlite_location_problem(self, database: str | None, shown: str) -> Check | None:
        name = "database"
        if not database or database == ":memory:":
            return Check(
                name,
                WARN,
                f"StagingApp.db_url {shown} is an in-memory SQLite database: jobs are lost at every restart",
                "set StagingApp.db_url to a file, e.g. sqlite:////home/me/.local/share/jupyter/"
                "jupyter_staging/jobs.sqlite (or leave it unset for that default)",
            )
        path = Path(database).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if path.exists() and not path.is_file():
            return Check(
                name,
                FAIL,
                f"the SQLite database {path} is a folder, not a file",
                "point StagingApp.db_url at a file (sqlite:////path/to/jobs.sqlite)",
            )
        folder = path.parent
        if folder.is_dir():
            return None
        blocker = _existing_ancestor(folder)
        if blocker.exists() and not blocker.is_dir():
            return Check(
                name,
                FAIL,
                f"the SQLite database {path} cannot be created: {blocker} is a file, not a folder",
                f"move {blocker} out of the way, or set StagingApp.db_url to a file in a folder that exists",
            )
        return Check(
            name,
            FAIL,
            f"the folder of the SQLite database {path} does not exist ({folder}); the server does not "
            "create it for a configured db_url",
            f"mkdir -p {folder}   (or set StagingApp.db_url to a file in a folder that exists)",
        )

    @staticmethod
    def _probe_database(url: str) -> int:
        """Open ``url`` with :class:`~jupyter_staging.engine.store.Store`, insert and delete a probe job in one
        transaction; returns the number of jobs recorded."""
        from sqlalchemy import func, select

        from jupyter_staging.engine.store import JobRecord, Store

        store = Store(url)
        try:
            with store.session() as session:
                probe = JobRecord(**_probe_values(JobRecord))
                session.add(probe)
                session.flush()
                session.delete(probe)
                session.flush()
                count = session.scalar(select(func.count()).select_from(JobRecord))
            return int(count or 0)
        finally:
            store.close()

    @staticmethod
    def _database_fix(backend: str, database: str | None) -> str:
        if backend == "sqlite":
            return (
                f"make sure {database} is a SQLite file (or absent) that this account can write, in a "
                "folder it can write (SQLite adds -wal and -shm files beside it); or set "
                "StagingApp.db_url to another file"
            )
        return (
            "check that the database server is running and reachable from here, and that the URL's user, "
            "password and database are right and the user may create tables and write rows"
        )

    # -- staging folder ----------------------------------------------------------------------------

    def check_staging_folder(self) -> Check:
        """``root_dir/staging_dir`` is allowed, writable (a probe file), with free space."""
        from jupyter_staging.errors import PathNotAllowed
        from jupyter_staging.safety.paths import resolve_destination

        name = "staging folder"
        root = Path(self.settings.root_dir).expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            return Check(
                name,
                FAIL,
                f"the server's root_dir {root} {what}",
                "pass --root-dir (or set ServerApp.root_dir) to the folder the Jupyter server serves",
            )
        rel = self.settings.staging_dir.replace("\\", "/").strip("/")
        target = root.joinpath(*[p for p in rel.split("/") if p]) if rel else root
        existing = _existing_ancestor(target)
        if existing != target and existing.exists() and not existing.is_dir():
            return Check(
                name,
                FAIL,
                f"the staging folder {target} cannot be created: {existing} is a file, not a folder",
                f"move {existing} out of the way, or set StagingApp.staging_dir to a folder under {root}",
            )
        try:
            resolve_destination(root, rel)
        except PathNotAllowed as exc:
            return Check(
                name,
                FAIL,
                f"StagingApp.staging_dir {self.settings.staging_dir!r} is refused: {exc.message}",
                f"set StagingApp.staging_dir to a plain folder under {root} (no '..', dot-folders or "
                "symlinks), e.g. staging",
            )
        try:
            fd, probe = tempfile.mkstemp(prefix=".jupyter-staging-doctor-", dir=existing)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            return Check(
                name,
                FAIL,
                f"cannot write in {existing}: {exc.strerror or exc}",
                f"give the account running Jupyter write access to {existing} (chown/chmod), or set "
                "StagingApp.staging_dir to a folder it can write",
            )
        free = shutil.disk_usage(existing).free
        later = "" if existing == target else f" (created by the first job; {existing} is writable)"
        if free < self.settings.min_free_bytes:
            return Check(
                name,
                WARN,
                f"the staging folder {target}{later} has only {_human(free)} free",
                f"free some space on that file system (at least {_human(self.settings.min_free_bytes)}), "
                "or set StagingApp.staging_dir / the server's root_dir to a larger one",
            )
        return Check(name, OK, f"the staging folder {target} is writable{later}, {_human(free)} free")

    # -- source roots ------------------------------------------------------------------------------

    def check_source_roots(self) -> list[Check]:
        """Each configured source root exists, is a folder, and can be listed."""
        name = "source root"
        roots = self.settings.source_roots
        if not roots:
            return [
                Check(
                    "source roots",
                    OK,
                    "StagingApp.source_roots is empty: jobs may read any local path this account can read",
                )
            ]
        checks = []
        for raw in roots:
            path = Path(raw).expanduser()
            if not path.exists():
                dangling = " (a symlink to a missing target)" if path.is_symlink() else ""
                checks.append(
                    Check(
                        name,
                        FAIL,
                        f"source root {path} does not exist{dangling}",
                        f"mount or create {path}, or remove it from StagingApp.source_roots",
                    )
                )
                continue
            if not path.is_dir():
                checks.append(
                    Check(
                        name,
                        FAIL,
                        f"source root {path} is not a folder",
                        f"set StagingApp.source_roots to folders; replace {path} by its folder",
                    )
                )
                continue
            try:
                with os.scandir(path) as entries:
                    next(entries, None)
                readable = os.access(path, os.R_OK | os.X_OK)
            except OSError as exc:
                readable, reason = False, exc.strerror or str(exc)
            else:
                reason = "permission denied"
            if not readable:
                checks.append(
                    Check(
                        name,
                        FAIL,
                        f"source root {path} cannot be listed: {reason}",
                        f"give the account running Jupyter read and execute access to {path}",
                    )
                )
                continue
            real = path.resolve()
            via = f" (-> {real})" if real != path.absolute() else ""
            checks.append(Check(name, OK, f"source root {path}{via} is readable"))
        return checks

    # -- S3 ----------------------------------------------------------------------------------------

    def check_s3(self) -> Check:
        """boto3 finds credentials; a HEAD on the named bucket (or a bucket listing) answers."""
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            ProfileNotFound,
        )

        name = "s3"
        bucket = self.settings.s3_bucket
        endpoint_env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        try:
            session = boto3.session.Session()
            credentials = session.get_credentials()
            client = session.client(
                "s3",
                config=BotoConfig(
                    signature_version="s3v4",
                    retries={"mode": "standard", "max_attempts": 1},
                    connect_timeout=self.settings.timeout,
                    read_timeout=self.settings.timeout,
                ),
            )
        except ProfileNotFound:
            return Check(
                name,
                FAIL,
                f"AWS_PROFILE names the profile {profile!r}, which is in no AWS config file",
                f"create it (aws configure --profile {profile}) or unset AWS_PROFILE",
            )
        except (BotoCoreError, ValueError) as exc:
            return Check(
                name,
                FAIL,
                f"boto3 cannot build an S3 client from this configuration: {redact_text(_first_line(exc))}",
                "check AWS_ENDPOINT_URL (a full URL such as http://127.0.0.1:9000) and AWS_DEFAULT_REGION",
            )
        if credentials is None and not (bucket or endpoint_env or profile):
            return Check(
                name,
                SKIP,
                "S3 is not configured here (no AWS credentials, profile or AWS_ENDPOINT_URL): "
                "s3:// sources and destinations would fail",
                "to use S3, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), plus "
                "AWS_ENDPOINT_URL for MinIO / Ceph",
            )
        endpoint = redact_url(client.meta.endpoint_url)
        if credentials is None:
            return Check(
                name,
                FAIL,
                f"no AWS credentials found for the S3 endpoint {endpoint} (NoCredentials)",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile "
                "in ~/.aws/credentials",
            )
        source = credentials.method
        unreachable = (
            f"cannot reach the S3 endpoint {endpoint}",
            "check AWS_ENDPOINT_URL (host and port) and that the S3 service is running and reachable "
            "from this machine",
        )
        if not bucket:
            try:
                count = len(client.list_buckets().get("Buckets", []))
            except (NoCredentialsError, EndpointConnectionError, BotoCoreError) as exc:
                return Check(name, FAIL, f"{unreachable[0]}: {_describe_boto(exc)}", unreachable[1])
            except ClientError as exc:
                code = _boto_code(exc)
                if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    return self._s3_bad_key(code, endpoint, source)
                return Check(
                    name,
                    WARN,
                    f"the S3 endpoint {endpoint} answers (credentials from {source}) but may not list "
                    f"buckets ({code}); no bucket was named to check",
                    f"name a bucket staging uses: --s3-bucket BUCKET or {ENV_BUCKET}=BUCKET",
                )
            return Check(
                name,
                WARN,
                f"the S3 endpoint {endpoint} accepts the credentials from {source} ({count} bucket(s) "
                "visible); no bucket was named to check",
                f"name a bucket staging uses: --s3-bucket BUCKET or {ENV_BUCKET}=BUCKET",
            )
        try:
            client.head_bucket(Bucket=bucket)
        except (EndpointConnectionError, BotoCoreError) as exc:
            return Check(name, FAIL, f"{unreachable[0]}: {_describe_boto(exc)}", unreachable[1])
        except ClientError as exc:
            code = _boto_code(exc)
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if code in ("404", "NoSuchBucket", "NotFound"):
                return Check(
                    name,
                    FAIL,
                    f"the bucket {bucket!r} does not exist at {endpoint} (404)",
                    f"create it (aws s3 mb s3://{bucket}) or name an existing bucket with --s3-bucket / "
                    f"{ENV_BUCKET}",
                )
            if code in ("403", "AccessDenied", "Forbidden"):
                code = self._s3_refusal_code(client, bucket) or code
                if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    return self._s3_bad_key(code, endpoint, source)
                return Check(
                    name,
                    FAIL,
                    f"access to the bucket {bucket!r} at {endpoint} was refused (403 {code}): the "
                    f"credentials from {source} may not read it",
                    f"grant them s3:ListBucket and s3:GetObject (s3:PutObject for destinations) on "
                    f"{bucket}, or use credentials that have them",
                )
            region = headers.get("x-amz-bucket-region")
            if code in ("301", "PermanentRedirect", "400", "AuthorizationHeaderMalformed") and region:
                return Check(
                    name,
                    FAIL,
                    f"the bucket {bucket!r} is in the region {region}, not {client.meta.region_name}",
                    f"set AWS_DEFAULT_REGION={region}",
                )
            return Check(
                name,
                FAIL,
                f"the S3 endpoint {endpoint} answered {code} to a HEAD on the bucket {bucket!r}",
                "check the endpoint, the region (AWS_DEFAULT_REGION) and the bucket name",
            )
        return Check(
            name,
            OK,
            f"the bucket {bucket!r} at {endpoint} is reachable with the credentials from {source}",
        )

    @staticmethod
    def _s3_refusal_code(client: Any, bucket: str) -> str | None:
        """A HEAD answer has no body: ask again with a listing to learn why the bucket was refused."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except ClientError as exc:
            return _boto_code(exc)
        except BotoCoreError:
            return None
        return None

    @staticmethod
    def _s3_bad_key(code: str, endpoint: str, source: str) -> Check:
        what = "access key id is unknown to" if code == "InvalidAccessKeyId" else "secret key is refused by"
        return Check(
            "s3",
            FAIL,
            f"the AWS {what} the S3 endpoint {endpoint} ({code}; credentials from {source})",
            "fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile's keys) for this endpoint",
        )

    # -- Azure -------------------------------------------------------------------------------------

    def check_azure(self) -> Check:
        """The azure extra is installed and the configured account (or the named container) answers."""
        from jupyter_staging.sources import azure as az

        name = "azure"
        container = self.settings.azure_container
        configured = az.azure_configured()
        try:
            az.require_sdk()
            sdk = True
        except Exception:
            sdk = False
        if not configured:
            extra = "" if sdk else "; the azure extra is not installed either"
            return Check(
                name,
                SKIP,
                f"Azure Blob Storage is not configured here (no {az.ENV_CONNECTION_STRING}, "
                f"{az.ENV_ACCOUNT} or {az.ENV_ACCOUNT_URL}){extra}",
                f"to use az:// sources: {'' if sdk else az.INSTALL_HINT + ', then '}set "
                f"{az.ENV_CONNECTION_STRING} (or {az.ENV_ACCOUNT} with {az.ENV_KEY} or {az.ENV_SAS})",
            )
        if not sdk:
            return Check(
                name,
                FAIL,
                "Azure settings are present but azure-storage-blob (the azure extra) is not installed",
                az.INSTALL_HINT,
            )
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            service = az.blob_service_client(retries=0)
        except Exception as exc:
            return Check(
                name,
                FAIL,
                getattr(exc, "message", None) or _first_line(exc),
                f"set {az.ENV_CONNECTION_STRING} as the portal shows it (Access keys > Connection string)",
            )
        account = service.account_name
        where = redact_url(service.primary_endpoint)
        try:
            if container:
                service.get_container_client(container).get_container_properties()
            else:
                info = service.get_account_information()
        except HttpResponseError as exc:
            code = az.error_code(exc) or str(exc.status_code)
            if code == "ContainerNotFound" or (container and exc.status_code == 404):
                return Check(
                    name,
                    FAIL,
                    f"the container {container!r} does not exist in the account {account} at {where}",
                    f"create it (az storage container create -n {container}) or name an existing one with "
                    f"--azure-container / {ENV_AZURE_CONTAINER}",
                )
            key_fix = (
                f"check the key or SAS in {az.ENV_CONNECTION_STRING}, {az.ENV_KEY} or {az.ENV_SAS} (and that "
                "a SAS has not expired)"
            )
            if code in ("AuthenticationFailed", "InvalidAuthenticationInfo") or exc.status_code == 401:
                return Check(
                    name, FAIL, f"the account {account} at {where} refused the key or SAS ({code})", key_fix
                )
            if exc.status_code == 403 and container:
                return Check(
                    name,
                    FAIL,
                    f"the account {account} at {where} refused the key or SAS for the container "
                    f"{container!r} ({code}): it is wrong or expired, or may not read and list that "
                    "container",
                    key_fix
                    + "; grant read and list access (Storage Blob Data Reader, or a SAS with r and l)",
                )
            if exc.status_code == 403:
                return Check(
                    name,
                    WARN,
                    f"the account {account} at {where} answers but refused to describe itself ({code}): the "
                    "key or SAS is wrong, or only grants access to some containers",
                    f"name a container staging reads (--azure-container NAME or {ENV_AZURE_CONTAINER}=NAME) "
                    f"to check it; {key_fix}",
                )
            return Check(
                name,
                FAIL,
                f"the account {account} at {where} answered {code}"
                + (f" for the container {container!r}" if container else ""),
                "check the account's settings and the service's status",
            )
        except AzureError as exc:
            return Check(
                name,
                FAIL,
                f"cannot reach Azure Blob Storage at {where}: {az.describe_azure_error(exc)}",
                "check the BlobEndpoint / account URL (host and port) and that the service is reachable "
                "from this machine",
            )
        if container:
            return Check(name, OK, f"the container {container!r} in the account {account} at {where} answers")
        sku = info.get("sku_name") or "unknown SKU"
        return Check(
            name,
            WARN,
            f"the account {account} at {where} accepts the credentials ({sku}); no container was named "
            "to check",
            f"name a container staging reads: --azure-container NAME or {ENV_AZURE_CONTAINER}=NAME",
        )

    # -- hub ---------------------------------------------------------------------------------------

    def check_hub(self) -> Check:
        """The hub's REST API answers ``GET <api>/``; with ``JUPYTERHUB_API_TOKEN``, ``GET <api>/user``."""
        import requests

        name = "hub"
        api = self.settings.hub_api_url
        if not api:
            return Check(
                name,
                SKIP,
                "no JupyterHub configured (JUPYTERHUB_API_URL is unset and no --hub-url)",
                "to check a hub: --hub-url http://hub.example.org/ (run inside a single-user server, "
                "JUPYTERHUB_API_URL is set for you)",
            )
        api = api.rstrip("/")
        shown = redact_url(api)
        try:
            r = requests.get(f"{api}/", timeout=self.settings.timeout)
            version = r.json().get("version") if r.status_code == 200 else None
        except requests.RequestException as exc:
            return Check(
                name,
                FAIL,
                f"cannot reach the JupyterHub API at {shown}: {_describe_requests(exc)}",
                "check --hub-url / JUPYTERHUB_API_URL (host, port and base URL) and that the hub is running",
            )
        except ValueError:
            version = None
        if not version:
            return Check(
                name,
                FAIL,
                f"{shown}/ answered {r.status_code} but is not JupyterHub's REST API",
                "--hub-url is the hub's public URL (e.g. http://hub:8000/); JUPYTERHUB_API_URL ends in "
                "/hub/api",
            )
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not token:
            return Check(
                name, OK, f"JupyterHub {version} answers at {shown} (no JUPYTERHUB_API_TOKEN to check)"
            )
        try:
            r = requests.get(
                f"{api}/user", headers={"Authorization": f"token {token}"}, timeout=self.settings.timeout
            )
        except requests.RequestException as exc:
            return Check(
                name,
                FAIL,
                f"JupyterHub {version} at {shown} stopped answering: {_describe_requests(exc)}",
                "check the hub's log",
            )
        if r.status_code in (401, 403):
            return Check(
                name,
                FAIL,
                f"JupyterHub {version} at {shown} refused JUPYTERHUB_API_TOKEN ({r.status_code}): revoked, "
                "expired or from another hub",
                "use a current token: restart the server from the hub, or create one at "
                f"{redact_url(api.removesuffix('/api'))}/token",
            )
        if r.status_code != 200:
            return Check(
                name,
                WARN,
                f"JupyterHub {version} at {shown} answered {r.status_code} to GET /user with the token",
                "check the hub's log",
            )
        model = r.json()
        who = f"{model.get('kind', 'user')} {model.get('name', '?')}"
        return Check(name, OK, f"JupyterHub {version} answers at {shown}; JUPYTERHUB_API_TOKEN is {who}'s")

    def check_hub_service(self) -> Check:
        """The hub's staging service answers at its URL (through the hub's proxy)."""
        import requests

        name = "hub service"
        url = self.settings.hub_service_url
        if not url:
            return Check(
                name,
                SKIP,
                "no staging service URL given (--hub-service-url or " + ENV_HUB_SERVICE_URL + ")",
                "to check the hub service: --hub-service-url http://hub.example.org/services/staging/",
            )
        shown = redact_url(url)
        headers = {}
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if token:
            headers["Authorization"] = f"token {token}"
        try:
            r = requests.get(url, headers=headers, timeout=self.settings.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Check(
                name,
                FAIL,
                f"cannot reach the staging service at {shown}: {_describe_requests(exc)}",
                "check the URL (the hub's address plus /services/<name>/) and that the hub is running",
            )
        if r.status_code == 200:
            return Check(name, OK, f"the staging service at {shown} answers")
        if r.status_code in (301, 302, 303, 307):
            location = urljoin(url, r.headers.get("Location", ""))
            if "/oauth2/authorize" in urlsplit(location).path:
                return Check(
                    name, OK, f"the staging service at {shown} answers (it sends visitors to log in)"
                )
            if urlsplit(location).path.endswith("/hub" + urlsplit(url).path):
                # The proxy's default route: the hub got the request and sends it to its own pages.
                return Check(
                    name,
                    FAIL,
                    f"no service answers at {shown}: the hub's proxy has no route for it (the hub "
                    "redirected it to itself)",
                    "check the service's name and url in c.JupyterHub.services (docs/hub.md) and the URL's "
                    "prefix (/services/<name>/); is jupyter-staging-hub running?",
                )
            return Check(
                name,
                WARN,
                f"the staging service at {shown} redirects to {redact_url(location)}",
                "give the URL the redirect points to, or check the service's configuration",
            )
        if r.status_code == 404:
            return Check(
                name,
                FAIL,
                f"nothing answers at {shown} (404): the hub's proxy has no route for it",
                "check the service's name and url in c.JupyterHub.services (docs/hub.md) and the URL's "
                "prefix (/services/<name>/)",
            )
        if r.status_code in (502, 503, 504):
            return Check(
                name,
                FAIL,
                f"the hub's proxy could not reach the staging service at {shown} ({r.status_code})",
                "start the service (jupyter-staging-hub) or check the hub's log for why it stopped",
            )
        return Check(name, WARN, f"the staging service at {shown} answered {r.status_code}", "check its log")


def _files_setting_extension(paths: list[str]) -> list[tuple[str, bool]]:
    """``(file, enabled)`` for each JSON config file that names the extension, highest priority first
    (the order :class:`~jupyter_server.extension.config.ExtensionConfigManager` merges them in)."""
    found = []
    for folder in paths:
        names = [os.path.join(folder, "jupyter_server_config.json")]
        names += sorted(glob.glob(os.path.join(folder, "jupyter_server_config.d", "*.json")), reverse=True)
        for name in names:
            try:
                with open(name, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            extensions = data.get("ServerApp", {}).get("jpserver_extensions", {})
            if isinstance(extensions, dict) and EXTENSION in extensions:
                found.append((name, bool(extensions[EXTENSION])))
    return found


def _probe_values(model: Any) -> dict[str, Any]:
    """Column values for a probe row of ``model``: a ``doctor-...`` primary key, recognisable names, and
    a value of the right type for every other column that needs one (so the probe keeps working when
    columns are added)."""
    from sqlalchemy import JSON, Boolean, DateTime, Integer, Numeric

    from jupyter_staging.engine.store import utcnow

    known = {
        "owner": "jupyter-staging-doctor",
        "name": "jupyter staging doctor probe",
        "state": "succeeded",
        "method": "copy",
    }
    values: dict[str, Any] = {}
    for column in model.__table__.columns:
        if column.primary_key:
            values[column.key] = f"doctor-{uuid.uuid4().hex[:24]}"
        elif column.key in known:
            values[column.key] = known[column.key]
        elif column.nullable or column.default is not None or column.server_default is not None:
            continue
        elif isinstance(column.type, DateTime):
            values[column.key] = utcnow()
        elif isinstance(column.type, Boolean):
            values[column.key] = False
        elif isinstance(column.type, (Integer, Numeric)):
            values[column.key] = 0
        elif isinstance(column.type, JSON):
            values[column.key] = {}
        else:
            values[column.key] = ""
    return values


def _enable_command(disabling_file: str) -> str | None:
    """The ``jupyter server extension enable`` command that rewrites ``disabling_file``, when it is the
    file that command writes (``<config dir>/jupyter_server_config.d/jupyter_staging.json``)."""
    from jupyter_core.paths import ENV_CONFIG_PATH, SYSTEM_CONFIG_PATH, jupyter_config_dir

    path = Path(disabling_file)
    if path.name != f"{EXTENSION}.json" or path.parent.name != "jupyter_server_config.d":
        return None
    folder = path.parent.parent
    for flag, candidates in (
        ("--user", [jupyter_config_dir()]),
        ("--sys-prefix", ENV_CONFIG_PATH[:1]),
        ("--system", SYSTEM_CONFIG_PATH[:1]),
    ):
        if any(folder == Path(c) for c in candidates):
            return f"jupyter server extension enable {flag} {EXTENSION}"
    return None


def _files_naming_extension(files: list[str]) -> list[str]:
    """The config files among ``files`` that set ``jpserver_extensions`` for the extension (a JSON file
    that does; a Python file that names both)."""
    found = []
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError:
            continue
        if name.endswith(".json"):
            try:
                extensions = json.loads(text).get("ServerApp", {}).get("jpserver_extensions", {})
            except (ValueError, AttributeError):
                continue
            if isinstance(extensions, dict) and EXTENSION in extensions:
                found.append(name)
        elif "jpserver_extensions" in text and EXTENSION in text:
            found.append(name)
    return found


def _boto_code(exc: Any) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _describe_boto(exc: BaseException) -> str:
    from jupyter_staging.sources.http import describe_error

    return describe_error(exc)


def _describe_requests(exc: BaseException) -> str:
    from jupyter_staging.sources.http import describe_error

    return describe_error(exc)


def secrets_in_environment(extra: list[str] | None = None) -> list[str]:
    """The values of :data:`SECRET_ENV` (and the key / SAS parts of an Azure connection string) that
    are set, plus ``extra``: strings that must never be printed."""
    values = [os.environ.get(name, "") for name in SECRET_ENV]
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    for part in conn.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
            values.append(value)
    values += extra or []
    # Short values would blank out ordinary words; real keys and tokens are long.
    return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with URLs redacted and every string of ``secrets`` replaced by ``REDACTED``."""
    text = redact_text(text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class DoctorApp(JupyterApp):
    """``jupyter staging doctor``: check what staging needs, and say how to fix what is broken."""

    name = "jupyter-staging-doctor"
    version = __version__
    description = """Check what jupyter_staging needs on this machine and explain how to fix what is broken:
    the server extension, the job database, the staging folder, the source roots, S3, Azure and the hub.
    Exit status 1 when a check fails."""
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
        staging = StagingApp(config=self.config)
        server = self.config["ServerApp"] if "ServerApp" in self.config else Config()
        root = self.root_dir or (str(server["root_dir"]) if "root_dir" in server else "") or os.getcwd()
        extensions = server["jpserver_extensions"] if "jpserver_extensions" in server else {}
        hub = self.hub_url or os.environ.get("JUPYTERHUB_API_URL", "")
        if hub and not hub.rstrip("/").endswith("/hub/api"):
            hub = hub.rstrip("/") + "/hub/api"
        return DoctorSettings(
            root_dir=str(Path(os.path.expanduser(root)).absolute()),
            staging_dir=staging.staging_dir,
            source_roots=list(staging.source_roots),
            db_url=staging.db_url,
            jpserver_extensions=dict(extensions),
            config_paths=list(self.config_file_paths),
            extension_config_files=_files_naming_extension(self.loaded_config_files),
            s3_bucket=self.s3_bucket or os.environ.get(ENV_BUCKET) or None,
            azure_container=self.azure_container or os.environ.get(ENV_AZURE_CONTAINER) or None,
            hub_api_url=hub or None,
            hub_service_url=self.hub_service_url or os.environ.get(ENV_HUB_SERVICE_URL) or None,
            min_free_bytes=int(self.min_free_gib * GIB),
            timeout=self.timeout,
        )

    def start(self) -> None:
        """Run the checks, print them (text or ``--json``), exit 1 if any failed."""
        settings = self.settings()
        checks = Doctor(settings).run()
        secrets = secrets_in_environment(_db_password(settings.db_url))
        for check in checks:
            check.message = scrub(check.message, secrets)
            check.fix = scrub(check.fix, secrets) if check.fix else None
        failed = any(c.status == FAIL for c in checks)
        if self.json:
            report = {
                "ok": not failed,
                "version": __version__,
                "python": sys.executable,
                "root_dir": settings.root_dir,
                "config_files": self.loaded_config_files,
                "checks": [asdict(c) for c in checks],
            }
            print(scrub(json.dumps(report, indent=2), secrets))
        else:
            print(self.render(checks, settings))
        if failed:
            self.exit(1)

    def render(self, checks: list[Check], settings: DoctorSettings) -> str:
        """The checks as text, one block per check, then a one-line tally."""
        lines = [
            f"jupyter staging doctor {__version__} (Python {sys.executable})",
            f"  root_dir: {settings.root_dir}",
            "  config files: " + (", ".join(self.loaded_config_files) or "none found"),
            "",
        ]
        width = max(len(c.name) for c in checks)
        for check in checks:
            lines.append(f"{check.status.upper():<4}  {check.name:<{width}}  {check.message}")
            if check.fix and check.status != OK:
                lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        tally = {s: sum(c.status == s for c in checks) for s in (FAIL, WARN, OK, SKIP)}
        lines += [
            "",
            f"{tally[FAIL]} failed, {tally[WARN]} warning(s), {tally[OK]} ok, {tally[SKIP]} skipped",
        ]
        return "\n".join(lines)


def _db_password(url: str) -> list[str]:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return []
    return [str(password)] if password else []


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``jupyter-staging`` script (``jupyter staging ...``)."""
    StagingCommand.launch_instance(argv)


if __name__ == "__main__":
    main()
