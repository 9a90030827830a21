"""Chunks as a stream: read each part of a job's output as soon as it is ready, then acknowledge it.

    for chunk in job.iter_chunks():
        df = chunk.to_pandas()
        chunk.ack()          # with cleanup_policy="delete_on_ack", the part file is deleted now

A chunk is ``ready`` once its file is complete under its final name (``DESIGN.md``, "Chunks"), so it can be
read while the job is still running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_staging.errors import StagingError

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from jupyter_staging.kernel.client import Job


class Chunk:
    """One ready chunk of a job: a file at :attr:`path` (:attr:`rows` rows, :attr:`size` bytes)."""

    def __init__(self, job: Job, data: dict[str, Any]) -> None:
        self.job = job
        self._data = data

    @property
    def index(self) -> int:
        return int(self._data["index"])

    @property
    def path(self) -> Path | str:
        """Absolute local path of the chunk's file; for object storage, its object URI (``s3://...``)."""
        path = str(self._data["path"])
        destination = self.job.destination
        if "://" in path or isinstance(destination, str):
            return path
        return destination / path

    @property
    def rows(self) -> int | None:
        return self._data.get("rows")

    @property
    def size(self) -> int | None:
        """Size of the chunk's file, bytes (the wire format's ``bytes``)."""
        return self._data.get("bytes")

    @property
    def sha256(self) -> str | None:
        return self._data.get("sha256")

    @property
    def state(self) -> str:
        return str(self._data["state"])

    def to_arrow(self) -> pyarrow.Table:
        """The chunk as a ``pyarrow.Table`` (Parquet chunks only; units in the schema). Raises
        :class:`StagingError` (code ``not_parquet``) for other files."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not str(self.path).endswith(".parquet"):
            raise StagingError(f"chunk {self.index} is not a Parquet part: {self.path}", code="not_parquet")
        if isinstance(self.path, Path):
            return pq.read_table(self.path)
        return pq.read_table(pa.BufferReader(self.read_bytes()))

    def to_pandas(self, **kwargs: Any) -> pandas.DataFrame:
        """:meth:`to_arrow` as a ``pandas.DataFrame``."""
        return self.to_arrow().to_pandas(**kwargs)

    def read_bytes(self) -> bytes:
        """The chunk's content: read from disk, or for object storage downloaded through its presigned
        ``url`` (``GET .../chunks`` hands one out with each ready chunk)."""
        if isinstance(self.path, Path):
            return self.path.read_bytes()
        import requests

        url = self._data.get("url") or self.job.refresh_url(self.index).get("url")
        response = requests.get(str(url), timeout=60)
        response.raise_for_status()
        return response.content

    def ack(self) -> Chunk:
        """Acknowledge the chunk; with ``delete_on_ack`` its file is deleted. Returns ``self``."""
        self._data = self.job.ack(self.index)
        return self

    def __repr__(self) -> str:
        return f"<Chunk {self.index} {self.state} rows={self.rows} bytes={self.size} {self.path}>"


def iter_chunks(job: Job, *, poll: float = 0.25, timeout: float | None = None) -> Iterator[Chunk]:
    """Yield each chunk of ``job`` once, in index order, as soon as it is ready — while the job runs.

    Ends when the job has ended and every ready chunk was yielded. ``poll`` seconds between status reads;
    ``timeout`` seconds at most in all. Raises :class:`~jupyter_staging.kernel.client.JobFailed` when the job fails
    or is cancelled (after yielding what was ready) and :class:`TimeoutError` when ``timeout`` passes.
    """
    from jupyter_staging.kernel.client import JobFailed

    deadline = None if timeout is None else time.monotonic() + timeout
    next_index = 0
    while True:
        done = job.refresh().done  # read the state first: chunks listed after it are complete
        chunks = sorted(job.chunks, key=lambda c: c["index"])
        by_index = {c["index"]: c for c in chunks}
        while next_index in by_index and by_index[next_index]["state"] in ("ready", "acked"):
            yield Chunk(job, by_index[next_index])
            next_index += 1
        if done:
            if job.state in ("failed", "cancelled"):
                raise JobFailed(job)
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.name!r} still {job.state} after {timeout} s")
        time.sleep(poll)
