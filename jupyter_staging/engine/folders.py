"""Writing below a job's destination: by descriptor from its confinement root, each folder walked to once.

:class:`DestinationWriter` is the base of :class:`~jupyter_staging.engine.items.ItemStager`. A local
destination is confined to the server's root (DESIGN.md, "Security rules"): every folder is reached from the
root one component at a time without following a symlink (:mod:`jupyter_staging.safety.dirfd`), and the
descriptors are kept for the run (:class:`~jupyter_staging.safety.foldercache.FolderCache`), so a folder of
20,000 files is walked to once, not four times per file. An object-store job's work folder is private
scratch and is written by path.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from jupyter_staging.destinations.base import Destination
from jupyter_staging.engine.progress import ChunkLedger
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.copying import fd_digest, file_digest
from jupyter_staging.safety.dirfd import (
    READ_FLAGS,
    closing_fd,
    folder_below,
    fsync_dir,
    fsync_fd,
    open_existing,
)
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.ownership import tag_published, taken_back
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.publishing import publish, publish_open_at

#: Resume-data key set at a job's first start by a version that tags what it publishes
#: (:mod:`jupyter_staging.safety.ownership`): files an earlier run of a job without it published carry no
#: tag, and are found again after a crash by the rules before the tag (their size and bytes, a part's name).
PUBLISHED_TAGS = "published_tags"
#: Resume-data key set at a job's first start by a version that tags every part file it makes as the job's
#: (:func:`~jupyter_staging.safety.ownership.tag_part`): its cleanup removes a ``.part`` only when it is the
#: job's. A job an earlier version started made untagged ones: any ``.part`` at its names is removed.
PARTS_TAGGED = "parts_tagged"
#: Resume-data key: ``{host name: True}`` for Dask worker hosts whose mount could not tag the part files
#: they make (the probe's tag did not reach the server): the job's cleanup then removes any ``.part`` at
#: its names, as without :data:`PARTS_TAGGED`.
UNTAGGED_PARTS_HOSTS = "untagged_parts_hosts"


def parts_tagged(resume: dict[str, Any]) -> bool:
    """Whether every part file the job can have made is tagged as its own (then its cleanup removes a
    ``.part`` only with that tag, and an untagged file at a new part's name is set aside, not removed): it
    was started by a version that tags them and no Dask worker of it failed to
    (:data:`UNTAGGED_PARTS_HOSTS`)."""
    return bool(resume.get(PARTS_TAGGED)) and not resume.get(UNTAGGED_PARTS_HOSTS)


class DestinationWriter:
    """Folders, part files, links and publication below ``dest`` for one run of a job."""

    job_id: str
    dest: Destination
    #: Engine bookkeeping persisted in ``JobRecord.resume`` (ItemStager's).
    resume: dict[str, Any]
    #: The job's chunk records waiting to be written (folders holding new links are fsynced first).
    ledger: ChunkLedger
    _lock: threading.RLock
    #: Adds a line to the job's log (ReusingWriter's).
    _log: Callable[[str, str], None]
    #: Guards :attr:`_folders` alone (one lock for all runs: it is held only to make or drop a cache, and
    #: never while waiting for another): a chunk flush fsyncs folders through the cache while holding the
    #: job's ``_lock``, so a lock of its own keeps making the cache from waiting for a database write.
    _folders_lock: ClassVar[threading.Lock] = threading.Lock()
    _folders: FolderCache | None = None

    @property
    def folders(self) -> FolderCache:
        """Descriptors of the destination's folders below its confinement root, kept for this run (each
        folder is walked to once; :meth:`close_folders` at the end of the run)."""
        root = self.dest.confinement_root
        assert root is not None
        with self._folders_lock:
            if self._folders is None or self._folders.root != root:
                if self._folders is not None:
                    self._folders.close()
                self._folders = FolderCache(root)
            return self._folders

    def close_folders(self) -> None:
        """Close the run's folder descriptors (once no item is being staged)."""
        with self._folders_lock:
            folders, self._folders = self._folders, None
        if folders is not None:
            folders.close()

    def part_file(self, final: Path, **options: Any) -> PartFile:
        """A :class:`PartFile` for ``final`` (``options`` as its own): by descriptor through the run's
        folder descriptors when the destination is confined to a root, and then tagged as the job's, a
        named ``.part`` from its creation (its cleanup removes it; a file not the job's in its way is set
        aside, and logged; an untagged one is the job's when its parts are not all tagged,
        :func:`parts_tagged`) and the file when it is published
        (``owner``: a run resumed after a crash takes it as the job's,
        :meth:`_published_before_the_stop`); else by path (a private scratch folder)."""
        if self.dest.confinement_root is None:
            return PartFile(final, **options)
        untagged = not parts_tagged(self.resume)  # two keys read: no lock (a chunk flush may hold it)
        out = PartFile(final, folders=self.folders, owner=self.job_id, claim_untagged=untagged, **options)
        notice = out.set_aside_notice()  # a file not the job's was in the way of its new .part
        if notice is not None:
            self._log("warning", notice)
        return out

    def _sync_folder(self, folder: Path) -> None:
        """fsync ``folder`` (by descriptor from the confinement root when there is one)."""
        root = self.dest.confinement_root
        if root is None:
            fsync_dir(folder)
            return
        with self.folders.folder(folder.relative_to(root).as_posix()) as fd:
            fsync_fd(fd)

    def _folder_below_root(self, final: Path) -> str:
        """The folder of ``final`` relative to the destination's confinement root (POSIX)."""
        root = self.dest.confinement_root
        assert root is not None
        return folder_below(root, final)

    def _make_folder(self, final: Path) -> None:
        """Make the folder of ``final``: by descriptor from the confinement root (no symlink followed),
        or by path for a private scratch folder."""
        if self.dest.confinement_root is None:
            final.parent.mkdir(parents=True, exist_ok=True)
            return
        with self.folders.folder(self._folder_below_root(final), create=True):
            pass

    def _open_by_folder(self, path: Path) -> int | None:
        """``path`` opened read-only by descriptor of its folder where the destination is confined (the
        folder found still at its path), never through a symlink; None when it cannot be (absent, a
        symlink, a folder moved during the run). The caller closes it."""
        try:
            with self._in_folder(path) as (dir_fd, name):
                return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except (OSError, PathNotAllowed):
            return None

    def _file_digest(self, path: Path) -> tuple[int, str] | None:
        """``(size in bytes, hex sha256)`` of the regular file at ``path``, read through one descriptor
        (:meth:`_open_by_folder`); None when there is none (absent, a symlink, a folder, a FIFO)."""
        fd = self._open_by_folder(path)
        if fd is None:
            return None
        with closing_fd(fd):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return st.st_size, fd_digest(fd)

    def _owner_rel(self, final: Path) -> str:
        """``final``'s path in the owner attribute of a file the job publishes there (POSIX): relative to
        the confinement root, or to the work folder's parent for a private scratch folder."""
        return final.relative_to(self.dest.confinement_root or self.dest.workdir.parent).as_posix()

    def _published_before_the_stop(
        self, final: Path, *, size: int | None = None, sha256: str | None = None
    ) -> tuple[int, str] | None:
        """``(size_bytes, sha256_hex)`` of ``final`` when an earlier run of this job published it and was
        stopped before recording its chunk (killed between the two): a regular file (opened by descriptor
        of its folder, never through a symlink) carrying the job's owner attribute for this name and the
        bytes it holds (:func:`~jupyter_staging.safety.ownership.taken_back`), of ``size`` bytes and
        ``sha256`` when given. None for anything else, whatever it holds and whenever it came (a user's,
        another job's, the job's own edited since). In object storage's work folder, the job's private
        scratch folder, any regular file there (of that size and sha256) is the job's; so is one on a file
        system that keeps no user attributes (:func:`~jupyter_staging.safety.ownership.keeps_attributes`),
        where no tag can tell, and one of a job started by an earlier version (no :data:`PUBLISHED_TAGS`),
        whose files carry none."""
        fd = self._open_by_folder(final)
        if fd is None:
            return None
        try:
            tagged = not self.dest.remote and bool(self.resume.get(PUBLISHED_TAGS))
            return taken_back(
                fd, self.job_id, self._owner_rel(final), tagged=tagged, size=size, sha256=sha256
            )
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _in_folder(self, final: Path, *, create: bool = False) -> Iterator[tuple[int | None, str]]:
        """``(descriptor of final's folder, final's name)`` to act on ``final`` with ``dir_fd=``: the folder
        reached from the confinement root and found still at its path (:meth:`FolderCache.placed`; lent,
        never to be closed), or ``(None, str(final))`` by path for a destination with no such root (a
        private scratch folder). ``create`` makes missing folders. Raises :class:`PathNotAllowed` when the
        folder was moved or replaced during the run."""
        if self.dest.confinement_root is None:
            if create:
                final.parent.mkdir(parents=True, exist_ok=True)
            yield None, str(final)
            return
        with self.folders.placed(self._folder_below_root(final), create=create) as fd:
            yield fd, final.name

    def _link_into(
        self, src: Path, final: Path, *, symbolic: bool, src_at: tuple[int, str] | None = None
    ) -> os.stat_result:
        """Hard-link (or symlink) ``src`` as ``final``, in ``final``'s folder opened by descriptor from
        the confinement root and found still at its path (fsynced before the next chunk batch: a link has
        no data of its own to fsync). A hard link is made to ``src`` itself, never to what a symlink put
        there since it was listed would lead to. Returns the ``stat`` of what ``final`` now leads to: the
        hard link itself (looked up by descriptor, not followed: the very inode linked), or the symlink's
        target. A hard link is made by ``src_at`` (``(descriptor of src's folder, its name)``) when given: a
        folder on ``src``'s path replaced since is then never followed. Raises :class:`FileExistsError`
        when ``final`` exists, :class:`PathNotAllowed` when its folder was moved or replaced during the
        run."""
        src_dir_fd, src_name = src_at if src_at is not None else (None, str(src))
        with self._in_folder(final, create=True) as (fd, name):
            if symbolic:
                os.symlink(src, name, dir_fd=fd)
                st = os.stat(src)
            else:
                os.link(src_name, name, src_dir_fd=src_dir_fd, dst_dir_fd=fd, follow_symlinks=False)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                st = no_symlink(st, src.name, lambda: os.unlink(name, dir_fd=fd))
        # Queued once the folder exists: a batch written meanwhile by another thread (a manifest entry
        # linking beside this one) would fsync a folder not made yet.
        self.ledger.sync_folder(final.parent)
        return st

    def _look_at_output(self, final: Path) -> tuple[os.stat_result, str | None] | None:
        """What the name ``final`` is now, never followed: its ``lstat`` and, for a symlink, its target;
        None when there is no such name (or folder). Looked up by descriptor of its folder where the
        destination is confined (the folder found still at its path). Raises :class:`PathNotAllowed` when
        the folder was moved or replaced during the run."""
        try:
            with self._in_folder(final) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                return st, (os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None)
        except FileNotFoundError:
            return None

    def _remove_output(self, final: Path, ours: Callable[[os.stat_result, str | None], bool]) -> bool:
        """Remove the name ``final`` this run made (a link whose bytes failed their check), by descriptor
        of its folder where the destination is confined, when it is still what the run made: ``ours(lstat,
        symlink target or None)`` is true. Returns False when something else took the name since (a file
        of the user's: left as it is), True when it was removed or is gone. Raises :class:`PathNotAllowed`
        when the folder was moved or replaced during the run, ``OSError``."""
        try:
            with self._in_folder(final) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                if not ours(st, target):
                    return False
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        return True

    def _publish_tagged(self, path: Path, final: Path, sha256: str | None = None) -> tuple[int, str]:
        """Give the complete file ``path`` (below the destination) the name ``final``, never replacing
        anything, tagged first as the job's file at ``final`` for its bytes (its owner attribute,
        :func:`~jupyter_staging.safety.ownership.tag_published`) so that a run resumed after a crash between
        publishing and recording takes it back (:meth:`_published_before_the_stop`); untagged where the
        file system keeps no user attributes (a resumed run then goes by the rules before the tag) or refuses
        this one (it then refuses the file: the safe failure). Returns ``(size_bytes, sha256_hex)``.

        ``sha256``: the hex digest of the bytes the job wrote there (an extracted file's, known as it was
        written); None: the bytes are hashed here, through the descriptor that is then published, so the
        digest describes the file published whatever was put at ``path`` before (a conversion's downloaded
        file). Where the destination is confined to a root: by descriptor (both folders found still at
        their paths, else :class:`PathNotAllowed`), the file opened without following a symlink or blocking
        on a FIFO and published as that very file
        (:func:`~jupyter_staging.safety.publishing.publish_open_at`); else by path (a private scratch
        folder). Raises :class:`PathNotAllowed` when ``path`` is not a regular file (any more),
        :class:`DestinationExists` when ``final`` exists."""
        root = self.dest.confinement_root
        if root is None:
            size, digest = path.stat().st_size, sha256 or file_digest(path, "sha256")
            final.parent.mkdir(parents=True, exist_ok=True)
            publish(path, final)
            return size, digest
        with (
            self.folders.placed(self._folder_below_root(path)) as src_fd,
            self.folders.placed(self._folder_below_root(final), create=True) as dst_fd,
        ):
            fd = open_existing(src_fd, path.name, READ_FLAGS)
            if fd is None:
                raise PathNotAllowed(f"{final.name}: its downloaded file is gone; nothing was published")
            try:
                size, digest = os.fstat(fd).st_size, sha256 or fd_digest(fd, "sha256")
                tag_published(fd, self.job_id, self._owner_rel(final), digest)
                publish_open_at(fd, src_fd, path.name, dst_fd, final.name)
            finally:
                os.close(fd)
        return size, digest


def no_symlink(st: os.stat_result, src_name: str, remove: Callable[[], None]) -> os.stat_result:
    """``st`` (of a new hard link to the file named ``src_name``), unless the link is not a regular file:
    the file was replaced after it was listed by a symlink (or a FIFO, a device). Then the new name is
    removed (``remove``) and :class:`PathNotAllowed` raised: what a symlink leads to is never staged in
    place of a listed file."""
    if stat.S_ISREG(st.st_mode):
        return st
    remove()
    raise PathNotAllowed(
        f"{src_name} is no longer a regular file (a symbolic link?) since it was listed; not linked"
    )
