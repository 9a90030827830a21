"""What S3 and Azure Blob Storage destinations share: a job prefix in object storage.

The job's work folder is a private scratch folder (mode 0700) below the staging folder, written by
descriptor from the server's root (``confinement_root``, set by
:func:`~jupyter_staging.destinations.registry.open_destination`), or below a scratch folder the
administrator put elsewhere, written by descriptor from that folder once it was checked private
(:meth:`ObjectStoreDestination.make_workdir`); ``put`` uploads each file to
``<prefix>/<job_id>/<relative path>`` (the file opened from that root:
:meth:`ObjectStoreDestination.opened_local`), verifies it, deletes the local copy and returns the object's
URI. Ready chunks are handed out as presigned URLs valid at most :data:`MAX_PRESIGN_SECONDS`.
:meth:`~jupyter_staging.destinations.base.Destination.remove` deletes exactly the objects below
``<prefix>/<job_id>/``, never anything outside it.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from jupyter_staging.destinations.base import Destination, make_private_dir, remove_tree_if_empty, within
from jupyter_staging.destinations.manifest import manifest_bytes
from jupyter_staging.errors import InvalidRequest, PathNotAllowed, TransferFailed, VerificationFailed
from jupyter_staging.safety.copying import block_buffer
from jupyter_staging.safety.dirfd import READ_FLAGS, open_existing

#: Files at least this large (bytes) are uploaded in parts (multipart upload, or Azure blocks).
UPLOAD_MULTIPART_THRESHOLD = 64 * 1024 * 1024
#: Size of one part of a multipart upload, bytes (boto3 raises it for files above 10,000 parts).
UPLOAD_CHUNKSIZE = 16 * 1024 * 1024
#: Parts of one file uploaded at once.
UPLOAD_CONCURRENCY = 8
#: Longest validity of a presigned URL, seconds (7 days, the most SigV4 allows).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def checked_prefix(destination: str, prefix: str) -> str:
    """``prefix`` (the key prefix of ``destination``) as ``"a/b/"`` (or ``""``).

    Raises :class:`InvalidRequest` (code ``invalid_destination``) for empty, ``.``/``..`` or
    control-character segments.
    """
    segments = prefix.split("/")
    if segments and segments[-1] == "":
        segments.pop()
    for segment in segments:
        if segment in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in segment):
            raise InvalidRequest(
                f"destination {destination!r} has an empty, '.', '..' or control-character path segment",
                code="invalid_destination",
            )
    return "".join(f"{s}/" for s in segments)


def presign_seconds(expires_seconds: int) -> int:
    """``expires_seconds`` clamped to 1 s - :data:`MAX_PRESIGN_SECONDS`."""
    return max(1, min(int(expires_seconds), MAX_PRESIGN_SECONDS))


def manifest_body(manifest: dict[str, Any]) -> bytes:
    """The bytes of ``manifest.json`` as stored in object storage (:func:`manifest_bytes`)."""
    return manifest_bytes(manifest)


def file_part_digests(
    path: Path, part_size: int, algorithm: str, check: Callable[[], None] | None = None
) -> tuple[list[bytes], str]:
    """The ``algorithm`` (``"sha256"``, ``"md5"``) digest of each part of a file as a multipart upload cut
    it (``part_size`` bytes each, the last one shorter; one part for an empty file), and the hex SHA-256 of
    the whole file, read once into a reused buffer (``check`` called before each block, as in
    :func:`~jupyter_staging.safety.copying.file_digest`). Raises ``OSError``, and what ``check`` raises."""
    parts: list[bytes] = []
    whole = hashlib.sha256()
    view = block_buffer()
    with open(path, "rb", buffering=0) as fh:
        while True:
            part = hashlib.new(algorithm, usedforsecurity=False)
            left = part_size
            while left:
                if check is not None:
                    check()
                n = os.readv(fh.fileno(), [view[: min(len(view), left)]])
                if not n:
                    break
                part.update(view[:n])
                whole.update(view[:n])
                left -= n
            if left == part_size and parts:  # the end of the file, at a part's boundary
                break
            parts.append(part.digest())
            if left:  # a short part: the last one
                break
    return parts, whole.hexdigest()


class ObjectStoreDestination(Destination):
    """A job prefix ``uri`` in object storage (``s3://bucket/prefix/<job_id>/``, ``az://...``): chunk paths
    are object URIs below it and every key is ``prefix + rel``. Subclasses set ``prefix`` (the key prefix
    within the bucket or container, ending in ``<job_id>/``) and implement :meth:`discard`.

    Raises :class:`InvalidRequest` (code ``invalid_destination``) when ``uri`` is not the job's own prefix.
    """

    remote = True
    uri: str
    prefix: str
    #: The :attr:`confinement_root` is a scratch folder the administrator put outside the server's root:
    #: checked private at each start (:meth:`make_workdir`) and never removed.
    private_root = False

    def __init__(self, job_id: str, uri: str, scratch: Path) -> None:
        super().__init__(job_id, scratch)
        if not uri.endswith(f"/{job_id}/"):
            # The job removes everything below its prefix: make sure the prefix is the job's own.
            raise InvalidRequest(f"{uri!r} is not the prefix of job {job_id}", code="invalid_destination")
        self.uri = uri

    def chunk_path(self, rel: str) -> str:
        return f"{self.uri}{rel}"

    def relative(self, chunk_path: str) -> str:
        return chunk_path[len(self.uri) :] if chunk_path.startswith(self.uri) else chunk_path

    def key(self, rel: str) -> str:
        """The object key (blob name) of output file ``rel``."""
        return f"{self.prefix}{rel}"

    def key_of(self, chunk_path: str) -> str:
        """The object key of a chunk of this job. Raises :class:`InvalidRequest` (code
        ``invalid_destination``) for a path outside the job's prefix."""
        rel = self.relative(chunk_path)
        pure = PurePosixPath(rel)
        if (rel == chunk_path and "://" in chunk_path) or pure.is_absolute() or ".." in pure.parts:
            raise InvalidRequest(f"{chunk_path!r} is not an object of this job", code="invalid_destination")
        return self.key(rel)

    def locator(self, key: str) -> str:
        """The URI of the object ``key`` in this destination's bucket or container."""
        return f"{self.uri[: len(self.uri) - len(self.prefix)]}{key}"

    @abc.abstractmethod
    def discard(self, key: str) -> None:
        """Delete the object ``key`` (an upload that failed verification)."""

    def reject(self, key: str, problem: str) -> NoReturn:
        """Delete the object ``key`` whose upload could not be verified and raise
        :class:`VerificationFailed` saying ``problem``."""
        try:
            self.discard(key)
        except Exception:  # noqa: S110 - the verification error is the one to report
            pass
        raise VerificationFailed(f"upload of {self.locator(key)} could not be verified: {problem}")

    @contextmanager
    def opened_local(self, local: Path) -> Iterator[Path]:
        """``local`` (a file of the work folder) for an upload and its digests: with a
        :attr:`~jupyter_staging.destinations.base.Destination.confinement_root` (a scratch folder below
        the server's root), opened by descriptor from that root, never through a symlink, and given as
        ``/proc/self/fd/<n>`` (Linux's name of that very open file: a folder swapped for a symlink after the
        open changes nothing read); else ``local`` itself (a private scratch folder). Raises
        :class:`~jupyter_staging.errors.PathNotAllowed` when a folder on the way or the file itself is a
        symlink or not a regular file, :class:`TransferFailed` (code ``upload_failed``) when it is gone or
        cannot be opened."""
        if self.confinement_root is None:
            yield local
            return
        try:
            with self.files.parent(local) as (dir_fd, name):
                fd = open_existing(dir_fd, name, READ_FLAGS)
        except OSError as exc:
            raise TransferFailed(
                f"cannot read {local.name} to upload it: {exc.strerror}", code="upload_failed"
            ) from None
        if fd is None:
            raise TransferFailed(f"cannot read {local.name} to upload it: it is gone", code="upload_failed")
        try:
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    def drop_local(self, local: Path) -> None:
        """Delete ``local``, uploaded and verified (by descriptor below a confinement root)."""
        if self.confinement_root is None:
            local.unlink(missing_ok=True)
        else:
            self.files.unlink(local)

    def make_workdir(self) -> None:
        """Make the work folder (mode 0700) by descriptor from :attr:`confinement_root`, that folder first
        checked private when it is the administrator's (:func:`~jupyter_staging.destinations.base.
        check_private_folder`). Raises :class:`PathNotAllowed` for a symlink on the way or a scratch
        folder another account controls."""
        assert self.confinement_root is not None
        make_private_dir(self.workdir, self.confinement_root, private_root=self.private_root)

    def remove_workdir_if_empty(self) -> None:
        """Remove the work folder when empty, and the scratch folder above it when empty too if that is
        below the server's root and not the root itself (an administrator's scratch folder stays: removing
        it would let another account make one at its name)."""
        parent, root = self.workdir.parent, self.confinement_root
        above = not self.private_root and root is not None and parent != root and within(parent.parent, root)
        remove_tree_if_empty(self.workdir, parent.parent if above else parent)

    def remove_scratch(self) -> None:
        """Delete the local work folder (partial and not yet uploaded files), then
        :meth:`remove_workdir_if_empty`. A folder on the way swapped for a symlink (``staging`` moved to
        another disk and linked back) leaves it where it is: nothing is removed through a link, and the
        job's objects are deleted all the same."""
        try:
            self.files.remove_tree(self.workdir)
        except PathNotAllowed:
            return
        self.remove_workdir_if_empty()
