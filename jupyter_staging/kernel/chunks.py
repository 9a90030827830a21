"""One chunk of a job as the notebook reads it (:class:`Chunk`): its file, its rows, its bytes, as a table.

A chunk is ``ready`` once its file is complete under its final name (``DESIGN.md``, "Chunks"), so it can be
read while the job is still running; :func:`jupyter_staging.kernel.job.iter_chunks` yields them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import requests

from jupyter_staging.errors import StagingError
from jupyter_staging.kernel.backends import REQUEST_TIMEOUT
from jupyter_staging.kernel.readback import read_part

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["Chunk", "ChunkOwner"]


class ChunkOwner(Protocol):
    """What a chunk needs of its job (:class:`jupyter_staging.kernel.job.Job`)."""

    @property
    def destination(self) -> Path | str:
        """The job's local destination folder, or its object-storage URI (``s3://bucket/prefix``)."""

    def ack(self, index: int) -> dict[str, Any]:
        """Acknowledge chunk ``index``; its record as the server answers it."""

    def refresh_url(self, index: int) -> dict[str, Any]:
        """Chunk ``index`` with a new presigned ``url``."""


class Chunk:
    """One ready chunk of a job: a file at :attr:`path` (:attr:`rows` rows, :attr:`size` bytes)."""

    def __init__(self, job: ChunkOwner, data: dict[str, Any]) -> None:
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
        # Deferred: pyarrow is heavy and only needed when a chunk is read as a table.
        import pyarrow as pa

        if not str(self.path).endswith(".parquet"):
            raise StagingError(f"chunk {self.index} is not a Parquet part: {self.path}", code="not_parquet")
        if isinstance(self.path, Path):
            return read_part(self.path)
        return read_part(pa.BufferReader(self.read_bytes()))

    def to_pandas(self, **kwargs: Any) -> pandas.DataFrame:
        """:meth:`to_arrow` as a ``pandas.DataFrame``."""
        return self.to_arrow().to_pandas(**kwargs)

    def read_bytes(self) -> bytes:
        """The chunk's content: read from disk, or for object storage downloaded through its presigned
        ``url`` (``GET .../chunks`` hands one out with each ready chunk). An object storage that refuses
        it or does not have it (403, 404: the URL expired, or the object was removed) is asked for a new
        URL once: raises :class:`InvalidState` (code ``chunk_expired``) when the object is gone for good
        (acknowledged under ``delete_on_ack`` by another reader, expired, replaced by a re-run), and
        :class:`StagingError` (code ``read_failed``) when it still cannot be read. No error shows the URL
        (a credential)."""
        if isinstance(self.path, Path):
            return self.path.read_bytes()
        url = self._data.get("url") or self._fresh_url()
        response = self._get(url)
        if response.status_code in (403, 404):  # an expired URL, or an object removed: the server says which
            response = self._get(self._fresh_url())
        if response.status_code != 200:
            raise StagingError(
                f"object storage answered HTTP {response.status_code} for chunk {self.index}",
                code="read_failed",
                status=502,
            )
        return response.content

    def _fresh_url(self) -> str:
        """A new presigned URL of the chunk (its record updated). Raises what :meth:`ChunkOwner.refresh_url`
        raises (``chunk_expired`` for an object gone for good)."""
        self._data = self.job.refresh_url(self.index)
        return str(self._data.get("url"))

    def _get(self, url: str) -> requests.Response:
        """GET presigned ``url``; a request that fails is a :class:`StagingError` (``read_failed``) that
        names the chunk, never the URL."""
        try:
            return requests.get(url, timeout=REQUEST_TIMEOUT)
        except requests.RequestException as exc:
            raise StagingError(
                f"cannot read chunk {self.index} from object storage: {type(exc).__name__}",
                code="read_failed",
                status=502,
            ) from None

    def ack(self) -> Chunk:
        """Acknowledge the chunk; with ``delete_on_ack`` its file is deleted (and with a finished job's last
        chunk its manifest and folder: the job is ``expired``). Returns ``self``. Raises :class:`InvalidState`
        (409: ``chunk_not_ready``, or ``chunk_expired`` when clean-up removed the file)."""
        self._data = self.job.ack(self.index)
        return self

    def __repr__(self) -> str:
        return f"<Chunk {self.index} {self.state} rows={self.rows} bytes={self.size} {self.path}>"
