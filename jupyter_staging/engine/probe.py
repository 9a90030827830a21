"""Whether the workers of a Dask cluster see a job's destination folder, and tag the part files they make:
the probe file a worker writes there (a task, :func:`probe_folder`) and the server reads back
(:func:`read_probe`) before any of the job's bytes move (:mod:`jupyter_staging.engine.spread`)."""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_staging.engine.tasks import TaskContext
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.dirfd import create_file, folder_fd, open_existing, unlink_at
from jupyter_staging.safety.ownership import part_of_job, tag_part


def probe_folder(ctx: TaskContext, rel: str, token: str) -> str:
    """Write the file ``.staging-probe-<token>`` (holding ``token``, tagged as the job's part files are:
    :func:`~jupyter_staging.safety.ownership.tag_part`) into folder ``rel`` below the root, so the server
    can tell whether it sees what this worker writes, and whether the worker's parts carry the job's tag
    (:func:`read_probe`). Returns the worker's host name.
    Raises :class:`FileNotFoundError` / :class:`PathNotAllowed` when the folder is missing or a symlink
    here."""
    with folder_fd(Path(ctx.root), rel) as fd:
        name = f".staging-probe-{token}"
        unlink_at(fd, name)  # a run again of this task (its worker died before the result was read)
        out = create_file(fd, name, 0o600)
        try:
            tag_part(out, ctx.job_id)  # as the part files it makes: the server tells whether it can
            os.write(out, token.encode())
            os.fsync(out)
        finally:
            os.close(out)
    return os.uname().nodename


def read_probe(root: Path, rel: str, token: str, job_id: str) -> tuple[bool, bool]:
    """``(seen, tagged)`` for the probe file of ``token`` in folder ``rel`` (then removed): whether it is
    there with its content, and whether it is tagged as job ``job_id``'s part files are (False: the
    worker's mount keeps no user attributes where this server's does, so the parts it makes are untagged
    here; :func:`~jupyter_staging.safety.ownership.part_of_job`)."""
    name = f".staging-probe-{token}"
    try:
        with folder_fd(root, rel) as dir_fd:
            fd = open_existing(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            if fd is None:
                return False, False
            try:
                found = os.read(fd, 1024)
                tagged = part_of_job(fd, job_id)
            finally:
                os.close(fd)
            unlink_at(dir_fd, name)
    except (FileNotFoundError, PathNotAllowed):
        return False, False
    return found == token.encode(), tagged
