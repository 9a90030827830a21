"""How a streamed body reaches its part file: :func:`pump` (every HTTP, S3 and Azure download on one stream),
with the writes and hashes of a long body on a helper thread while the next block is read."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile

__all__ = ["pump"]


def pump(read: Callable[[], bytes], out: PartFile, control: JobControl) -> int:
    """Copy blocks from ``read()`` (``b""`` at the end) into ``out``; returns the bytes copied.

    A body of one block (a small object or file) is written on the calling thread. From a second block on,
    writing and hashing block *n* (in a helper thread; both release the GIL) overlaps reading block *n+1*:
    the helper is started only then, as starting and joining a thread costs more than writing and hashing
    one block of 64 KiB (0.2-0.3 ms of CPU and a few context switches per body, here).
    ``control.check()`` runs before every read and ``control.add_bytes()`` after every write, also when
    ``read()`` raises, so progress always matches ``out.offset``.
    """
    control.check()
    first = read()
    if not first:
        control.check()  # a pause or cancel that shut the connection down ends no body
        return 0
    try:
        control.check()
        block = read()
    except BaseException:
        out.write(first)  # what arrived is kept for a resume, as a block on the helper thread would be
        control.add_bytes(len(first))
        raise
    if not block:
        out.write(first)
        control.add_bytes(len(first))
        control.check()
        return len(first)
    return _pump_overlapped(first, block, read, out, control)


def _pump_overlapped(
    first: bytes, block: bytes, read: Callable[[], bytes], out: PartFile, control: JobControl
) -> int:
    """:func:`pump` from its first two blocks (both non-empty) on, each block written and hashed on a
    helper thread while the next is read."""
    copied = len(first)
    pending_len = len(first)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-write") as pool:
        pending: Future[None] | None = pool.submit(out.write, first)
        try:
            while True:
                if pending is not None:
                    pending.result()
                    control.add_bytes(pending_len)
                    pending = None
                if not block:
                    control.check()  # a pause or cancel that shut the connection down ends no body
                    return copied
                pending = pool.submit(out.write, block)
                pending_len = len(block)
                copied += pending_len
                control.check()
                block = read()
        finally:
            if pending is not None:
                pending.result()
                control.add_bytes(pending_len)
