"""Atomic, verified, resumable file writing shared by every source.

A file is written as ``<name>.part`` in its destination folder while a sha256 (and, when asked, an MD5)
is computed over the bytes, then flushed, fsynced, checked against the expected size and checksums and
only then given its final name, which must not exist yet (``DESIGN.md``: "A file appears under its final
name only when complete and verified").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from jupyter_staging.errors import DestinationExists, SizeMismatch, VerificationFailed
from jupyter_staging.safety import writeback
from jupyter_staging.safety.checksums import (
    can_compute,
    cannot_verify,
    first_mismatch,
    new_digest,
    optional_digest,
)
from jupyter_staging.safety.dirfd import write_all
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.ownership import tag_published
from jupyter_staging.safety.partplace import PART_SUFFIX, PartPlace, part_path

__all__ = ["BLOCK_SIZE", "PART_SUFFIX", "WRITEBACK_STEP", "Hashed", "PartFile", "part_path"]

#: Size of one read/write block, bytes. 1 MiB blocks in reused buffers stay in the CPU caches; 8 MiB blocks
#: measured 1.5-1.9x slower here (bench/README.md).
BLOCK_SIZE = 1024 * 1024
#: Bytes that :meth:`PartFile.write` appends before it starts their writeback (8 MiB, the big copy's
#: ``copy_file_range`` step): a file written block by block (one stream from a server without ranges or
#: of an object too small for parallel streams, a Parquet part, a file taken out of an archive) reaches
#: its fsync with its bytes on their way, not all still dirty. Smaller files never reach it; their
#: writeback is started with the fsync groups.
WRITEBACK_STEP = 8 * 1024 * 1024


def _refuse(descriptors: tuple[int | None, ...], why: str) -> NoReturn:
    """Close the ``descriptors`` a :class:`PartFile` was given (taken over even when it refuses them), then
    raise ``ValueError(why)``."""
    for fd in descriptors:
        if fd is not None:
            os.close(fd)
    raise ValueError(why)


class Hashed(NamedTuple):
    """The first ``offset`` bytes of a part file as hashed by whoever wrote them: its ``sha256`` (and
    ``second``, a digest of another algorithm, or None) hash objects, fed with exactly those bytes."""

    offset: int
    sha256: Any
    second: Any = None


class PartFile(PartPlace):
    """Writer of one output file through ``<final>.part``.

    With ``resume=True`` an existing ``.part`` is kept and its bytes re-hashed, so ``offset`` (bytes) tells a
    source where to continue; otherwise a new one is made (with ``root``, a file already at its name is
    removed only when it is the job's, else set aside: :meth:`_make_way`; without, truncated). With ``second``
    (an algorithm of :data:`~jupyter_staging.safety.checksums.CHECKSUM_ALGORITHMS` but sha256) that digest is
    computed beside the sha256 over every byte (re-hashed ones included), for a checksum a source states (an
    S3 ETag's MD5 or CRC, ``Content-MD5``) or a user's ``md5:<hex>``. Use :meth:`write` for each block, then
    :meth:`commit`; :meth:`discard` removes the ``.part``.

    With ``resume`` and ``hashed`` (a :class:`Hashed`), the first ``hashed.offset`` bytes are taken as hashed
    already and only the rest of the ``.part`` is read (parallel streams hash each range as it completes).

    With ``root`` (the confinement root ``final`` lies below), the work is done by descriptor
    (:mod:`jupyter_staging.safety.dirfd`): ``final``'s folder is opened from ``root`` one component at a
    time without following a symlink (missing folders are made), the ``.part`` is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` (or resumed with ``O_NOFOLLOW``) in it, and :meth:`commit` publishes
    with ``linkat`` only after re-opening the folder from ``root`` and finding the same folder. Raises
    :class:`PathNotAllowed` (``path_not_allowed``) when a folder on the way is (or became) a symlink.
    Without ``root`` it works by path, as before. ``folders`` (a :class:`FolderCache` of the root) gives the
    folder's descriptor without a walk; the check before publishing still walks from the root. ``dir_fd``,
    with ``root`` or ``folders``: a descriptor of ``final``'s folder the caller opened from the root already
    (taken over: the part file closes it, also when the constructor raises; with ``dir_fd_lent``, lent by
    ``folders`` and never closed here). ``unnamed_fd``: an unnamed file the caller made in that folder
    (:func:`~jupyter_staging.safety.unnamed.create_unnamed`), used as the part: it gets its only name at
    :meth:`commit`, and a name taken meanwhile is refused then. ``named_fd``, with ``resume``: the ``.part``
    itself, opened read-write at its name and checked by the caller (Dask's ``finish_ranges``), resumed
    without opening that name again (taken over, as ``unnamed_fd``). ``owner``, with ``root``: the id of the
    job whose file this is; :meth:`commit` tags the file as published by it before it takes its name
    (:func:`~jupyter_staging.safety.ownership.tag_published`), so that a run resumed after a crash takes
    it as the job's own; a named ``.part`` made here is tagged as the job's from the first
    (:func:`~jupyter_staging.safety.ownership.tag_part`), so that the job's cleanup removes it and no file
    of the user's. ``claim_untagged``, with ``owner``: an untagged file at the new part's name is the job's
    too (its parts were made untagged: a job an earlier version started, a worker's mount without
    attributes), removed rather than set aside.
    """

    def __init__(
        self,
        final: Path,
        *,
        resume: bool = False,
        second: str | None = None,
        root: Path | None = None,
        hashed: Hashed | None = None,
        folders: FolderCache | None = None,
        dir_fd: int | None = None,
        dir_fd_lent: bool = False,
        unnamed_fd: int | None = None,
        owner: str | None = None,
        named_fd: int | None = None,
        claim_untagged: bool = False,
    ) -> None:
        self.final = final
        self._owner = owner
        self._claim_untagged = claim_untagged
        self.root = folders.root if folders is not None else root
        self._folders = folders
        root = self.root
        self._dir_fd: int | None = None
        self._dir_fd_lent = dir_fd_lent and dir_fd is not None
        self._part_id: tuple[int, int] | None = None
        self.unnamed = False
        self._want_second = second
        self.sha256 = hashlib.sha256()
        self.second = optional_digest(second)
        self.offset = 0
        #: ``offset`` up to which :meth:`write` has started the writeback (:data:`WRITEBACK_STEP`).
        self._writeback_from = 0
        #: Bytes thrown away by :meth:`restart` calls (progress already reported for them).
        self.discarded = 0
        #: Called by :meth:`restart` with the bytes it throws away (their progress is taken back at once,
        #: not after the file was fetched again); None: they are added to :attr:`discarded`.
        self.on_restart: Callable[[int], None] | None = None
        #: Asked at the first write of an empty part opened without a second digest: the algorithm to
        #: hash beside the sha256 as the bytes come (a checksum the source stated only in its answer's
        #: headers, such as an S3 GET's MD5 ETag), so :meth:`commit` need not read the part back for it.
        self.second_for: Callable[[], str | None] | None = None
        #: ``offset`` when :meth:`sync` last made the bytes durable (None: not since the last restart).
        self._synced: int | None = None
        self._reader: io.RawIOBase | None = None
        #: With ``resume``: the first bytes of the part were hashed already (by whoever wrote them).
        self._prehashed = hashed
        self._buffer = memoryview(b"")
        given = (None if dir_fd_lent else dir_fd, unnamed_fd, named_fd)
        if named_fd is not None and not resume:
            _refuse(given, "a part file given its named part's descriptor resumes it (resume=True)")
        if root is None and (dir_fd is not None or unnamed_fd is not None or named_fd is not None):
            _refuse(given, "a part file given descriptors needs its root")
        if root is not None:
            self._fh = self._open_by_fd(
                root, resume=resume, dir_fd=dir_fd, unnamed_fd=unnamed_fd, named_fd=named_fd
            )
            if resume:
                try:
                    self._rehash()
                except BaseException:  # an unreadable part (EIO): its descriptors are let go of here
                    self._close_file()
                    self._close_dir()
                    raise
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():
            raise DestinationExists.not_overwritten(final.name)
        if resume and self.part.exists():
            self._fh = open(self.part, "r+b")  # noqa: SIM115 - closed in commit/discard
            self._rehash()
        else:
            self._fh = open(self.part, "wb")  # noqa: SIM115

    def _rehash(self) -> None:
        """Hash the bytes already in a resumed ``.part`` (after those given as ``hashed``, when it has them
        all: its second digest too if one is wanted); ``offset`` becomes its size."""
        pre, want = self._prehashed, self._want_second
        if pre is not None and want and getattr(pre.second, "name", None) != want:
            pre = None  # hashed without the second digest wanted now: all is hashed again
        if pre is not None and pre.offset <= os.fstat(self._fh.fileno()).st_size:
            self.sha256, self.offset = pre.sha256, pre.offset
            self.second = pre.second if want else None
            self._fh.seek(pre.offset)
        while True:
            block = self._fh.read(BLOCK_SIZE)
            if not block:
                break
            self._hash(block)
            self.offset += len(block)
        self._writeback_from = self.offset  # bytes written by an earlier run: not this run's to start

    def _hash(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.second is not None:
            self.second.update(data)

    def restart(self) -> None:
        """Throw away what was written so far (the source changed) and start at offset 0."""
        self._fh.seek(0)
        self._fh.truncate()
        self.sha256 = hashlib.sha256()
        self.second = optional_digest(self._want_second)
        thrown, self.offset = self.offset, 0
        self._synced = None
        self._writeback_from = 0
        if self.on_restart is None:
            self.discarded += thrown
        elif thrown:
            self.on_restart(thrown)

    def copy_range_from(self, src_fd: int, count: int) -> int:
        """Append up to ``count`` bytes from ``src_fd`` (at its current position) with
        ``copy_file_range(2)``; returns bytes copied (0 at end of file). The bytes are not hashed yet:
        call :meth:`hash_range` for them, in order."""
        self._fh.flush()
        n = os.copy_file_range(src_fd, self._fh.fileno(), count)
        self._fh.seek(0, os.SEEK_END)
        self.offset += n
        return n

    def hash_range(self, start: int, length: int) -> None:
        """Add bytes ``start`` to ``start + length`` of the ``.part`` to the running digests (reads
        them back, still in the page cache, through a second handle and one reused buffer; ranges must be
        hashed in order, from one thread at a time)."""
        if self._reader is None:
            self._reader = self._open_reader()
            self._buffer = memoryview(bytearray(BLOCK_SIZE))
        self._reader.seek(start)
        remaining = length
        while remaining:
            n = self._reader.readinto(self._buffer[: min(remaining, BLOCK_SIZE)])
            if not n:
                raise VerificationFailed(f"{self.final.name}: the partial file shrank while copying")
            self._hash(self._buffer[:n])
            remaining -= n

    def write_back(self, start: int, length: int) -> None:
        """Start writing bytes ``start`` to ``start + length`` of the part to disk now and let the page
        cache drop them once written (``posix_fadvise(POSIX_FADV_DONTNEED)``: Linux starts the writeback of
        dirty pages without waiting, then frees the clean ones), so that a later fsync finds the bytes on
        their way (:meth:`start_writeback`, for many small files fsynced in groups). Errors are ignored (a
        hint)."""
        try:
            os.posix_fadvise(self._fh.fileno(), start, length, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` to the part and its running digests; OSError if not written whole. Each
        :data:`WRITEBACK_STEP` bytes appended have their writeback started
        (:func:`~jupyter_staging.safety.writeback.start_writeback`, a hint that never raises)."""
        if not self.offset and self.second is None and self.second_for is not None:
            self._hash_second(self.second_for())
        written = self._fh.write(data) or 0
        if written != len(data):  # a short write of an unbuffered part (a signal, a nearly full disk)
            write_all(self._fh.fileno(), memoryview(data)[written:])
        self._hash(data)
        self.offset += len(data)
        pending = self.offset - self._writeback_from
        if pending >= WRITEBACK_STEP:
            self._fh.flush()
            writeback.start_writeback(self._fh.fileno(), self._writeback_from, pending)
            self._writeback_from = self.offset

    def _hash_second(self, algorithm: str | None) -> None:
        """Hash ``algorithm`` beside the sha256 from now on (called with no byte written yet); nothing for
        None or an algorithm this interpreter cannot compute (:meth:`commit` then says so)."""
        if algorithm and algorithm != "sha256" and can_compute(algorithm):
            self._want_second = algorithm
            self.second = new_digest(algorithm)

    def hexdigests(self) -> dict[str, str]:
        """The digests of the bytes written so far, lower-case hex: ``{"sha256": ..., second: ...}``."""
        digests = {"sha256": self.sha256.hexdigest()}
        if self.second is not None:
            digests[self.second.name] = self.second.hexdigest()
        return digests

    def start_writeback(self) -> None:
        """:meth:`write_back` of the whole file once its buffered tail is written: a later :meth:`sync` then
        finds its data on the way (2,000 files of 64 KiB fsynced in groups: 0.23 s here instead of 0.35 s).
        Never raises: a failed write of the tail stays buffered, and :meth:`sync` raises it."""
        try:
            self._fh.flush()
        except OSError:
            return
        self.write_back(0, 0)

    def sync(self) -> None:
        """Flush and fsync the bytes written so far; :meth:`commit` then skips its own fsync unless more
        were written since. Callable from another thread once writing is done, so that the fsyncs of many
        small files can be in flight at once (the file system commits them together) while one thread
        writes the next files (:class:`~jupyter_staging.engine.pipeline.SyncPipeline`)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced = self.offset

    def commit(
        self,
        expected_size: int | None = None,
        checksums: dict[str, str] | None = None,
        *,
        sync_folder: bool = True,
    ) -> tuple[int, str]:
        """Flush, fsync, verify the size and checksums, and publish under the final name.

        ``expected_size``: bytes the file must hold (None: not checked). ``checksums``: hex digests the
        bytes must match, by algorithm (``{"sha256": hex, "md5": hex}``, any of them; case does not
        matter). A digest not computed as the bytes were written is computed here by reading the ``.part``.
        The file's bytes are always fsynced (here, unless :meth:`sync` did since the last write); its
        folder (which makes the new name durable) only with ``sync_folder``: a caller passing False must
        fsync ``final.parent`` before it records the file as done (the engine's
        :class:`~jupyter_staging.engine.progress.ChunkLedger` does, once per batch).

        Returns ``(size_bytes, sha256_hex)``. On any failure the ``.part`` is removed and nothing is
        published: :class:`SizeMismatch` when the size differs from ``expected_size``,
        :class:`ChecksumMismatch` when a digest differs (the message names the file, the algorithm and
        the first hex digits expected and actual: :mod:`jupyter_staging.safety.checksums`),
        :class:`VerificationFailed` when the file on disk does not hold what was written or an algorithm
        cannot be computed here (:func:`~jupyter_staging.safety.checksums.can_compute`);
        :class:`DestinationExists` when the final name was taken meanwhile.
        """
        self._close_reader()
        try:
            self._fh.flush()
            self._tag_owner()  # before the fsync that makes it durable (when this one makes it)
            if self._synced != self.offset:
                os.fsync(self._fh.fileno())
            confined_size = os.fstat(self._fh.fileno()).st_size
            if self._dir_fd is None:  # by descriptor, the file open is what is linked under its final name
                self._fh.close()
        except OSError:
            # Bytes that could not be flushed or made durable are not kept for a resume either (after a
            # failed fsync, Linux reports the next one clean although the pages were dropped).
            self.discard()
            raise
        size = self.part.stat().st_size if self._dir_fd is None else confined_size
        try:
            if size != self.offset:
                raise VerificationFailed(f"{self.final.name}: wrote {self.offset} bytes, found {size}")
            if expected_size is not None and size != expected_size:
                raise SizeMismatch(f"{self.final.name}: wrote {size} bytes, expected {expected_size}")
            if checksums:
                self._verify(checksums)
        except (VerificationFailed, OSError):  # OSError: the part could not be re-read for a checksum
            with contextlib.suppress(OSError):  # the verification's error is the one to report
                self._remove_part()
            self._close_file()
            self._close_dir()
            raise
        self._publish(sync=sync_folder)
        return size, self.sha256.hexdigest()

    def _tag_owner(self) -> None:
        """Tag the open file as published by the job ``owner`` (at its path below ``root``, for the bytes
        written: :func:`~jupyter_staging.safety.ownership.tag_published`), when both are known; a part's
        own owner attribute (who may resume it) is another attribute, kept. Untagged where the file system
        keeps no user attributes (a resumed run then goes by the rules before the tag) or refuses this one
        (a resumed run then refuses the file, the safe failure). With a :meth:`sync` done
        already, the tag is made durable with the name, by the fsync of the folder."""
        if self._owner is None or self.root is None:
            return
        try:
            rel = self.final.relative_to(self.root).as_posix()
        except ValueError:
            return
        tag_published(self._fh.fileno(), self._owner, rel, self.sha256.hexdigest())

    def _verify(self, checksums: dict[str, str]) -> None:
        """Compare ``checksums`` (hex by algorithm) with the bytes written; raises on the first mismatch."""
        unknown = [algorithm for algorithm in checksums if not can_compute(algorithm)]
        if unknown:
            raise cannot_verify(self.final.name, unknown)
        actual = self.hexdigests()
        for algorithm in set(checksums) - set(actual):
            actual[algorithm] = self._part_digest(algorithm)
        mismatch = first_mismatch(self.final.name, checksums, actual)
        if mismatch is not None:
            raise mismatch

    def _part_digest(self, algorithm: str) -> str:
        """The ``algorithm`` digest of the ``.part`` on disk, lower-case hex."""
        digest = new_digest(algorithm)
        with self._open_reader() as reader:
            while block := reader.read(BLOCK_SIZE):
                digest.update(block)
        return digest.hexdigest()

    def close(self) -> None:
        """Close the file, keeping the ``.part`` for a later resume; when its flush or fsync fails, the
        ``.part`` is removed instead and the :class:`OSError` raised."""
        self._close_reader()
        if self.unnamed:  # nothing to keep: the file system frees it
            self._close_file()
        elif not self._fh.closed:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
            except OSError:
                # Bytes not made durable are not kept for a resume (removed while the folder is open).
                self.discard()
                raise
        self._close_dir()

    def discard(self) -> None:
        """Close and delete the ``.part`` (also when closing fails: a full disk cannot flush the buffer,
        and the bytes are thrown away anyway)."""
        try:
            with contextlib.suppress(OSError):  # a reader that fails to close changes nothing here
                self._close_reader()
            self._remove_part()  # while open: a file the user put at its name since is told apart, kept
        finally:
            try:
                if not self._fh.closed:
                    self._fh.close()
            except OSError:
                pass  # discarded bytes: an ENOSPC flushing them changes nothing
            self._close_dir()
