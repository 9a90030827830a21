"""engine/links.SourceDigests on real files: small files read on the linking thread with the kernel's
readahead keep a bounded number of descriptors open whatever happens to the files or to the order in which
they are asked for, and a FIFO put at a source path never blocks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from jupyter_staging.engine import links
from jupyter_staging.engine.links import SourceDigests
from jupyter_staging.sources.base import SourceItem
from jupyter_staging.sources.local import fingerprint


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def items_in(folder: Path, count: int, size: int = 4096) -> tuple[list[SourceItem], dict[str, str]]:
    folder.mkdir()
    items, sums = [], {}
    for i in range(count):
        path = folder / f"lc-{i:05d}.fits"
        data = i.to_bytes(4, "big") * (size // 4)
        path.write_bytes(data)
        sums[path.name] = hashlib.sha256(data).hexdigest()
        items.append(
            SourceItem(name=path.name, locator=str(path), size=size, validator=fingerprint(path.stat()))
        )
    return items, sums


def digests() -> SourceDigests:
    return SourceDigests(lambda item: links.read_digest(item.locator), lambda item: None, workers=2)


def test_small_files_are_read_in_turn_with_a_bounded_number_open(tmp_path: Path):
    items, sums = items_in(tmp_path / "src", 300)
    before = open_fds()
    with digests() as d:
        d.start(items)
        for item in items:
            assert d.result(item, item.validator) == sums[item.name]
            assert open_fds() - before <= links.READ_AHEAD_FILES + 2
    assert open_fds() == before


def test_files_never_asked_for_are_closed_not_kept(tmp_path: Path):
    """A resumed run skips the files the run before it linked: their descriptors do not pile up."""
    items, sums = items_in(tmp_path / "src", 400)
    before = open_fds()
    with digests() as d:
        d.start(items)
        for item in items[::7]:  # six of every seven are never asked for
            assert d.result(item, item.validator) == sums[item.name]
            assert open_fds() - before <= links.READ_AHEAD_FILES + 2
    assert open_fds() == before


def test_a_file_that_cannot_be_opened_ahead_does_not_open_the_rest(tmp_path: Path):
    items, sums = items_in(tmp_path / "src", 300)
    broken = items[40]
    before = open_fds()
    with digests() as d:
        d.start(items)
        Path(broken.locator).unlink()
        Path(broken.locator).symlink_to(items[0].locator)  # refused: never followed
        for item in items:
            got = d.result(item, item.validator)
            assert got == (None if item is broken else sums[item.name])
            assert open_fds() - before <= links.READ_AHEAD_FILES + 2
    assert open_fds() == before


def test_a_fifo_put_at_a_source_path_never_blocks(tmp_path: Path):
    items, sums = items_in(tmp_path / "src", 50)
    fifo = items[3]
    with digests() as d:
        Path(fifo.locator).unlink()
        os.mkfifo(fifo.locator)
        d.start(items)
        for item in items:
            assert d.result(item, item.validator) == (None if item is fifo else sums[item.name])
    with pytest.raises(OSError):
        links.read_digest(fifo.locator)


def test_a_name_given_twice_is_read_once_and_nothing_leaks(tmp_path: Path):
    items, sums = items_in(tmp_path / "src", 10)
    before = open_fds()
    with digests() as d:
        d.start(items)
        d.start(items)
        for item in items:
            assert d.result(item, item.validator) == sums[item.name]
    assert open_fds() == before
