"""Users' areas, reached through directory descriptors only.

A user's area is writable by the user, so everything below the area's trusted base is opened one
component at a time with ``O_NOFOLLOW | O_DIRECTORY`` (:class:`UserAreas`, :class:`Target`): a symlink the
user plants is refused, never followed, even if it appears between two checks. What is then written in the
target's folder is :mod:`jupyter_staging.hub.fileops`' business.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from jupyter_staging.errors import DestinationNotWritable, PathNotAllowed, StagingError
from jupyter_staging.hub.access import SEARCH, WRITE, Reader, check_user_may, reader_for
from jupyter_staging.safety.dirfd import DIR_FLAGS, check_name, open_dir, rename_noreplace_at, write_refused
from jupyter_staging.safety.paths import check_output_name

log = logging.getLogger(__name__)

_SAFE_USERNAME_CHARS = frozenset(string.ascii_letters + string.digits)


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

    def __post_init__(self) -> None:
        check_name(self.name)  # one entry of the folder: never a path that calls by descriptor would walk

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
    missing folders are created (mode 0755; a folder made is given to the user when the service runs as root,
    an existing one keeps its owner and mode).

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

    def open_for(self, username: str, relative_path: str, name: str, *, create: bool = True) -> Target:
        """:meth:`open_target` as the service does it for ``username``: files given to the user and folders
        checked against what the user may do when the service runs as root (:func:`owner_for`,
        :func:`~jupyter_staging.hub.access.reader_for`)."""
        owner, reader = owner_for(username), reader_for(username)
        return self.open_target(username, relative_path, name, create=create, owner=owner, reader=reader)

    def open_target(
        self,
        username: str,
        relative_path: str,
        default_name: str,
        *,
        create: bool = True,
        owner: Owner | None = None,
        reader: Reader | None = None,
    ) -> Target:
        """Open the folder that will hold the target and return the :class:`Target`.

        ``relative_path`` is relative to the user's area (see :class:`StageRequest`); ``default_name`` is
        used when it names a folder. With ``create``, missing folders are made. With ``reader`` (the user,
        when the service runs as root: :func:`~jupyter_staging.hub.access.reader_for`) and ``create``, every
        folder below the area's first one is walked only where the user may search, a folder is made only
        where the user may write, and the target's folder must be one the user may write into: root writes
        anywhere, the user not into an administrator's read-only folder of the area
        (:class:`DestinationNotWritable`, 409, ``destination_not_writable``).

        Raises :class:`PathNotAllowed` (400, ``path_not_allowed``) for absolute paths, ``..``, hidden
        (dot) components, NUL, or a symlink (or a file) where a folder is expected;
        :class:`FileNotFoundError` when a folder is missing and ``create`` is False; ``not_configured``
        (500) when the trusted base folder is missing.
        """
        folder, name = split_relative_path(relative_path, default_name)
        try:
            fd = os.open(self.base, DIR_FLAGS)
        except OSError as err:
            raise StagingError(
                f"the base folder of the user areas, {self.base}, cannot be opened: {err.strerror}",
                code="not_configured",
                status=500,
            ) from None
        parts = [*self.components(username), *folder]
        fds = [fd]  # fds[i]: the folder parts[:i] below the base, open
        try:
            _open_present(fds, parts, create=create)
            checked = reader if create else None
            if checked is not None:  # one child process for every folder there already
                _check_present(fds, parts, checked)
            present, made = len(fds), set[tuple[int, int]]()
            while len(fds) <= len(parts):  # what is missing, made (and given to the owner) folder by folder
                if checked is not None and len(fds) > present:
                    _check_unless_made(fds[-1], made, owner, checked, parts[: len(fds) - 1])
                shown = parts[: len(fds)]
                fds.append(_make_child_dir(fds[-1], shown[-1], owner=owner, shown=shown, made=made))
            if checked is not None and len(fds) > present:
                _check_unless_made(fds[-1], made, owner, checked, parts)
        except BaseException:
            for each in fds:
                os.close(each)
            raise
        fd = fds.pop()
        for each in fds:
            os.close(each)
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
    if is_folder:  # the source's own name: one entry, a backslash in it a character like any other
        if default_name.startswith("."):
            raise PathNotAllowed(f"the source's name {default_name!r} is hidden; give relative_path a name")
        parts.append(check_name(default_name))
    if len(parts) == 1 and parts[0] == "":
        raise PathNotAllowed("relative_path names no file")
    return parts[:-1], parts[-1]


def _open_present(fds: list[int], parts: list[str], *, create: bool) -> None:
    """Open, below ``fds[-1]``, the folders of ``parts`` there already, one at a time (:func:`open_dir`: no
    symlink followed), appending each descriptor to ``fds``; stop at the first missing one when
    ``create`` (:class:`FileNotFoundError` else)."""
    while len(fds) <= len(parts):
        shown = parts[: len(fds)]
        try:
            fds.append(_open_folder(fds[-1], shown[-1], shown))
        except FileNotFoundError:
            if not create:
                raise
            return


def _check_present(fds: list[int], parts: list[str], reader: Reader) -> None:
    """Check, in one child process, what ``reader`` needs of the folders open in ``fds`` (``fds[0]`` is the
    base, the administrator's, not checked): search on each the walk went through, write and search on the
    last (the target's folder, or the one the first missing folder is to be made in). Raises
    :class:`DestinationNotWritable` naming the first folder refused."""
    wanted = [(fds[i], SEARCH, parts[:i]) for i in range(1, len(fds) - 1)]
    if len(fds) > 1 or len(fds) > len(parts):
        wanted.append((fds[-1], WRITE | SEARCH, parts[: len(fds) - 1]))
    _check_folders(wanted, reader)


def _check_folders(wanted: list[tuple[int, int, list[str]]], reader: Reader) -> None:
    """Raise :class:`DestinationNotWritable` unless the kernel grants ``reader`` the bits asked of each
    ``(fd, bits, shown)`` (``shown``: the folder's path in the user's area, for the message), asked in one
    child process (:func:`~jupyter_staging.hub.access.check_user_may`; ``access_check_unavailable``, 503,
    when it gives no answer)."""
    refused = check_user_may([(fd, bits) for fd, bits, _ in wanted], reader)
    if refused is not None:
        raise DestinationNotWritable(
            f"{'/'.join(wanted[refused][2])!r}: {reader.name} may not write into it (its permissions); the "
            "service writes only where the user may: choose another folder"
        )


def _check_unless_made(
    fd: int, made: set[tuple[int, int]], owner: Owner | None, reader: Reader, shown: list[str]
) -> None:
    """Check write and search on the folder open as ``fd`` (:func:`_check_folders`) unless it is one this
    call made and gave to ``reader`` (its owner, mode 0755, in a folder the kernel let the user write into:
    nothing to ask the kernel about); a folder someone else made in the meantime is asked about."""
    st = os.fstat(fd)
    if owner is None or owner.uid != reader.uid or (st.st_dev, st.st_ino) not in made:
        _check_folders([(fd, WRITE | SEARCH, shown)], reader)


def _make_child_dir(
    parent_fd: int, name: str, *, owner: Owner | None, shown: list[str], made: set[tuple[int, int]]
) -> int:
    """Make folder ``name`` in ``parent_fd`` and open it (no symlink followed): mode 0755, the ``owner``'s
    when given (:func:`_make_given_dir`, which adds the (device, inode) of a folder it made to ``made``).
    A folder made there in the meantime by someone else is opened as it is (its owner and mode kept).

    Raises :class:`PathNotAllowed` for a symlink or a file where the folder is expected,
    :class:`DestinationNotWritable` when the service may not make it."""
    if owner is None:
        _make_dir(parent_fd, name)
    else:
        _make_given_dir(parent_fd, name, owner, "/".join(shown), made)
    return _open_folder(parent_fd, name, shown)


def _open_folder(parent_fd: int, name: str, shown: list[str]) -> int:
    """:func:`open_dir`, its :class:`PathNotAllowed` naming the folder as the user sees it."""
    try:
        return open_dir(parent_fd, name)
    except PathNotAllowed:
        raise PathNotAllowed(
            f"{'/'.join(shown)!r} is a symbolic link or a file, not a folder; links in a user's area are "
            "never followed"
        ) from None


def _make_dir(parent_fd: int, name: str) -> bool:
    """``mkdir`` ``name`` in ``parent_fd``, mode 0755 (before the umask). True when made, False when
    something had the name already. Raises :class:`DestinationNotWritable` when the folder may not be
    written into."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        return False
    except PermissionError as err:
        raise write_refused(name, err, who="the service's user") from None
    return True


def _make_given_dir(
    parent_fd: int, name: str, owner: Owner, shown: str, made: set[tuple[int, int]] | None = None
) -> bool:
    """Make folder ``name`` in ``parent_fd`` as ``owner``'s, mode 0755, whole or not at all: it is made
    under a hidden name of its own (0700), given away by descriptor (only while it is still the service's,
    private and empty: the user may rename another folder onto that name, which is then left as it is),
    then renamed to ``name`` without replacing anything (``renameat2`` ``RENAME_NOREPLACE``). Two calls
    making the same folder at once: one renames its own in, the other removes its own and uses that one;
    a folder is never left the service's, or half given (a call that found it made by the other used to
    see it not empty, not give it away, and leave the user's home the service's, 0700, for good). True
    when this call made it; its (device, inode) is then added to ``made``. Raises
    :class:`DestinationNotWritable` when the folder may not be written into."""
    scratch = f".staging-folder-{secrets.token_hex(8)}"
    try:
        os.mkdir(scratch, 0o700, dir_fd=parent_fd)
    except PermissionError as err:
        raise write_refused(name, err, who="the service's user") from None
    try:
        fd = open_dir(parent_fd, scratch)
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and not st.st_mode & 0o077 and not os.listdir(fd):
                os.fchown(fd, owner.uid, owner.gid)
                os.fchmod(fd, 0o755)
            else:  # the user renamed another folder onto the new one's name: left as it is
                log.warning(
                    "not giving folder %r to uid %d: it is not the folder the service made", shown, owner.uid
                )
                raise PathNotAllowed(f"{shown!r} was replaced while it was made; nothing was given away")
        finally:
            os.close(fd)
        if rename_noreplace_at(parent_fd, scratch, name):
            if made is not None:
                made.add((st.st_dev, st.st_ino))
            return True
    except BaseException:
        _remove_empty(parent_fd, scratch)
        raise
    _remove_empty(parent_fd, scratch)  # another call made it first
    return False


def _remove_empty(parent_fd: int, name: str) -> None:
    """``rmdir`` of ``name`` in ``parent_fd``, which only ever removes an empty folder; what it cannot
    remove (gone, not empty, not a folder) stays."""
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass
