"""Where a part file lives and how it gets its name: the by-descriptor half of
:class:`~jupyter_staging.safety.partfile.PartFile`.

In the confined mode (a ``root``) the part's folder is opened from the root one component at a time, never
through a symlink, and the ``.part`` in it with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (or resumed with
``O_NOFOLLOW``), or an unnamed file (``O_TMPFILE``) is used. Publishing re-opens the folder from the root and
finds the very folder the part was written in, then links the very file open under the final name
(:mod:`jupyter_staging.safety.publishing`); a part is removed only while its name still names that file.
Without a root, by path, as before (DESIGN.md, "Security").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from jupyter_staging.errors import (
    DestinationExists,
    DestinationUnavailable,
    PathNotAllowed,
    VerificationFailed,
)
from jupyter_staging.safety.dirfd import (
    NAME_MAX_BYTES,
    READ_FLAGS,
    closing_fd,
    create_file,
    fd_identity,
    folder_below,
    lstat_at,
    name_with,
    open_existing,
    open_folder,
    same_inode,
    set_aside_at,
    unlink_at,
)
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.ownership import part_of_job, tag_part
from jupyter_staging.safety.publishing import publish, publish_open_at, unlink_if_names
from jupyter_staging.safety.unnamed import publish_fd_at, reopen_unnamed

PART_SUFFIX = ".part"


#: Hex digits of the name's sha256 in the part name of a file whose name leaves no room for ``.part``.
PART_TAG_HEX = 8


def part_path(final: Path) -> Path:
    """The in-progress name of ``final``: ``<final>.part`` in the same folder; for a name of more than 250
    bytes (``NAME_MAX`` is 255: a file of the user's may have such a name) ``final``'s name cut short,
    ``~``, :data:`PART_TAG_HEX` hex digits of the whole name's sha256 and ``.part``, at most 255 bytes:
    the same for the same name on every run, another for names that differ only past the cut."""
    name = final.name
    if len(os.fsencode(name)) + len(PART_SUFFIX) <= NAME_MAX_BYTES:
        return final.with_name(name + PART_SUFFIX)
    tag = hashlib.sha256(os.fsencode(name)).hexdigest()[:PART_TAG_HEX]
    return final.with_name(name_with(name, f"~{tag}{PART_SUFFIX}"))


class PartPlace:
    """The part file of ``final`` in its folder: opened (by descriptor below :attr:`root`, or by path),
    read again, removed and published. The state is set by
    :class:`~jupyter_staging.safety.partfile.PartFile`, which writes, hashes and verifies the bytes."""

    final: Path
    #: The confinement root: when given, ``final``'s folder is opened from it by descriptor.
    root: Path | None
    #: True when the part file has no name at all (``O_TMPFILE``) until it is published.
    unnamed: bool
    _owner: str | None
    #: An untagged file at the new part's name counts as the owner's (:meth:`_make_way`).
    _claim_untagged: bool
    #: The name a file in the way of the new ``.part`` was renamed to in its folder (:meth:`_make_way`).
    set_aside: str | None = None
    #: Folder descriptors of the run, kept open (the walk from ``root`` is then done once per folder).
    _folders: FolderCache | None
    _dir_fd: int | None
    #: The folder descriptor is lent by ``_folders`` (:meth:`FolderCache.lend`): never closed here.
    _dir_fd_lent: bool
    #: ``(st_dev, st_ino)`` of a named part, to tell it from a file put at its name since.
    _part_id: tuple[int, int] | None
    _fh: io.FileIO | BinaryIO

    def _open_by_fd(
        self, root: Path, *, resume: bool, dir_fd: int | None, unnamed_fd: int | None, named_fd: int | None
    ) -> io.FileIO:
        """Open the folder of ``final`` from ``root`` by descriptor (made when missing, no symlink
        followed) and the ``.part`` in it: an existing regular one kept with ``resume``, else what has
        that name cleared (:meth:`_make_way`: removed when it is the owner's, a planted symlink itself
        and never its target; set aside otherwise) and the part created ``O_EXCL``. With ``unnamed_fd`` (an
        unnamed file made in that folder by the caller) that file is the part; with ``named_fd`` (the
        ``.part`` the caller opened read-write at its name and checked) that file, never opened by name
        again. Either descriptor is taken over (closed here when this raises). Raises
        :class:`DestinationExists` when the name is taken again after it was cleared."""
        given = unnamed_fd if unnamed_fd is not None else named_fd
        if dir_fd is not None:
            self._dir_fd = dir_fd  # opened from the root by the caller
        else:
            try:
                rel = self.final.parent.relative_to(root).as_posix()
                if self._folders is not None:
                    self._dir_fd = self._folders.open(rel, create=True, placed=True)
                else:
                    self._dir_fd = open_folder(root, rel, create=True)
            except BaseException as exc:
                if given is not None:
                    os.close(given)
                if isinstance(exc, ValueError):
                    raise PathNotAllowed(f"{self.final.name}: its folder is outside the root") from None
                raise
        try:
            # An unnamed part is refused at publishing if the name is taken (nothing to clean up then).
            if unnamed_fd is None and lstat_at(self._dir_fd, self.final.name) is not None:
                raise DestinationExists.not_overwritten(self.final.name)
            fd = given
            self.unnamed = unnamed_fd is not None
            if fd is None and resume:
                try:
                    fd = open_existing(self._dir_fd, self.part.name)
                except PathNotAllowed:
                    fd = None
            if fd is None:
                try:
                    fd = create_file(self._dir_fd, self.part.name)
                except FileExistsError:  # a dead attempt's part, a planted symlink, a file of the user's
                    self._make_way()
                    try:
                        fd = create_file(self._dir_fd, self.part.name)
                    except FileExistsError:  # put there again meanwhile: left as it is
                        raise DestinationExists.not_overwritten(self.part.name) from None
                if self._owner is not None:  # the job's, before any byte: its cleanup may remove it
                    tag_part(fd, self._owner)
        except BaseException:
            if given is not None:
                os.close(given)
            self._close_dir()
            raise
        if not self.unnamed:  # an unnamed part is re-opened by descriptor, never by a name
            self._part_id = fd_identity(fd)
        # Unbuffered: each write is a block already (a buffer costs three lseek calls and a copy per file).
        return io.FileIO(fd, "r+")

    def _make_way(self) -> None:
        """Clear the part's name, found taken when the part was to be made anew.

        Removed: a symlink (itself, never its target) or another entry that is neither a regular file nor
        a folder (a FIFO, a socket); a regular file that is the owner's
        (:func:`~jupyter_staging.safety.ownership.part_of_job`: tagged as the job's, empty and untagged,
        on a file system that keeps no user attributes, or untagged at all with :attr:`_claim_untagged`),
        only while the name still names it; without
        an owner, any regular file (the rule before the tags: an archive's unpacking, in the job's scratch
        folder; the manifest).
        Any other file (the user's, another job's, one that may not be read) is renamed
        ``_<part>.set-aside-<first 8 characters of the owner>`` in its folder (:attr:`set_aside`), never
        lost. Raises :class:`DestinationExists` for a folder at the name."""
        assert self._dir_fd is not None
        name, owner = self.part.name, self._owner
        st = lstat_at(self._dir_fd, name)
        if st is None:  # gone meanwhile
            return
        if stat.S_ISDIR(st.st_mode):
            raise DestinationExists.not_overwritten(name)
        if owner is None or not stat.S_ISREG(st.st_mode):
            unlink_at(self._dir_fd, name)
            return
        try:
            fd = open_existing(self._dir_fd, name, READ_FLAGS)
            if fd is None:  # gone meanwhile
                return
        except (PathNotAllowed, PermissionError):  # replaced meanwhile, or may not be read: not known ours
            fd = None
        if fd is not None:
            with closing_fd(fd):
                if part_of_job(fd, owner, untagged=self._claim_untagged):
                    unlink_if_names(self._dir_fd, name, fd)
                    return
        self.set_aside = set_aside_at(self._dir_fd, name, owner[:8])

    def set_aside_notice(self) -> str | None:
        """The line for the job's log when a file in the way of the part was set aside
        (:meth:`_make_way`), else None."""
        if self.set_aside is None:
            return None
        return (
            f"{self.final.name}: a file that this job did not write was in the way of its partial file "
            f"{self.part.name} and was set aside as {self.set_aside}"
        )

    @functools.cached_property
    def part(self) -> Path:
        """The ``.part`` path of ``final`` (its name in the folder, unless :attr:`unnamed`)."""
        return part_path(self.final)

    def fileno(self) -> int:
        """The descriptor of the open ``.part`` (for ``fsetxattr``, ``fstat``)."""
        return self._fh.fileno()

    def _close_file(self) -> None:
        """Close the part's descriptor (an unnamed part is then gone, unless linked); a failing close is
        ignored: its bytes were flushed, or are being thrown away."""
        try:
            if not self._fh.closed:
                self._fh.close()
        except OSError:
            pass

    def _close_dir(self) -> None:
        """Let go of the folder's descriptor (closed, unless it is lent by the folder cache)."""
        if self._dir_fd is not None:
            if not self._dir_fd_lent:
                os.close(self._dir_fd)
            self._dir_fd = None

    def _open_reader(self) -> io.RawIOBase:
        """A second, read-only handle on the ``.part`` (by descriptor in the confined mode, and then
        refused unless it is the very file being written)."""
        if self._dir_fd is None:
            return io.FileIO(self.part, "rb")
        if self.unnamed:
            return io.FileIO(reopen_unnamed(self._fh.fileno()), "rb")
        fd = open_existing(self._dir_fd, self.part.name, os.O_RDONLY | os.O_CLOEXEC)
        if fd is None or fd_identity(fd) != self._part_id:
            if fd is not None:
                os.close(fd)
            raise VerificationFailed(f"{self.final.name}: the partial file was replaced while copying")
        return io.FileIO(fd, "rb")

    def _remove_part(self) -> None:
        """Remove the ``.part``: by descriptor in the confined mode, where it is a no-op once the folder's
        descriptor is closed (the part was removed or published already; never unlinked by path). An
        unnamed part is closed: the file system frees it."""
        if self.unnamed:
            self._close_file()
        elif self._dir_fd is not None:
            if self._fh.closed:
                unlink_at(self._dir_fd, self.part.name)
            else:  # only while it names the file written: a file the user put at that name stays
                unlink_if_names(self._dir_fd, self.part.name, self._fh.fileno())
        elif self.root is None:
            self.part.unlink(missing_ok=True)

    def _publish(self, *, sync: bool) -> None:
        """Publish the ``.part`` under the final name (the folder fsynced with ``sync``); in the confined
        mode only after re-opening the folder from the root and finding the very folder the part was
        written in (else :class:`PathNotAllowed`, and the part is removed)."""
        if self._dir_fd is None or self.root is None:
            self._close_file()
            publish(self.part, self.final, sync=sync)
            return
        rel = folder_below(self.root, self.final)
        try:
            if self._folders is not None:
                moved = not self._folders.in_place(rel, self._dir_fd)
            else:
                with closing_fd(open_folder(self.root, rel, writing=True)) as fresh:
                    moved = not same_inode(fresh, self._dir_fd)
            if moved:
                raise PathNotAllowed(
                    f"{self.final.name}: its folder was moved or replaced while it was written"
                )
        except (PathNotAllowed, FileNotFoundError):
            self._remove_part()
            self._close_file()
            self._close_dir()
            raise PathNotAllowed(
                f"{self.final.name}: its folder was moved or replaced by a symbolic link while it was "
                "written; nothing was published"
            ) from None
        except (DestinationUnavailable, OSError):  # the root is gone, no descriptor left: nothing published
            self._remove_part()
            self._close_file()
            self._close_dir()
            raise
        try:
            if self.unnamed:
                publish_fd_at(self._fh.fileno(), self._dir_fd, self.final.name, sync=sync)
            else:
                publish_open_at(
                    self._fh.fileno(), self._dir_fd, self.part.name, self._dir_fd, self.final.name, sync=sync
                )
        except BaseException:
            with contextlib.suppress(OSError):  # the publication's own error is the one to report
                self._remove_part()  # nothing published stays behind (a no-op when the link happened)
            raise
        finally:
            self._close_file()
            self._close_dir()
