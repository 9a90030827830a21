"""One remote or local item fetched into its part file and published verified, on one stream or on
``streams`` parallel ranged streams: what a distributed executor's task runs for a file
(:mod:`jupyter_staging.engine.tasks`), whether the file is staged below the job's root or into a worker's
scratch folder on its way to an object store.

Verification (:meth:`~jupyter_staging.safety.partfile.PartFile.commit`): the size, the sha256 always, and
one other digest, the one the server chose or else the strongest the source states
(:func:`~jupyter_staging.safety.checksums.checksums_to_verify`). A worker that cannot compute the chosen
digest (no awscrt for a CRC) verifies another the source states instead, or fails before a byte moves
(:func:`~jupyter_staging.safety.checksums.verifiable_here`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from jupyter_staging.engine.ranges import fetch_in_ranges, range_step, streams_for
from jupyter_staging.errors import JobInterrupted, SourceChanged, TransferFailed
from jupyter_staging.safety.checksums import (
    can_compute,
    checksums_to_verify,
    second_algorithm,
    verifiable_here,
)
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.dirfd import fd_identity
from jupyter_staging.safety.partfile import Hashed, PartFile
from jupyter_staging.sources.base import Source, SourceItem


def fetch_verified(
    source: Source,
    item: SourceItem,
    control: JobControl,
    final: Path,
    root: Path,
    checksums: dict[str, str],
    *,
    second: str | None,
    streams: int,
    owner: str | None = None,
    claim_untagged: bool = False,
) -> tuple[int, str]:
    """Fetch ``item`` into a fresh part file of ``final`` (below ``root``; a dead attempt's is replaced, a
    file in its way that is not the job's set aside and logged: ``PartFile``, ``claim_untagged`` as its own),
    verify it against ``item.size``, ``checksums`` and those the source states, and publish it; returns
    ``(size_bytes, sha256_hex)``. On ``streams`` parallel streams when
    :func:`~jupyter_staging.engine.ranges.streams_for` says so (a remote file of 64 MiB or more whose source
    serves ranges, each range conditional on the item's version; hashed as they arrive, the ``second``
    digest too), else on one. A file that changes between two ranges is fetched again on one stream, as the
    server's threads do. ``owner``: the job's id, tagged on the file before it is published
    (:mod:`jupyter_staging.safety.ownership`: a task run again takes it as the job's, nothing else).

    On an error the part is removed, except on a pause or cancel (:class:`JobInterrupted`: closed; the
    next attempt truncates it). Raises what the source and :meth:`PartFile.commit` raise."""

    if not item.checksums and streams_for(source, item, streams):
        with suppress(SourceChanged):  # ranges state no checksum, nor an S3 listing: ask (a change: 1 stream)
            source.ask_checksums(item)
    if second is not None and not can_compute(second):  # a worker without awscrt: another stated one, or fail
        checksums = verifiable_here(checksums, item.checksums, item.name)
        second = second_algorithm(checksums)
    chosen_here = second is None
    second = second_algorithm(checksums_to_verify(item.checksums)) if chosen_here else second

    def part(hashed: Hashed | None) -> PartFile:
        out = PartFile(
            final,
            resume=hashed is not None,
            second=second,
            root=root,
            hashed=hashed,
            owner=owner,
            claim_untagged=claim_untagged,
        )
        notice = out.set_aside_notice()  # a file not the job's was in the way of its new .part
        if notice is not None:
            control.log("warning", notice)
        if chosen_here and hashed is None:
            # What a GET states in its headers (an S3 ETag's MD5 for an object listed below a prefix):
            # hashed from the first byte written, so the part is not read back at its commit.
            out.second_for = lambda: second_algorithm(checksums_to_verify(item.checksums))
        return out

    out = _fetched_part(source, item, control, part, second=second, streams=streams)
    # Unless the server chose: what the source stated, as the bytes came too (a GET may have learned more).
    expected = {**checksums_to_verify(item.checksums), **checksums} if chosen_here else checksums
    return out.commit(item.size, checksums=expected or None)


def _fetched_part(
    source: Source,
    item: SourceItem,
    control: JobControl,
    part: Callable[[Hashed | None], PartFile],
    *,
    second: str | None,
    streams: int,
) -> PartFile:
    """The part file of ``item``, its bytes fetched (see :func:`fetch_verified`), ready to commit:
    ``part(None)`` makes a fresh one, ``part(hashed)`` opens a fetched one again with what was hashed."""
    if streams_for(source, item, streams):
        assert item.size is not None
        out = part(None)
        try:
            with _settled(out):
                os.ftruncate(out.fileno(), item.size)
                step = range_step(item.size, streams)
                hashed = fetch_in_ranges(
                    source, item, out.fileno(), control, streams=streams, step=step, second=second
                )
        except SourceChanged:
            pass  # discarded: no range of the new version is trusted; one stream, from the first byte
        else:
            return reopened(out, part, hashed)
    out = part(None)
    out.on_restart = lambda thrown: control.add_bytes(-thrown)  # fetched again, counted again
    with _settled(out):
        source.fetch(item, out, control)
    return out


@contextmanager
def _settled(out: PartFile) -> Iterator[None]:
    """Fetch into ``out`` inside the block: on a pause or cancel (:class:`JobInterrupted`) it is closed
    (the next attempt replaces it), on any other error it is discarded; the error is raised again."""
    try:
        yield
    except JobInterrupted:
        out.close()
        raise
    except BaseException:
        out.discard()
        raise


def reopened(out: PartFile, part: Callable[[Hashed | None], PartFile], hashed: Hashed) -> PartFile:
    """``part(hashed)``: the part file ``out`` (its ranges fetched, still open) opened again to commit it,
    then ``out`` closed. When the reopen fails (the final name taken meanwhile, the folder moved), or finds
    another file under the part's name, the part is removed by ``out``'s folder descriptor and the error
    raised (:class:`TransferFailed` for a replaced part): ``hashed`` is of ``out``'s bytes only."""
    try:
        whole = part(hashed)
    except BaseException:
        out.discard()
        raise
    if fd_identity(whole.fileno()) != fd_identity(out.fileno()):
        whole.close()
        out.discard()
        raise TransferFailed(f"{out.final.name}: its part file was replaced while it was fetched")
    out.close()
    return whole
