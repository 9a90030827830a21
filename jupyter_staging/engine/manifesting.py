"""The manifest a job writes last: one object per staged file (:class:`ManifestStager`, a base of
:class:`~jupyter_staging.engine.runner.JobRunner`)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from jupyter_staging.destinations.manifest import build_manifest
from jupyter_staging.engine.freshness import fingerprints_of
from jupyter_staging.engine.spreadtables import TableSpreadStager
from jupyter_staging.engine.store import ChunkSummary, JobRecord, utcnow


class ManifestStager(TableSpreadStager):
    """Builds and writes the manifest of the job it stages."""

    def _manifest_objects(self, staged: list[ChunkSummary]) -> list[dict[str, Any]]:
        """One manifest object per staged chunk: path (and URI), size in bytes, sha256, rows, type, the
        fingerprint of the source item it came from and, for a local output, its ``mtime_ns``."""
        objects = []
        fingerprints = fingerprints_of(self.resume)
        outputs = self.resume.get("outputs") or {}
        for c in staged:
            path = self.dest.relative(c.path)
            obj: dict[str, Any] = {
                "path": path,
                "size": c.bytes,
                "sha256": c.sha256,
                "rows": c.rows,
                "content_type": c.content_type,
            }
            item = outputs.get(path, path)
            if item in fingerprints:
                obj["source_item"] = item
                obj["fingerprint"] = fingerprints[item]
            if self.dest.remote:
                obj["uri"] = c.path
            elif c.mtime_ns is not None:  # its modification time as published: a re-run, and a cleanup,
                obj["mtime_ns"] = c.mtime_ns  # find a file edited since
            else:  # recorded by a release before migration 0007: its time now
                with contextlib.suppress(OSError):
                    obj["mtime_ns"] = os.lstat(self.dest.workdir / path).st_mtime_ns
            if c.entry is not None:
                obj["entry"] = c.entry
            objects.append(obj)
        return objects

    def _write_manifest(
        self,
        rec: JobRecord,
        objects: list[dict[str, Any]],
        entries: list[str] | None,
        failures: dict[str, dict[str, str]],
    ) -> None:
        """Write ``manifest.json`` unless this job's manifest is already there (a recovered run)."""
        listing = None
        if entries is not None:
            shown = rec.entries or {}
            listing = [
                {
                    "name": name,
                    "source": shown.get(name, ""),
                    "paths": [o["path"] for o in objects if o.get("entry") == name],
                    "error": failures.get(name),
                }
                for name in entries
            ]
        existing = self.dest.read_manifest()
        if existing is not None and existing.get("job_id") == self.job_id:
            return
        self.dest.write_manifest(
            build_manifest(
                job_id=self.job_id,
                name=rec.name,
                source=rec.source,
                method=rec.method,
                convert=rec.convert,
                objects=objects,
                created_at=rec.created_at,
                finished_at=utcnow(),
                entries=listing,
            ),
        )
