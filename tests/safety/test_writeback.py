"""Starting the writeback of a file's bytes early (``sync_file_range(2)``, ``safety.writeback``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from jupyter_staging.safety.writeback import start_writeback


def dirty_kib() -> int:
    """The page cache's dirty bytes not yet being written (KiB, ``Dirty:`` of /proc/meminfo)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Dirty:"):
                return int(line.split()[1])
    raise AssertionError("no Dirty: line in /proc/meminfo")


def test_the_bytes_of_a_range_go_to_disk_without_an_fsync(tmp_path: Path) -> None:
    """256 MiB written to a file stay dirty in the page cache (Linux writes them back on its own only
    after 30 s, or past 10% of the memory); once their writeback is started, most of them leave the dirty
    pages within seconds, and the file reads back the same."""
    size = 256 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    fd = os.open(tmp_path / "range.bin", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        written = dirty_kib()
        assert start_writeback(fd, 0, size)
        deadline = time.monotonic() + 20
        while dirty_kib() > written - size // 2048 and time.monotonic() < deadline:  # half of it, in KiB
            time.sleep(0.05)
        assert dirty_kib() <= written - size // 2048, (written, dirty_kib())
        assert os.pread(fd, len(block), size - len(block)) == block
    finally:
        os.close(fd)


def test_what_cannot_be_written_back_is_a_false_hint_never_an_error() -> None:
    read_end, write_end = os.pipe()
    try:
        assert start_writeback(read_end, 0, 0) is False  # a pipe: ESPIPE
    finally:
        os.close(read_end)
        os.close(write_end)
    assert start_writeback(1 << 30, 0, 0) is False  # no such descriptor: EBADF
