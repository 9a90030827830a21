"""Reading a job's manifest back: as a dict (:meth:`JobManifests.manifest`), or as the JSON the API answers
(:meth:`JobManifests.manifest_json`), made from the stored bytes a list element at a time."""

from __future__ import annotations

from typing import Any

from jupyter_staging.destinations.manifest import compact_manifest, parse_manifest
from jupyter_staging.engine.steering import JobSteering
from jupyter_staging.errors import InvalidState


class JobManifests(JobSteering):
    """The manifest reads of :class:`~jupyter_staging.engine.manager.StagingManager`."""

    def manifest(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        """The manifest of a succeeded job, or of a manifest job that failed with code ``partial`` (it
        lists what was staged and which entries failed); for an object store it is read back from
        ``prefix/<job_id>/manifest.json`` (GetObject).

        Raises :class:`JobNotFound`, and :class:`InvalidState` (code ``manifest_not_ready``) until the job
        has succeeded.
        """
        state, data = self._manifest_data(job_id, owner)
        manifest = None if data is None else parse_manifest(data)
        if manifest is None or manifest.get("job_id") != job_id:
            raise _not_ready(state)
        return manifest

    def manifest_json(self, job_id: str, owner: str | None = None) -> bytes:
        """``json.dumps(self.manifest(job_id, owner)).encode()`` (what ``GET /jobs/{id}/manifest``
        answers), made from the stored bytes by
        :func:`~jupyter_staging.destinations.manifest.compact_manifest`: the manifest of 20,000 files
        (6-8 MB) never holds the GIL more than a few milliseconds at a time, and its objects are never all
        alive at once. Blocking: call it on a worker thread. Raises as :meth:`manifest`."""
        state, data = self._manifest_data(job_id, owner)
        compact = None if data is None else compact_manifest(data)
        if compact is None or compact.job_id != job_id:
            raise _not_ready(state)
        return compact.body

    def _manifest_data(self, job_id: str, owner: str | None) -> tuple[str, bytes | None]:
        """The job's state and the bytes of its stored manifest (None before it may have written one, or
        when there is none). Raises :class:`JobNotFound`."""
        rec = self._record(job_id, owner)
        written = rec.state == "succeeded" or (rec.state == "failed" and rec.error_code == "partial")
        return rec.state, self.destination_of(rec).read_manifest_data() if written else None


def _not_ready(state: str) -> InvalidState:
    return InvalidState(
        f"job is {state}; its manifest is written when it succeeds", code="manifest_not_ready"
    )
