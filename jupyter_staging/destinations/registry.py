"""Pick and check a job's :class:`~jupyter_staging.destinations.base.Destination` from its ``destination``:
a folder below the server's root, or a prefix in S3 or Azure Blob Storage."""

from __future__ import annotations

from pathlib import Path

from jupyter_staging.clouds.azure import is_azure_uri
from jupyter_staging.destinations.azure import AzureDestination, azure_job_prefix, check_azure_destination
from jupyter_staging.destinations.base import Destination, within
from jupyter_staging.destinations.local import LocalDestination
from jupyter_staging.destinations.objectstore import ObjectStoreDestination
from jupyter_staging.destinations.s3 import S3Destination, check_s3_destination, s3_job_prefix
from jupyter_staging.errors import InvalidRequest


def is_object_destination(destination: str | None) -> bool:
    """True when ``destination`` names an object store (``scheme://...``) rather than a folder."""
    return destination is not None and "://" in destination


def object_destination(destination: str, job_id: str) -> str:
    """The job's own prefix for the object store destination ``destination``: ``s3://bucket/prefix/``
    → ``s3://bucket/prefix/<job_id>/`` (the prefix may be empty); likewise ``az://container/prefix/``
    and ``azure://account/container/prefix/``.

    Raises :class:`InvalidRequest` (code ``unsupported_destination``) for other schemes, (code
    ``invalid_destination``) for a missing bucket / container or a prefix with empty, ``.``/``..`` or
    control character segments, and (code ``missing_extra``) for Azure without the ``azure`` extra.
    """
    if is_azure_uri(destination):
        return azure_job_prefix(destination, job_id)
    scheme = destination.split("://", 1)[0].lower()
    if scheme != "s3":
        raise InvalidRequest(
            f"unsupported destination scheme {scheme!r}; use a folder, s3://bucket/prefix/ or "
            "az://container/prefix/",
            code="unsupported_destination",
        )
    return s3_job_prefix(destination, job_id)


def check_object_destination(uri: str) -> None:
    """Fail early, with :class:`InvalidRequest`, when the job prefix ``uri`` certainly cannot be written:
    its bucket or container does not exist (code ``destination_not_found``) or, for Azure, no credentials
    are configured for its account (code ``destination_forbidden``). Answers that do not tell (access
    refused to a listing, network errors) are left for the job to report."""
    if is_azure_uri(uri):
        check_azure_destination(uri)
    else:
        check_s3_destination(uri)


def open_destination(job_id: str, destination: str, *, root_dir: Path, scratch_root: Path) -> Destination:
    """The :class:`Destination` of a job whose stored ``destination`` is a folder relative to
    ``root_dir`` or its own object store prefix; object-store jobs work in ``scratch_root/<job_id>``.

    Raises :class:`InvalidRequest` (code ``invalid_destination``) for a prefix that is not the job's own,
    (code ``missing_extra``) for Azure without the ``azure`` extra."""
    if is_object_destination(destination):
        scratch = scratch_root / job_id
        store: ObjectStoreDestination
        if is_azure_uri(destination):
            store = AzureDestination(job_id, destination, scratch)
        else:
            store = S3Destination(job_id, destination, scratch)
        if within(scratch, root_dir) and scratch != root_dir:
            # The default scratch folder is below the server's root, where the user may swap any folder
            # on the way for a symlink: written by descriptor from that root, as a folder destination.
            store.confinement_root = root_dir
        else:
            # One the administrator put elsewhere: by descriptor from it, checked private at each start.
            store.confinement_root = scratch_root
            store.private_root = True
        return store
    return LocalDestination(job_id, root_dir, destination)
