"""What the hub service does: copy, link or stream shared-storage files for a user, and record it.

Three parts, from the bottom up:

- File work that knows nothing of tornado (:class:`UserAreas`, :func:`local_copy`, :func:`hardlink`,
  :func:`symlink`, :func:`open_download`). A user's area is writable by the user, so everything below the
  area's trusted base is reached by directory file descriptors opened with ``O_NOFOLLOW | O_DIRECTORY``,
  one component at a time, and files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to
  them: a symlink the user plants is refused, never followed, even if it appears between two checks.
- :class:`HubAPI`, a small client of the JupyterHub REST API and of a user's server, for ``jupyter_copy``
  (https://jupyterhub.readthedocs.io/en/stable/reference/rest-api.html).
- :class:`StagingOperations`, which runs one ``POST api/stage`` call end to end: checks, the work (on
  worker threads, at most ``concurrency`` at once), one database row and one log line per call.

Every deliberate refusal is a :class:`~jupyter_staging.errors.StagingError` with a stable ``code`` and the
HTTP ``status`` to answer with; messages name paths, never tokens.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import pwd
import secrets
import stat
import string
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from jupyter_staging.errors import (
    DestinationExists,
    InvalidRequest,
    PathNotAllowed,
    SourceNotFound,
    StagingError,
)
from jupyter_staging.hub.db import Operation, OperationStore, utcnow
from jupyter_staging.safety.partfile import copy_stream
from jupyter_staging.safety.paths import check_output_name, resolve_source

log = logging.getLogger(__name__)

#: Bytes per read when hashing or streaming a file.
BLOCK_SIZE = 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: Methods of ``POST api/stage``. ``symlink_copy`` is the seed SKAO service's name for ``hardlink``.
METHODS = ("local_copy", "hardlink", "symlink", "direct_download", "jupyter_copy")
_ALIASES = {"symlink_copy": "hardlink"}

_SAFE_USERNAME_CHARS = frozenset(string.ascii_letters + string.digits)


# -- the request ----------------------------------------------------------------------------------


class StageRequest(BaseModel):
    """Body of ``POST api/stage`` (the SKAO staging call).

    ``local_path_on_storage`` is an absolute path on the shared storage (file only). ``relative_path``
    is where it goes, relative to the user's area: a file path, or a folder when it ends in ``/``
    (the file keeps its name); empty puts the file at the top of the area. There is no user field:
    the user is the authenticated one.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["local_copy", "hardlink", "symlink", "direct_download", "jupyter_copy", "symlink_copy"]
    local_path_on_storage: str = Field(min_length=1, max_length=4096)
    relative_path: str = Field(default="", max_length=4096)


def parse_stage_request(body: bytes) -> StageRequest:
    """Parse and validate a ``POST api/stage`` body.

    Raises :class:`InvalidRequest` (400): code ``invalid_json`` for a body that is not a JSON object,
    ``user_in_body`` when it names a user (the user is never taken from the body), ``invalid_request``
    for missing or malformed fields (values are never echoed).
    """
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    if {"user", "username", "user_name"} & set(data):
        raise InvalidRequest(
            "the user is the one you are logged in as, never a field of the body; "
            "admins act for another user with ?username=",
            code="user_in_body",
        )
    try:
        return StageRequest.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in err.errors(include_input=False, include_url=False)
        )
        raise InvalidRequest(f"invalid request: {problems}") from None


# -- users ----------------------------------------------------------------------------------------


def escape_username(name: str) -> str:
    """``name`` made safe as one path component: ASCII letters and digits stay, every other byte of its
    UTF-8 form becomes ``-xx`` (hex). The same scheme as ``escapism`` / KubeSpawner's legacy
    ``{username}``, so ``alice`` stays ``alice`` and ``a.b`` becomes ``a-2eb``; ``..`` cannot survive."""
    out = []
    for char in name:
        if char in _SAFE_USERNAME_CHARS:
            out.append(char)
        else:
            out.extend(f"-{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


@dataclass(frozen=True)
class Owner:
    """Numeric owner given to what the service creates in a user's area."""

    uid: int
    gid: int


def owner_for(username: str) -> Owner | None:
    """The user's uid and gid when this process may give files away (it runs as root) and the user
    exists in the password database; otherwise None and files keep the service's ownership."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        return None
    return Owner(entry.pw_uid, entry.pw_gid)


# -- sources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """A regular file on the shared storage: ``path`` is resolved (no symlinks), ``size`` in bytes."""

    path: Path
    size: int
    device: int
    inode: int

    @property
    def name(self) -> str:
        return self.path.name


def check_source(path: str, shared_roots: list[str]) -> SourceFile:
    """Resolve ``path`` (absolute) and check it is a regular file inside ``shared_roots`` after every
    symlink is followed.

    Raises :class:`PathNotAllowed` (400, ``path_not_allowed``) for relative paths or paths outside the
    roots (including through a symlink), :class:`SourceNotFound` (400, ``source_not_found``) when it does
    not exist, :class:`InvalidRequest` (400, ``source_not_a_file``) for folders and special files.
    """
    if not shared_roots:
        raise StagingError("the service has no shared roots configured", code="not_configured", status=500)
    resolved = resolve_source(path, shared_roots)
    st = resolved.stat()
    if not stat.S_ISREG(st.st_mode):
        raise InvalidRequest(f"source {path!r} is not a regular file", code="source_not_a_file")
    return SourceFile(resolved, st.st_size, st.st_dev, st.st_ino)


def _open_source(source: SourceFile) -> int:
    """An fd reading ``source``; refuses a file replaced since :func:`check_source` (``source_changed``)."""
    try:
        fd = os.open(source.path, _READ_FLAGS)
    except FileNotFoundError:
        raise SourceNotFound(f"source {str(source.path)!r} disappeared") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PathNotAllowed(f"source {str(source.path)!r} became a symbolic link") from None
        raise
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (source.device, source.inode) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StagingError(
            f"source {str(source.path)!r} changed while it was checked", code="source_changed", status=409
        )
    return fd


def sha256_of_fd(fd: int) -> tuple[int, str]:
    """``(size_bytes, sha256_hex)`` of the whole file open at ``fd`` (read with ``pread``)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, BLOCK_SIZE, offset)
        if not block:
            return offset, digest.hexdigest()
        digest.update(block)
        offset += len(block)


def source_sha256(source: SourceFile) -> str:
    """sha256 (hex) of a source file's bytes."""
    fd = _open_source(source)
    try:
        return sha256_of_fd(fd)[1]
    finally:
        os.close(fd)


# -- user areas -----------------------------------------------------------------------------------


@dataclass
class Target:
    """Where one file goes: ``name`` inside the folder open at ``dir_fd`` (opened without following any
    symlink below the area's trusted base). ``path`` is the absolute path, for records and messages;
    ``folder`` the folder relative to the user's area (POSIX, ``""`` for the area itself).
    Close it (or use it as a context manager) to release the descriptor."""

    dir_fd: int
    name: str
    path: str
    folder: str
    owner: Owner | None

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self) -> os.stat_result | None:
        """``lstat`` of the target name, or None when nothing is there."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None


class UserAreas:
    """The users' areas, from a template such as ``/home/{username}/staging``.

    ``{username}`` is replaced by :func:`escape_username` of the user's name. The folders above the
    component holding ``{username}`` are the trusted base: set by the administrator, resolved once,
    symlinks allowed. From the user's component down, every folder is opened with ``O_NOFOLLOW``, and
    missing folders are created (mode 0755, given to the user when the service runs as root).

    Raises :class:`ValueError` at construction for a template that is relative, lacks ``{username}``, or
    has ``.``/``..`` components.
    """

    def __init__(self, template: str) -> None:
        parts = PurePosixPath(template).parts
        if not template.startswith("/"):
            raise ValueError(f"user area template {template!r} must be an absolute path")
        if any(part in (".", "..") for part in parts):
            raise ValueError(f"user area template {template!r} must not contain '.' or '..'")
        index = next((i for i, part in enumerate(parts) if "{username}" in part), None)
        if index is None:
            raise ValueError(f"user area template {template!r} must contain {{username}}")
        self.template = template
        self.base = Path(*parts[:index]).resolve()
        self._below = parts[index:]

    def components(self, username: str) -> list[str]:
        """The area's folders below the trusted base, for ``username``."""
        escaped = escape_username(username)
        return [part.replace("{username}", escaped) for part in self._below]

    def path(self, username: str) -> Path:
        """Absolute path of the user's area (it may not exist yet)."""
        return self.base.joinpath(*self.components(username))

    def open_target(
        self,
        username: str,
        relative_path: str,
        default_name: str,
        *,
        create: bool = True,
        owner: Owner | None = None,
    ) -> Target:
        """Open the folder that will hold the target and return the :class:`Target`.

        ``relative_path`` is relative to the user's area (see :class:`StageRequest`); ``default_name`` is
        used when it names a folder. With ``create``, missing folders are made.

        Raises :class:`PathNotAllowed` (400, ``path_not_allowed``) for absolute paths, ``..``, hidden
        (dot) components, NUL, or a symlink (or a file) where a folder is expected;
        :class:`FileNotFoundError` when a folder is missing and ``create`` is False; ``not_configured``
        (500) when the trusted base folder is missing.
        """
        folder, name = split_relative_path(relative_path, default_name)
        try:
            fd = os.open(self.base, _DIR_FLAGS)
        except OSError as err:
            raise StagingError(
                f"the base folder of the user areas, {self.base}, cannot be opened: {err.strerror}",
                code="not_configured",
                status=500,
            ) from None
        walked: list[str] = []
        try:
            for part in [*self.components(username), *folder]:
                child = _open_child_dir(fd, part, create=create, owner=owner, shown=walked + [part])
                os.close(fd)
                fd = child
                walked.append(part)
        except BaseException:
            os.close(fd)
            raise
        area = self.path(username)
        return Target(
            dir_fd=fd,
            name=name,
            path=str(area.joinpath(*folder, name)),
            folder="/".join(folder),
            owner=owner,
        )


def split_relative_path(relative_path: str, default_name: str) -> tuple[list[str], str]:
    """``(folders, file_name)`` of a ``relative_path`` inside a user's area.

    A path ending in ``/`` (or empty) is a folder and the file is ``default_name``. Raises
    :class:`PathNotAllowed` for absolute paths, ``..``, dot components and NUL.
    """
    if "\x00" in relative_path or "\x00" in default_name:
        raise PathNotAllowed("relative_path must not contain NUL characters")
    raw = relative_path.replace("\\", "/").strip()
    if raw.startswith("/"):
        raise PathNotAllowed(
            f"relative_path {relative_path!r} must be relative to your area; absolute paths are refused"
        )
    is_folder = raw == "" or raw.endswith("/")
    parts = check_output_name(raw.rstrip("/")).split("/") if raw.rstrip("/") else []
    if is_folder:
        parts.append(check_output_name(default_name))
    if len(parts) == 1 and parts[0] == "":
        raise PathNotAllowed("relative_path names no file")
    return parts[:-1], parts[-1]


def _open_child_dir(parent_fd: int, name: str, *, create: bool, owner: Owner | None, shown: list[str]) -> int:
    """Open folder ``name`` in ``parent_fd`` without following a symlink, creating it if asked."""
    where = "/".join(shown)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathNotAllowed(
                f"{where!r} is a symbolic link or a file, not a folder; links in a user's area are never "
                "followed"
            ) from None
        raise
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass  # made meanwhile: the O_NOFOLLOW open below decides whether it is acceptable
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathNotAllowed(f"{where!r} was replaced by a symbolic link or a file") from None
        raise
    if owner is not None:
        os.fchown(fd, owner.uid, owner.gid)
    return fd


# -- the file work --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Result of the file work: ``status`` ``succeeded`` or ``skipped`` (a duplicate); ``bytes`` the file
    size; ``sha256`` the hex digest of the bytes written (None for links)."""

    status: str
    bytes: int | None = None
    sha256: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.status == "skipped"


def _exists_error(target: Target) -> DestinationExists:
    return DestinationExists(
        f"{target.path} already exists with different content; it is never overwritten",
        code="target_exists",
    )


def check_duplicate(target: Target, source: SourceFile) -> bool:
    """True when the target already holds the same bytes as ``source`` (same size and sha256, or the
    very same inode); False when nothing is there.

    Raises :class:`DestinationExists` (409, ``target_exists``) when something else is there, including
    a symlink (which is never followed).
    """
    st = target.lstat()
    if st is None:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != source.size:
        raise _exists_error(target)
    if (st.st_dev, st.st_ino) == (source.device, source.inode):
        return True
    fd = os.open(target.name, _READ_FLAGS, dir_fd=target.dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _exists_error(target)
        _, existing = sha256_of_fd(fd)
    finally:
        os.close(fd)
    if existing != source_sha256(source):
        raise _exists_error(target)
    return True


class _FdWriter:
    """The ``write`` side :func:`jupyter_staging.safety.partfile.copy_stream` expects, on a raw fd, hashing."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.sha256.update(data)
        self.size += len(data)


def local_copy(source: SourceFile, target: Target) -> Outcome:
    """Copy ``source`` to ``target``: written as ``<name>.<random>.part`` (created with ``O_EXCL |
    O_NOFOLLOW`` in the target's folder fd), fsynced, checked against the source size, made read-only
    (0444), given to the user when the service may, then linked under its final name, which must not
    exist (nothing is ever overwritten).

    Returns ``skipped`` for a duplicate. Raises :class:`DestinationExists` (``target_exists``) for a
    different file of that name, ``source_changed`` (409) when the source changed size while copied.
    """
    if check_duplicate(target, source):
        return Outcome("skipped", source.size, source_sha256(source))
    src_fd = _open_source(source)
    part = f"{target.name}.{secrets.token_hex(4)}.part"
    try:
        out_fd = os.open(part, _CREATE_FLAGS, 0o600, dir_fd=target.dir_fd)
    except BaseException:
        os.close(src_fd)
        raise
    published = False
    try:
        writer = _FdWriter(out_fd)
        with os.fdopen(src_fd, "rb", buffering=0, closefd=False) as reader:
            copy_stream(reader, writer, block_size=BLOCK_SIZE)  # type: ignore[arg-type]
        os.fsync(out_fd)
        if writer.size != source.size or os.fstat(src_fd).st_size != source.size:
            raise StagingError(
                f"source {str(source.path)!r} changed size while it was copied",
                code="source_changed",
                status=409,
            )
        os.fchmod(out_fd, 0o444)
        if target.owner is not None:
            os.fchown(out_fd, target.owner.uid, target.owner.gid)
        _publish(part, target)
        published = True
        return Outcome("succeeded", writer.size, writer.sha256.hexdigest())
    finally:
        os.close(src_fd)
        os.close(out_fd)
        if not published:
            _unlink_quietly(part, target.dir_fd)


def _publish(part: str, target: Target) -> None:
    """Give ``part`` the target's name with ``linkat`` (never replaces, never follows), then drop it."""
    try:
        os.link(part, target.name, src_dir_fd=target.dir_fd, dst_dir_fd=target.dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise _exists_error(target) from None
    os.unlink(part, dir_fd=target.dir_fd)
    os.fsync(target.dir_fd)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def hardlink(source: SourceFile, target: Target) -> Outcome:
    """Hard-link ``source`` as ``target`` (instant; the archive and the area must share a file system).

    The link *is* the archive's inode, so its mode and owner are left alone: a ``chmod 0444`` or a
    ``chown`` to the user would change the shared source file for everyone. Archives are expected to be
    read-only to users already. ``sha256`` is not computed (the content is the source itself).

    Raises ``cross_device`` (400) across file systems, ``link_not_permitted`` (403) when the kernel's
    ``protected_hardlinks`` refuses, :class:`DestinationExists` (``target_exists``) for a different file.
    """
    if check_duplicate(target, source):
        return Outcome("skipped", source.size)
    try:
        os.link(source.path, target.name, dst_dir_fd=target.dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise _exists_error(target) from None
    except OSError as err:
        if err.errno == errno.EXDEV:
            raise InvalidRequest(
                "hardlink needs the shared storage and the user's area on one file system; use local_copy",
                code="cross_device",
            ) from None
        if err.errno == errno.EPERM:
            raise StagingError(
                "the system refused the hard link (protected_hardlinks); use local_copy",
                code="link_not_permitted",
                status=403,
            ) from None
        raise
    os.fsync(target.dir_fd)
    return Outcome("succeeded", source.size)


def symlink(source: SourceFile, target: Target) -> Outcome:
    """Create ``target`` as a symbolic link to the resolved ``source`` path (owned by the user when the
    service may). A link to the same path already there is a duplicate; anything else there is
    ``target_exists``."""
    st = target.lstat()
    if st is not None:
        if stat.S_ISLNK(st.st_mode) and os.readlink(target.name, dir_fd=target.dir_fd) == str(source.path):
            return Outcome("skipped", source.size)
        raise _exists_error(target)
    try:
        os.symlink(source.path, target.name, dir_fd=target.dir_fd)
    except FileExistsError:
        raise _exists_error(target) from None
    if target.owner is not None:
        os.chown(target.name, target.owner.uid, target.owner.gid, dir_fd=target.dir_fd, follow_symlinks=False)
    os.fsync(target.dir_fd)
    return Outcome("succeeded", source.size)


def make_read_only(target: Target) -> None:
    """``chmod 0444`` (and give to the user when the service may) the regular file at ``target``,
    opened without following a symlink. Best effort: a service without the right leaves it as is."""
    try:
        fd = os.open(target.name, _READ_FLAGS, dir_fd=target.dir_fd)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o444)
            if target.owner is not None:
                os.fchown(fd, target.owner.uid, target.owner.gid)
    except PermissionError:
        log.debug("cannot make %s read-only: not its owner", target.path)
    finally:
        os.close(fd)


def open_download(source: SourceFile) -> BinaryIO:
    """The source opened for streaming to the caller (unbuffered binary file, caller closes it)."""
    return os.fdopen(_open_source(source), "rb", buffering=0)


def content_disposition(filename: str) -> str:
    """``attachment`` header value for ``filename``, with an ASCII fallback and RFC 5987 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# -- the Hub API ----------------------------------------------------------------------------------


class HubAPI:
    """Calls to the JupyterHub REST API and to users' servers with the service's own token.

    Scopes the service's role needs (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html):
    ``read:users:name`` and ``read:servers`` to see a user's server, ``servers`` to start it,
    ``access:servers`` to call the staging API of the user's server.

    ``api_url`` is ``$JUPYTERHUB_API_URL`` (``.../hub/api``); ``proxy_url`` the proxy's URL as the service
    reaches it (user servers are under ``/user/<name>/`` there). Requests time out after
    ``request_timeout`` seconds.
    """

    def __init__(self, api_url: str, token: str, proxy_url: str, *, request_timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.proxy_url = proxy_url.rstrip("/")
        self._token = token
        self.request_timeout = request_timeout
        self.client = AsyncHTTPClient()

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """``(status, decoded JSON or None)``; HTTP error statuses are returned, not raised.

        Raises ``hub_unreachable`` (502) when the connection fails."""
        req = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            request_timeout=self.request_timeout,
            follow_redirects=False,
        )
        try:
            response = await self.client.fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as err:
            raise StagingError(
                f"cannot reach {url.split('?')[0]}: {type(err).__name__}", code="hub_unreachable", status=502
            ) from None
        if response.code == 599:
            raise StagingError(f"cannot reach {url.split('?')[0]}", code="hub_unreachable", status=502)
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        return response.code, data

    async def get_user(self, name: str) -> dict[str, Any] | None:
        """The user's model (with ``servers``), or None for an unknown user."""
        code, data = await self.request("GET", f"{self.api_url}/users/{quote(name, safe='')}")
        if code == 404:
            return None
        if code != 200 or not isinstance(data, dict):
            raise StagingError(f"the Hub answered {code} for user {name!r}", code="hub_error", status=502)
        return data

    async def ensure_server(self, name: str, *, timeout: float, interval: float = 0.5) -> str:
        """Start the user's default server unless it runs, wait until it is ready, return its URL path
        (e.g. ``/user/bob/``).

        Raises ``unknown_user`` (400), ``server_start_failed`` (502) when the spawn fails,
        ``server_start_timeout`` (504) after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        user = await self._require_user(name)
        server = user.get("servers", {}).get("")
        if not (server and (server.get("ready") or server.get("pending"))):
            code, data = await self.request("POST", f"{self.api_url}/users/{quote(name, safe='')}/server")
            if code not in (201, 202, 400):
                message = data.get("message") if isinstance(data, dict) else None
                raise StagingError(
                    f"the Hub could not start {name}'s server ({code}: {message or 'no detail'})",
                    code="server_start_failed",
                    status=502,
                )
        while True:
            server = (await self._require_user(name)).get("servers", {}).get("")
            if server and server.get("ready"):
                return str(server["url"])
            if not server:
                raise StagingError(f"{name}'s server failed to start", code="server_start_failed", status=502)
            if loop.time() > deadline:
                raise StagingError(
                    f"{name}'s server was not ready after {timeout:.0f} s",
                    code="server_start_timeout",
                    status=504,
                )
            await asyncio.sleep(interval)

    async def _require_user(self, name: str) -> dict[str, Any]:
        user = await self.get_user(name)
        if user is None:
            raise InvalidRequest(f"no JupyterHub user named {name!r}", code="unknown_user")
        return user

    async def server_api(self, server_path: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call ``<proxy_url><server_path><path>`` (a user's server) with the service token."""
        return await self.request(method, f"{self.proxy_url}{server_path.rstrip('/')}/{path}", body)


# -- one call, end to end -------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who called: the authenticated hub user or service. ``is_admin`` means it holds the service's
    admin scope (it may act for other users and see everything)."""

    name: str
    kind: str
    is_admin: bool


@dataclass
class Download:
    """A ``direct_download`` ready to stream: ``file`` (caller closes), ``size`` in bytes, ``filename``."""

    operation: Operation
    file: BinaryIO
    size: int
    filename: str


class StagingOperations:
    """Runs staging calls for the handlers and records each one (database row + log line).

    Parameters
    ----------
    store:
        The :class:`~jupyter_staging.hub.db.OperationStore`.
    areas:
        The users' areas.
    shared_roots:
        Folders sources must lie in after resolving symlinks.
    hub:
        The :class:`HubAPI`, for ``jupyter_copy`` and to check users named by admins.
    server_root_template:
        The folder a user's server serves as ``root_dir``, as this service sees it (``{username}``
        escaped as in the area template); ``jupyter_copy`` destinations are given relative to it.
    concurrency:
        File operations running at once (and, separately, user servers being started at once).
    server_start_timeout, job_poll_interval:
        Seconds to wait for a user's server; seconds between two polls of a ``jupyter_copy`` job.
    oplog:
        Logger of the operations log (one line per operation).
    """

    def __init__(
        self,
        store: OperationStore,
        areas: UserAreas,
        shared_roots: list[str],
        hub: HubAPI,
        *,
        server_root_template: str,
        concurrency: int = 4,
        server_start_timeout: float = 300.0,
        job_poll_interval: float = 1.0,
        oplog: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.areas = areas
        self.shared_roots = list(shared_roots)
        self.hub = hub
        self.server_roots = UserAreas(server_root_template)
        self.semaphore = asyncio.Semaphore(concurrency)
        self.server_starts = asyncio.Semaphore(concurrency)
        self.server_start_timeout = server_start_timeout
        self.job_poll_interval = job_poll_interval
        self.oplog = oplog or logging.getLogger("jupyter_staging.hub.oplog")
        self._tasks: set[asyncio.Task[None]] = set()

    # -- queries ----------------------------------------------------------------------------------

    async def get(self, caller: Caller, operation_id: str) -> Operation:
        """One operation the caller may see (theirs; any for admins). Raises ``operation_not_found``
        (404) otherwise, so ids of others' operations are not revealed."""
        op = await asyncio.to_thread(self.store.get, operation_id)
        if op is None or not (caller.is_admin or op.user == caller.name):
            raise StagingError(f"no operation {operation_id!r}", code="operation_not_found", status=404)
        return op

    async def list_operations(
        self, caller: Caller, *, user: str | None, method: str | None, status: str | None, limit: int
    ) -> list[Operation]:
        """Operations newest first: the caller's own, or anyone's for admins (``user`` filters).

        Raises ``forbidden`` (403) when a non-admin asks for another user's operations."""
        if not caller.is_admin:
            if user not in (None, caller.name):
                raise _forbidden(caller, "see other users' operations")
            user = caller.name
        return await asyncio.to_thread(
            self.store.list_operations, user=user, method=method, status=status, limit=limit
        )

    # -- staging ----------------------------------------------------------------------------------

    async def stage(self, caller: Caller, body: bytes, username: str | None) -> Operation | Download:
        """Run one ``POST api/stage`` call for ``caller`` (acting for ``username`` when given).

        Returns the recorded :class:`Operation` (``succeeded``, ``skipped``, or ``running`` for
        ``jupyter_copy``, which goes on in the background), or a :class:`Download` whose operation is
        finished by :meth:`finish_download`. Raises :class:`StagingError` (its ``operation_id``
        attribute names the recorded failure) for every refusal and failure.
        """
        op = Operation(
            id=str(uuid.uuid4()), user=caller.name, actor=caller.name, method="unknown", source="",
            status="running", started=utcnow(),
        )  # fmt: skip
        try:
            request = parse_stage_request(body)
            op.method = _ALIASES.get(request.method, request.method)
            op.source = request.local_path_on_storage
            op.user = await self._acting_user(caller, username)
            source = await asyncio.to_thread(check_source, request.local_path_on_storage, self.shared_roots)
            if op.method == "direct_download":
                op.target = source.name
                await asyncio.to_thread(self.store.add, op)
                file = await asyncio.to_thread(open_download, source)
                return Download(op, file, source.size, source.name)
            if op.method == "jupyter_copy":
                return await self._start_jupyter_copy(op, source, request.relative_path)
            async with self.semaphore:
                target = await asyncio.to_thread(
                    self._open_target, op.user, request.relative_path, source.name
                )
                with target:
                    op.target = target.path
                    await asyncio.to_thread(self.store.add, op)
                    work = {"local_copy": local_copy, "hardlink": hardlink, "symlink": symlink}[op.method]
                    outcome = await asyncio.to_thread(work, source, target)
            return await self._finish(op, outcome)
        except Exception as err:
            await self._fail(op, err)
            raise _as_staging_error(err, op.id) from None

    async def finish_download(self, op: Operation, size: int, sha256: str | None, error: str | None) -> None:
        """Record the end of a ``direct_download``: ``size`` bytes sent, their ``sha256``; ``error`` is
        None on success or a short reason (the client went away, a read failed)."""
        if error is None:
            await self._finish(op, Outcome("succeeded", size, sha256))
        else:
            err = StagingError(f"download stopped after {size} bytes: {error}", code="download_interrupted")
            await self._fail(op, err, bytes=size)

    async def _acting_user(self, caller: Caller, username: str | None) -> str:
        """The user whose area the call is for; only admins name someone else (and must name a user
        the Hub knows). A service caller must always name the user."""
        if username is None or username == caller.name:
            if caller.kind != "user":
                raise InvalidRequest(
                    f"{caller.kind} {caller.name!r} has no user area; name the user with ?username=",
                    code="username_required",
                )
            return caller.name
        if not caller.is_admin:
            raise _forbidden(caller, f"stage for another user ({username!r})")
        if await self.hub.get_user(username) is None:
            raise InvalidRequest(f"no JupyterHub user named {username!r}", code="unknown_user")
        return username

    def _open_target(self, username: str, relative_path: str, name: str, *, create: bool = True) -> Target:
        return self.areas.open_target(username, relative_path, name, create=create, owner=owner_for(username))

    # -- jupyter_copy -----------------------------------------------------------------------------

    async def _start_jupyter_copy(self, op: Operation, source: SourceFile, relative_path: str) -> Operation:
        """Check the target, record the operation as ``running`` and go on in the background."""
        folder, name = split_relative_path(relative_path, source.name)
        if name != source.name:
            raise InvalidRequest(
                f"jupyter_copy keeps the file's name ({source.name}); give a folder ending in '/' or a path "
                f"ending in {source.name}",
                code="rename_not_supported",
            )
        async with self.semaphore:
            target = await asyncio.to_thread(self._open_target, op.user, relative_path, source.name)
            with target:
                op.target = target.path
                duplicate = await asyncio.to_thread(check_duplicate, target, source)
        if duplicate:
            await asyncio.to_thread(self.store.add, op)
            sha = await asyncio.to_thread(source_sha256, source)
            return await self._finish(op, Outcome("skipped", source.size, sha))
        await asyncio.to_thread(self.store.add, op)
        destination = self._server_destination(op.user, folder)
        self._spawn(self._run_jupyter_copy(op, str(source.path), destination, relative_path, source.name))
        return op

    def _server_destination(self, username: str, folder: list[str]) -> str:
        """The target folder relative to the user's server ``root_dir`` (the staging API's
        ``destination``)."""
        root = self.server_roots.path(username)
        area = self.areas.path(username)
        try:
            inside = area.relative_to(root)
        except ValueError:
            raise StagingError(
                "jupyter_copy needs the user area inside the user's server root (server_root_template)",
                code="not_configured",
                status=500,
            ) from None
        return "/".join([*inside.parts, *folder])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_jupyter_copy(
        self, op: Operation, source: str, destination: str, relative_path: str, name: str
    ) -> None:
        """Start the user's server if needed, create the job there, follow it to its end, record."""
        try:
            async with self.server_starts:
                server = await self.hub.ensure_server(op.user, timeout=self.server_start_timeout)
                body = {
                    "source": source,
                    "destination": destination,
                    "method": "copy",
                    "name": f"staging-hub-{op.id[:8]}",
                    "idempotency_key": f"jupyter-staging-hub:{op.id}",
                }
                code, job = await self.hub.server_api(server, "POST", "api/v1/staging/jobs", body)
            if code not in (200, 201) or not isinstance(job, dict):
                raise _server_error(op.user, code, job)
            op.job_id = str(job["id"])
            await asyncio.to_thread(self.store.update, op.id, job_id=op.job_id)
            self._log(logging.INFO, op, f"job {op.job_id} created in {op.user}'s server")
            await self._follow_job(op, server, relative_path, name)
        except asyncio.CancelledError:
            raise  # the service stops; the row stays running and is picked up on the next start
        except Exception as err:
            await self._fail(op, err)

    async def _follow_job(self, op: Operation, server: str, relative_path: str, name: str) -> None:
        """Poll the job until it ends; keep ``bytes`` up to date; record the outcome."""
        assert op.job_id is not None
        job_path = f"api/v1/staging/jobs/{quote(op.job_id, safe='')}"
        bytes_done = -1
        while True:
            code, job = await self.hub.server_api(server, "GET", job_path)
            if code != 200 or not isinstance(job, dict):
                raise _server_error(op.user, code, job)
            progress = job.get("progress") or {}
            if progress.get("bytes_done", 0) != bytes_done:
                bytes_done = int(progress.get("bytes_done") or 0)
                await asyncio.to_thread(self.store.update, op.id, bytes=bytes_done)
            state = job.get("state")
            if state == "succeeded":
                break
            if state in ("failed", "cancelled", "expired"):
                error = job.get("error") or {}
                raise StagingError(
                    f"the job in {op.user}'s server ended {state}: {error.get('message', 'no detail')}",
                    code=str(error.get("code") or f"job_{state}"),
                    status=502,
                )
            await asyncio.sleep(self.job_poll_interval)
        code, chunks = await self.hub.server_api(server, "GET", f"{job_path}/chunks")
        chunk: dict[str, Any] = next(
            (c for c in (chunks or {}).get("chunks", []) if PurePosixPath(c.get("path", "")).name == name), {}
        )
        target = await asyncio.to_thread(self._open_target, op.user, relative_path, name, create=False)
        with target:
            await asyncio.to_thread(make_read_only, target)
        await self._finish(op, Outcome("succeeded", chunk.get("bytes", bytes_done), chunk.get("sha256")))

    async def recover(self) -> None:
        """After a restart: follow again the ``jupyter_copy`` jobs that were running (their servers
        are started if needed), and mark other operations left ``running`` as failed (``interrupted``)."""
        running = await asyncio.to_thread(self.store.list_operations, status="running", limit=100_000)
        for op in running:
            if op.method == "jupyter_copy" and op.job_id:
                self._spawn(self._resume_jupyter_copy(op))
            else:
                err = StagingError("the service stopped during the operation", code="interrupted")
                await self._fail(op, err)

    async def _resume_jupyter_copy(self, op: Operation) -> None:
        try:
            async with self.server_starts:
                server = await self.hub.ensure_server(op.user, timeout=self.server_start_timeout)
            area = self.areas.path(op.user)
            relative = Path(op.target or "").relative_to(area).as_posix()
            await self._follow_job(op, server, relative, Path(relative).name)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await self._fail(op, err)

    async def stop(self) -> None:
        """Cancel background work (rows stay ``running`` and are recovered on the next start)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- recording --------------------------------------------------------------------------------

    async def _finish(self, op: Operation, outcome: Outcome) -> Operation:
        """Record ``op`` as ``succeeded`` or ``skipped`` with the outcome's size and digest."""
        fields: dict[str, Any] = {
            "bytes": outcome.bytes, "sha256": outcome.sha256, "target": op.target, "job_id": op.job_id,
        }  # fmt: skip
        if outcome.duplicate:
            fields.update(
                error_code="duplicate",
                error_reason="the same file (same size and sha256, or same link) is already there; skipped",
            )
        done = await asyncio.to_thread(self._save, op, outcome.status, fields)
        self._log(logging.INFO, done, "duplicate, skipped" if outcome.duplicate else "done")
        return done

    def _save(self, op: Operation, status: str, fields: dict[str, Any]) -> Operation:
        """Give ``op`` its final ``status`` and ``fields``, inserting the row if it is not there yet."""
        done = self.store.finish(op.id, status, **fields)
        if done is None:
            op.status = status
            op.finished = utcnow()
            for key, value in fields.items():
                setattr(op, key, value)
            done = self.store.add(op)
        return done

    async def _fail(self, op: Operation, err: BaseException, **fields: Any) -> None:
        """Record ``op`` as failed because of ``err`` (a refusal, an I/O error or a bug)."""
        staging = _as_staging_error(err, op.id)
        level = logging.WARNING if staging.status < 500 else logging.ERROR
        if not isinstance(err, (StagingError, OSError)):
            log.error("operation %s: unexpected %s: %s", op.id, type(err).__name__, err)
        fields.update(
            error_code=staging.code, error_reason=staging.message, target=op.target, job_id=op.job_id
        )
        try:
            done = await asyncio.to_thread(self._save, op, "failed", fields)
        except Exception as db_err:  # the database is down: the log line still records the call
            log.error("operation %s not recorded: %s: %s", op.id, type(db_err).__name__, db_err)
            op.status, op.error_code = "failed", staging.code
            done = op
        self._log(level, done, staging.message)

    def _log(self, level: int, op: Operation, message: str) -> None:
        """One line of the operations log (a JSON object, see :mod:`jupyter_staging.hub.oplog`)."""
        self.oplog.log(
            level,
            message,
            extra={
                "operation": op.id,
                "user": op.user,
                "actor": op.actor,
                "method": op.method,
                "status": op.status,
                "code": op.error_code,
                "source": op.source,
                "target": op.target,
                "bytes": op.bytes,
                "job_id": op.job_id,
            },
        )


def _forbidden(caller: Caller, what: str) -> StagingError:
    return StagingError(
        f"{caller.kind} {caller.name!r} may not {what}: that needs the service's admin scope",
        code="forbidden",
        status=403,
    )


def _server_error(username: str, code: int, body: Any) -> StagingError:
    """A failed call to the user's server as a :class:`StagingError` keeping the server's error code."""
    message = body.get("message") if isinstance(body, dict) else None
    server_code = body.get("code") if isinstance(body, dict) else None
    return StagingError(
        f"{username}'s server answered {code}: {message or 'no detail'}",
        code=str(server_code or "server_error"),
        status=502 if code >= 500 or code < 400 else code,
    )


def _as_staging_error(err: BaseException, operation_id: str) -> StagingError:
    """``err`` as a :class:`StagingError` with ``operation_id`` attached; OS errors keep their
    ``strerror`` (never a traceback)."""
    if isinstance(err, StagingError):
        staging = err
    elif isinstance(err, FileNotFoundError):
        staging = InvalidRequest(
            f"a folder of the target does not exist: {err.strerror}", code="target_missing"
        )
    elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
        staging = StagingError("no space left in the user's area", code="no_space", status=507)
    elif isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:
        staging = InvalidRequest("a name in the path is too long", code="name_too_long")
    elif isinstance(err, OSError):
        staging = StagingError(f"file system error: {err.strerror or type(err).__name__}", code="io_error")
    else:
        staging = StagingError(
            f"internal error ({type(err).__name__}); see the service log", code="internal_error"
        )
    staging.operation_id = operation_id  # type: ignore[attr-defined]
    return staging
