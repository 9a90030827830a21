"""The bodies of ``GET /jobs/{id}/chunks`` and ``GET /jobs/{id}/manifest``, made whole on a worker thread
(issue 12: the server stays responsive while a job of 20,000 chunks is listed or its manifest read).

A listing of 20,000 chunks is 6.8 MB of JSON. It held every other request of the server for 0.2-0.5 s at a
time: the pydantic dump of the page, its JSON encoding and tornado's SHA-1 ``Etag`` of the body ran on the
event loop, and reading and describing the page on the worker thread made about 200,000 objects at once,
whose allocation set off the collector's full passes over the server's heap (0.1-0.5 s each, holding the
GIL). :func:`chunk_page_body` makes the body on the worker thread, a slice of chunks
(:data:`~jupyter_staging.engine.chunkpages.SLICE`) at a time as they are read and described: each slice
is dumped and encoded (single C calls that keep the GIL while they run, well under a millisecond here)
and let go, so only its text is kept. The bytes are those ``json.dumps(dump(page))`` gives, and the
``Etag`` the one tornado would compute for them.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import TypeAdapter

from jupyter_staging.engine.chunkpages import read_chunk_page
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import DescribeChunk

_CHUNKS = TypeAdapter(list[DescribeChunk])


def chunk_page_body(
    manager: StagingManager, job_id: str, owner: str, *, offset: int = 0, limit: int | None = None
) -> tuple[bytes, str]:
    """``(body, etag)`` of :meth:`StagingManager.chunk_page`: ``json.dumps(dump(page))`` as UTF-8 bytes,
    and its quoted SHA-1 hex digest (what tornado's ``RequestHandler.compute_etag`` gives for that body).

    Blocking database and CPU work (0.2-0.6 s for 20,000 chunks): call it on a worker thread, never on the
    event loop. Raises :class:`~jupyter_staging.errors.JobNotFound` as :meth:`StagingManager.chunk_page`."""
    items: list[str] = []

    def encode(part: list[DescribeChunk]) -> None:
        if part:  # "[a, b]" -> "a, b": slices joined with json.dumps' own ", "
            items.append(json.dumps(_CHUNKS.dump_python(part, mode="json"))[1:-1])

    describe = manager.describer(job_id, owner)
    page = read_chunk_page(manager.store, job_id, describe, offset=offset, limit=limit, sink=encode)
    body = f'{{"chunks": [{", ".join(items)}], "total": {json.dumps(page.total)}}}'.encode()
    return body, etag_of(body)


def manifest_body(manager: StagingManager, job_id: str, owner: str) -> tuple[bytes, str]:
    """``(body, etag)`` of :meth:`StagingManager.manifest` (``GET /jobs/{id}/manifest``): its JSON as UTF-8
    bytes (:meth:`StagingManager.manifest_json`) and :func:`etag_of` them. The manifest of 20,000 files is
    6-8 MB of JSON: encoded and hashed on the event loop it held every other request of the server about
    0.1 s per read (``/api/status`` p99 419 ms while it was read in a loop); parsed by one ``json.loads``
    and encoded by one ``json.dumps`` on the worker thread, it still held the GIL 40-115 ms at a time
    (p99 199 ms). Blocking: call it on a worker thread. Raises as :meth:`StagingManager.manifest`."""
    body = manager.manifest_json(job_id, owner)
    return body, etag_of(body)


def etag_of(body: bytes) -> str:
    """The ``Etag`` tornado's ``RequestHandler.compute_etag`` gives ``body``: its SHA-1, hex, quoted."""
    return f'"{hashlib.sha1(body).hexdigest()}"'  # noqa: S324 - tornado's Etag, not a security hash
