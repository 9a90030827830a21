"""Where a job's output lands: the :class:`Destination` interface and the local folders every job uses.

A job always produces its files locally first, complete and verified (``.part`` + fsync + rename, see
:mod:`jupyter_staging.safety.partfile`), in its destination's :attr:`Destination.workdir`. It then hands
each file to :meth:`Destination.put`, which gives back the chunk's ``path``: relative to the folder for a
local folder (:mod:`~jupyter_staging.destinations.local`), an object URI for object storage
(:mod:`~jupyter_staging.destinations.objectstore`). The manifest goes last
(:meth:`Destination.write_manifest`) and :meth:`Destination.remove` deletes what the job wrote and
nothing else. :func:`~jupyter_staging.destinations.registry.open_destination` picks the class.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from jupyter_staging.destinations.manifest import parse_manifest
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.dirfd import closing_fd, open_folder
from jupyter_staging.safety.privatedir import check_own_folder, check_private_folder

#: Name of the folder, inside the staging folder, holding the scratch folders of object-store jobs.
SCRATCH_FOLDER = ".staging-scratch"


class PublishedFile(NamedTuple):
    """How a job left one of its local output files when it published it (its chunk's record): ``size``
    in bytes and ``mtime_ns`` (ns since the epoch; None when not recorded). A regular file of one name at
    its path that differs in either was changed since (the user's: saved over, appended to, edited in place
    at the same size, such as a FITS header updated), and cleaning up leaves it."""

    size: int
    mtime_ns: int | None = None


class Destination(abc.ABC):
    """Where the output of job ``job_id`` lands. ``workdir`` is the local folder the job writes into."""

    #: True for object stores: chunk paths are object URIs and ready chunks have presigned URLs.
    remote: bool = False
    #: The root ``workdir`` is confined to, for writes by descriptor
    #: (:class:`~jupyter_staging.safety.partfile.PartFile` ``root=``): the server's root for a folder
    #: destination and for an object store's scratch folder below it; None for a scratch folder elsewhere.
    confinement_root: Path | None = None

    def __init__(self, job_id: str, workdir: Path) -> None:
        self.job_id = job_id
        self.workdir = workdir

    def chunk_path(self, rel: str) -> str:
        """The chunk ``path`` of the output file ``rel`` (relative to the job's output)."""
        return rel

    def relative(self, chunk_path: str) -> str:
        """Inverse of :meth:`chunk_path`: ``rel`` from a chunk's ``path``."""
        return chunk_path

    @abc.abstractmethod
    def put(
        self,
        local: Path,
        rel: str,
        *,
        size: int,
        sha256: str,
        content_type: str | None,
        control: JobControl,
    ) -> str:
        """Publish the complete, verified local file ``local`` (which is ``workdir / rel``) as output
        file ``rel``; returns its chunk ``path``. Raises :class:`TransferFailed`,
        :class:`VerificationFailed` or :class:`JobInterrupted` (``local`` is then kept for a retry)."""

    @abc.abstractmethod
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Store ``manifest.json`` beside the output (call it last)."""

    def read_manifest(self) -> dict[str, Any] | None:
        """The stored manifest, or None when there is none (yet) or what is stored holds no JSON object.
        Raises as :meth:`read_manifest_data`."""
        data = self.read_manifest_data()
        return None if data is None else parse_manifest(data)

    @abc.abstractmethod
    def read_manifest_data(self) -> bytes | None:
        """The bytes of the stored ``manifest.json``, or None when there is none (yet)."""

    @abc.abstractmethod
    def remove_chunk(self, chunk_path: str, published: PublishedFile | None = None) -> bool:
        """Delete one published output file (``delete_on_ack``); True when something was deleted. With
        ``published`` (the chunk's size and time), a local regular file of one name that is not as the job
        published it stays (the user's)."""

    @abc.abstractmethod
    def remove(
        self,
        chunk_paths: list[str],
        item_names: list[str],
        convert_dirs: list[str],
        *,
        keep_ready: bool,
        keep_folder: bool = False,
        parts_tagged: bool = False,
        unrecorded: Sequence[str] = (),
        chunk_files: Mapping[str, PublishedFile] | None = None,
    ) -> int:
        """Delete what the job wrote: partial and scratch files always, its published output and manifest
        unless ``keep_ready``; a local destination folder left empty is removed too, unless ``keep_folder``
        (it was there before the job: the user's). ``parts_tagged``: the job was started by a version that
        tags every part file it makes as the job's (:func:`~jupyter_staging.safety.ownership.tag_part`), so
        a local ``.part`` is removed only when it is the job's
        (:func:`~jupyter_staging.safety.ownership.part_of_job`); without it, any ``.part`` at the job's
        names. ``unrecorded``: paths of chunks still pending; unless ``keep_ready`` a local file there is
        removed only when it carries the job's published tag for the bytes it holds
        (:func:`~jupyter_staging.safety.ownership.taken_back`: published in the instant before the run
        stopped and not recorded: a cancel that abandoned a finished Dask task, a crash); any other file
        there is the user's. Returns the number of files (objects) deleted.
        ``chunk_files``: how the job published each chunk's file (by chunk path); a local destination
        leaves a regular file of one name at a chunk's name whose size is another (the user replaced or
        changed it: ``mv`` or an editor's save over it, an append), or whose modification time is not the
        one recorded (edited in place at the same size): the chunk's, else the one the job's own manifest
        recorded (chunks recorded before migration 0007)."""

    def folder_present(self) -> bool:
        """Whether the destination folder exists now (a local one; an object store has no folders: True),
        asked before a job's first run writes anything, so that cleaning up never removes a folder the job
        did not make (:meth:`remove`'s ``keep_folder``)."""
        return True

    @property
    def files(self) -> Confined:
        """File operations below :attr:`workdir` by descriptor, confined to :attr:`confinement_root` (for a
        private scratch folder, to the folder above :attr:`workdir`)."""
        return Confined(self.confinement_root or self.workdir.parent)

    def confined(self, *, create: bool = False) -> None:
        """Check that :attr:`workdir` is still reached from :attr:`confinement_root` without a symlink
        (with ``create``, make what is missing, by descriptor). Called when a job starts or resumes, before
        it publishes, acknowledges with ``delete_on_ack`` and cleans up. Raises
        :class:`~jupyter_staging.errors.PathNotAllowed` (``path_not_allowed``) when a folder on the way
        became a symlink or a file. The default (object stores: a private scratch folder) checks nothing.
        """
        return None

    def presign(self, chunk_path: str, expires_seconds: int) -> tuple[str, datetime] | None:
        """A presigned GET URL of a published chunk and its expiry time (UTC), or None when the
        destination has no URLs (local folders)."""
        return None

    def holds(self, chunk_path: str) -> bool:
        """Whether the published chunk ``chunk_path`` is still in the store (an object store asks it once:
        a HEAD); True where there is nothing to ask (local folders, whose chunks have no URL)."""
        return True


def within(path: Path, root: Path) -> bool:
    """True when ``path`` is ``root`` or below it (lexically; resolve both first)."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def remove_tree_if_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its empty parents up to (not including) ``stop``, by descriptor from
    ``stop`` (:class:`~jupyter_staging.safety.confined.Confined`): a folder on the way that became a
    symlink stops the walk, and nothing outside ``stop`` is touched."""
    if not within(folder, stop):
        return
    files = Confined(stop)
    while folder != stop:
        try:
            if not files.rmdir(folder):
                return
        except PathNotAllowed:
            return
        folder = folder.parent


def scratch_dir(dest: Path, job_id: str) -> Path:
    """Hidden folder inside ``dest`` where remote tables are downloaded before conversion."""
    return dest / f".staging-{job_id}"


def scratch_root_of(root: Path, staging_dir: str, scratch_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the scratch folders of object-store jobs: ``scratch_dir`` relative to the
    server's ``root`` (or absolute; ``~`` expanded), with ``.`` and ``..`` taken out lexically, so that a
    setting leading out of the root is a folder outside it; empty or None:
    ``<root>/<staging_dir>/.staging-scratch``. The server and ``jupyter staging doctor`` both use it."""
    if not scratch_dir:
        return root / f"{staging_dir.strip('/') or '.'}/{SCRATCH_FOLDER}"
    return Path(os.path.normpath(root / Path(scratch_dir).expanduser()))


def make_private_dir(folder: Path, root: Path, *, private_root: bool = False) -> None:
    """Create ``folder``, below ``root``, with mode 0700 for its last component, reached from ``root`` by
    descriptor: a symlink on the way (``.staging-scratch`` planted as a link elsewhere) raises
    :class:`PathNotAllowed`, nothing made or changed outside ``root``. ``private_root``: ``root`` is a
    scratch folder the administrator put outside the server's root, used by path: it is made (mode 0700)
    when missing, must be one no other account controls
    (:func:`~jupyter_staging.safety.privatedir.check_private_folder`), and ``folder`` must be this
    account's (:func:`~jupyter_staging.safety.privatedir.check_own_folder`). Raises
    :class:`~jupyter_staging.errors.DestinationUnavailable` when ``root`` cannot be made or looked at."""
    if private_root:
        check_private_folder(root)
    with closing_fd(open_folder(root, folder.relative_to(root).as_posix(), create=True)) as fd:
        if private_root:
            check_own_folder(fd, folder.name)
        os.fchmod(fd, 0o700)
