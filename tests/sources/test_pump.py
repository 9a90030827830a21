"""``pump``, which every streamed download (HTTP, S3, Azure) writes through: a body of one block is written
on the calling thread (no helper thread started for a small object), a longer body overlaps its writes
with its reads on one helper thread, and progress always matches the bytes in the part file."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.pumping import pump


class RecordingPart(PartFile):
    """A real part file that notes the thread of each write."""

    def __init__(self, final: Path) -> None:
        super().__init__(final)
        self.writers: list[str] = []

    def write(self, data: bytes | memoryview) -> None:
        self.writers.append(threading.current_thread().name)
        super().write(data)


def reader(blocks: list[bytes]):
    pending = list(blocks)
    return lambda: pending.pop(0) if pending else b""


def counted() -> tuple[JobControl, list[int]]:
    seen: list[int] = []
    return JobControl(on_bytes=seen.append), seen


def test_a_body_of_one_block_is_written_on_the_calling_thread(tmp_path: Path):
    body = os.urandom(65536)
    control, seen = counted()
    out = RecordingPart(tmp_path / "lc.fits")
    before = {t.name for t in threading.enumerate()}

    assert pump(reader([body]), out, control) == len(body)

    assert out.writers == [threading.current_thread().name]
    assert not any(t.name.startswith("staging-write") for t in threading.enumerate() if t.name not in before)
    assert seen == [len(body)] and out.offset == len(body)
    out.commit(len(body), {"sha256": hashlib.sha256(body).hexdigest()})
    assert (tmp_path / "lc.fits").read_bytes() == body


def test_a_longer_body_is_written_in_order_on_one_helper_thread(tmp_path: Path):
    blocks = [os.urandom(n) for n in (1 << 20, 1 << 20, 12345)]
    control, seen = counted()
    out = RecordingPart(tmp_path / "big.bin")

    assert pump(reader(blocks), out, control) == sum(map(len, blocks))

    assert len(out.writers) == 3 and len(set(out.writers)) == 1
    assert out.writers[0].startswith("staging-write")
    assert seen == [len(b) for b in blocks]
    whole = b"".join(blocks)
    out.commit(len(whole), {"sha256": hashlib.sha256(whole).hexdigest()})
    assert (tmp_path / "big.bin").read_bytes() == whole


def test_an_empty_body_writes_nothing(tmp_path: Path):
    control, seen = counted()
    out = RecordingPart(tmp_path / "empty.bin")
    assert pump(reader([]), out, control) == 0
    assert out.writers == [] and seen == [] and out.offset == 0
    out.close()


@pytest.mark.parametrize("blocks_before_failure", [1, 3])
def test_bytes_read_before_a_broken_body_are_kept_and_counted(tmp_path: Path, blocks_before_failure: int):
    """A connection that breaks after the first block(s): what arrived is in the part file (for a resume
    from ``out.offset``), and the progress reported is exactly that."""
    blocks = [os.urandom(1000 + i) for i in range(blocks_before_failure)]
    pending = list(blocks)

    def read() -> bytes:
        if pending:
            return pending.pop(0)
        raise ConnectionResetError("peer went away")

    control, seen = counted()
    out = RecordingPart(tmp_path / "broken.bin")
    with pytest.raises(ConnectionResetError):
        pump(read, out, control)
    assert out.offset == sum(map(len, blocks)) == sum(seen)
    out.close()
    assert (tmp_path / "broken.bin.part").read_bytes() == b"".join(blocks)
