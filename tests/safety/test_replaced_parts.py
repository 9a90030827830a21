"""A ``.part`` name replaced in the user's folder while the file was written (by another file, a symlink,
a hard link to someone else's file) is never published in place of the file written: the very file open
is linked under its final name (``safety.publishing.publish_open_at``) while it still has a name, else nothing
is published; the replacement is left where the user put it, and a part that fails is removed only while
its name still names it.

The replacement is made for real, at the point a user's process could make it (after the last write, before
the commit); only the refusal of the ``/proc/self/fd`` link, which needs a system without ``/proc`` or a
security module, is caused by replacing ``os.link`` for that one path.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from jupyter_staging.errors import PathNotAllowed, VerificationFailed
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.ownership import mark_ranges_part
from jupyter_staging.safety.partfile import PartFile, part_path
from jupyter_staging.safety.publishing import publish_open_at, unlink_if_names

DATA = b"light curve\n" * 5000


def written(tmp_path: Path) -> tuple[PartFile, Path]:
    """A named part file of ``DATA`` for ``out/lc.fits`` below ``tmp_path``, by descriptor, not committed."""
    final = tmp_path / "out" / "lc.fits"
    part = PartFile(final, folders=FolderCache(tmp_path))
    part.write(DATA)
    return part, final


def replace_part(final: Path, how: str, tmp_path: Path) -> bytes:
    """Replace ``final``'s ``.part`` name as a user's process could; returns what the name then holds."""
    planted = part_path(final)
    other = tmp_path / "other.dat"
    other.write_bytes(b"someone else's bytes")
    os.unlink(planted)
    if how == "file":
        os.rename(other, planted)
    elif how == "symlink":
        os.symlink(other, planted)
    else:  # a hard link to another file
        os.link(other, planted)
    return b"someone else's bytes"


def refuse_fd_links(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Make ``linkat`` of ``/proc/self/fd/N`` fail with ``code`` (no ``/proc``, a security module); other
    links are made."""
    real_link = os.link

    def no_fd_link(src, dst, *args, **kwargs):
        if str(src).startswith("/proc/self/fd/"):
            raise OSError(code, os.strerror(code))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_fd_link)


@pytest.mark.parametrize("how", ["file", "symlink", "hardlink"])
def test_what_the_part_name_holds_by_then_is_never_published(tmp_path: Path, how: str):
    """The file written lost its only name with the replacement, and Linux links no such file again
    (``ENOENT``): nothing is published, the job's failure says why, the user's file stays."""
    part, final = written(tmp_path)
    planted = replace_part(final, how, tmp_path)
    with pytest.raises(PathNotAllowed, match="replaced while it was written"):
        part.commit()
    assert not os.path.lexists(final)
    assert part_path(final).read_bytes() == planted  # the user's, left where the user put it


def test_a_part_with_another_name_too_is_published_itself(tmp_path: Path):
    """A second name given to the part (a hard link the user made) keeps the file linkable: the file
    written is published, not what the ``.part`` name holds."""
    part, final = written(tmp_path)
    os.link(part_path(final), tmp_path / "kept-by-the-user")
    planted = replace_part(final, "file", tmp_path)
    part.commit()
    assert final.read_bytes() == DATA and not final.is_symlink()
    assert part.sha256.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert part_path(final).read_bytes() == planted


def test_without_the_fd_link_a_replaced_part_publishes_nothing_and_is_left(tmp_path: Path, monkeypatch):
    part, final = written(tmp_path)
    planted = replace_part(final, "file", tmp_path)
    refuse_fd_links(monkeypatch, errno.EPERM)
    with pytest.raises(PathNotAllowed, match="replaced while it was written"):
        part.commit()
    assert not final.exists()
    assert part_path(final).read_bytes() == planted  # not removed with the failed part


def test_without_the_fd_link_an_untouched_part_is_published_by_name(tmp_path: Path, monkeypatch):
    part, final = written(tmp_path)
    refuse_fd_links(monkeypatch, errno.ENOENT)
    part.commit()
    assert final.read_bytes() == DATA and not part_path(final).exists()


def test_publish_open_at_drops_the_part_name_and_never_replaces(tmp_path: Path):
    (tmp_path / "a.part").write_bytes(b"abc")
    (tmp_path / "taken").write_bytes(b"user")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(tmp_path / "a.part", os.O_RDONLY)
    try:
        from jupyter_staging.errors import DestinationExists

        with pytest.raises(DestinationExists):
            publish_open_at(fd, dir_fd, "a.part", dir_fd, "taken")
        assert (tmp_path / "taken").read_bytes() == b"user" and (tmp_path / "a.part").exists()
        publish_open_at(fd, dir_fd, "a.part", dir_fd, "a")
        assert (tmp_path / "a").read_bytes() == b"abc" and not (tmp_path / "a.part").exists()
    finally:
        os.close(fd)
        os.close(dir_fd)


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK])
def test_a_file_system_without_hard_links_still_publishes_by_name(tmp_path: Path, monkeypatch, code: int):
    """Where no hard link can be made (``linkat`` answers ENOTSUP, ENOSYS or EMLINK for every name), the
    part is checked to be the file written and renamed, as before the descriptor link."""
    part, final = written(tmp_path)

    def no_links(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    size, sha = part.commit()
    assert (size, sha) == (len(DATA), hashlib.sha256(DATA).hexdigest())
    assert final.read_bytes() == DATA and not part_path(final).exists()


def replaced_at_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, final: Path, when: str) -> bytes:
    """Without the descriptor link, replace the ``.part`` name in the instant ``when`` ("before" or "after")
    the by-name ``linkat`` of the fallback: the check that the name names the file written has passed by
    then, so the link itself is the one place left to act (the instant is injected around ``os.link``; a
    user's process cannot be made to win this race on demand)."""
    refuse_fd_links(monkeypatch, errno.EPERM)
    linking = os.link

    def link(src, dst, *args, **kwargs):
        if src == part_path(final).name and when == "before":
            replace_part(final, "file", tmp_path)
        linking(src, dst, *args, **kwargs)
        if src == part_path(final).name and when == "after":
            replace_part(final, "file", tmp_path)

    monkeypatch.setattr(os, "link", link)
    return b"someone else's bytes"


def test_without_the_fd_link_a_part_replaced_just_before_the_link_is_not_published(
    tmp_path: Path, monkeypatch
):
    """The by-name link then names the user's file: the final name made for it is taken back, nothing is
    published, and the user's file stays at the ``.part`` name."""
    part, final = written(tmp_path)
    planted = replaced_at_link(monkeypatch, tmp_path, final, "before")
    with pytest.raises(PathNotAllowed, match="replaced while it was published"):
        part.commit()
    assert not os.path.lexists(final)
    assert part_path(final).read_bytes() == planted


def test_without_the_fd_link_a_part_replaced_just_after_the_link_is_kept(tmp_path: Path, monkeypatch):
    """The file written is published; the ``.part`` name, which now holds the user's file, is not
    removed."""
    part, final = written(tmp_path)
    planted = replaced_at_link(monkeypatch, tmp_path, final, "after")
    assert part.commit() == (len(DATA), hashlib.sha256(DATA).hexdigest())
    assert final.read_bytes() == DATA
    assert part_path(final).read_bytes() == planted


def test_unlink_if_names_removes_only_the_file_open(tmp_path: Path):
    """The one check every cleanup and publication uses: the name is removed while it names the open file;
    a file, symlink or nothing at that name is left as it is."""
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    ours = os.open(tmp_path / "a.part", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        assert unlink_if_names(folder, "a.part", ours) is True
        assert not (tmp_path / "a.part").exists()
        assert unlink_if_names(folder, "a.part", ours) is False  # nothing at the name
        (tmp_path / "a.part").write_bytes(b"the user's")
        assert unlink_if_names(folder, "a.part", ours) is False
        assert (tmp_path / "a.part").read_bytes() == b"the user's"
        (tmp_path / "a.part").unlink()
        os.symlink(f"/proc/self/fd/{ours}", tmp_path / "a.part")  # a symlink to it is not it
        assert unlink_if_names(folder, "a.part", ours) is False
        assert (tmp_path / "a.part").is_symlink()
    finally:
        os.close(ours)
        os.close(folder)


def test_dask_range_tasks_write_into_and_publish_only_the_part_the_server_made(tmp_path: Path):
    """A file fetched as Dask range tasks is made at its size by the server and marked with a random token
    (``ownership.mark_ranges_part``); each ``fetch_range`` task and the last one (``finish_ranges``) open its
    ``.part`` by name. A file the user put at that name in between (a regular file of the same size: no
    symlink to refuse) is not written into, not published and not removed. The server's part, filled as
    the tasks fill it, is published (a real cluster's run: tests/engine/test_dask_*)."""
    from jupyter_staging.engine.tasks import TaskContext, fetch_range, finish_ranges
    from jupyter_staging.sources.registry import open_source

    data = os.urandom(2 * 1024**2 + 7)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lc.bin").write_bytes(data)
    roots = [str(tmp_path / "src")]
    source = open_source(str(tmp_path / "src" / "lc.bin"), source_roots=roots)
    (item,) = source.list_items()
    (tmp_path / "out").mkdir()
    final = tmp_path / "out" / "lc.bin"

    def made_by_the_server() -> str:
        with open(part_path(final), "wb") as out:
            out.truncate(len(data))
            token = mark_ranges_part(out.fileno())
        assert token is not None, "the test's file system keeps no user attributes"
        return token

    token = made_by_the_server()
    theirs = b"u" * len(data)
    (tmp_path / "theirs").write_bytes(theirs)
    os.replace(tmp_path / "theirs", part_path(final))  # the user's file, same size, at the part's name
    ctx = TaskContext("job-1", str(tmp_path))
    with pytest.raises(PathNotAllowed, match="replaced"):
        fetch_range(ctx, source.uri, roots, item, "out/lc.bin", 0, len(data), token=token)
    with pytest.raises(PathNotAllowed, match="replaced"):
        finish_ranges(ctx, "out/lc.bin", len(data), {}, token=token)
    assert part_path(final).read_bytes() == theirs and not final.exists()
    os.unlink(part_path(final))
    token = made_by_the_server()
    with open(part_path(final), "r+b") as out:  # filled as the tasks fill it (they need a cluster's client)
        out.write(data)
    assert finish_ranges(ctx, "out/lc.bin", len(data), {}, token=token) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert final.read_bytes() == data and not part_path(final).exists()


def _ranges_part(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    """``out/lc.bin``'s part as the server makes it for range tasks, filled with ``data``; its token."""
    (tmp_path / "out").mkdir(exist_ok=True)
    final = tmp_path / "out" / "lc.bin"
    with open(part_path(final), "wb") as out:
        out.write(data)
        token = mark_ranges_part(out.fileno())
    assert token is not None, "the test's file system keeps no user attributes"
    return final, token


def test_finish_ranges_that_cannot_verify_removes_only_the_servers_part(tmp_path: Path):
    """A worker that cannot compute the checksum asked for, with nothing stated to stand in, throws the
    assembled bytes away: the server's part, never a file the user put at its name."""
    from jupyter_staging.engine.tasks import TaskContext, finish_ranges

    ctx = TaskContext("job-1", str(tmp_path))
    final, token = _ranges_part(tmp_path, b"x" * 1000)
    with pytest.raises(VerificationFailed):
        finish_ranges(ctx, "out/lc.bin", 1000, {"sha512x": "00"}, {}, token=token)
    assert not part_path(final).exists() and not final.exists()
    final, token = _ranges_part(tmp_path, b"x" * 1000)
    (tmp_path / "theirs").write_bytes(b"u" * 1000)
    os.replace(tmp_path / "theirs", part_path(final))
    with pytest.raises(PathNotAllowed, match="replaced"):
        finish_ranges(ctx, "out/lc.bin", 1000, {"sha512x": "00"}, {}, token=token)
    assert part_path(final).read_bytes() == b"u" * 1000 and not final.exists()


def test_range_tasks_refuse_a_fifo_at_the_parts_name_without_waiting(tmp_path: Path):
    """A FIFO put at the part's name is refused at once (opened non-blocking, not a regular file): the
    task never waits in ``open`` for a writer or reader that will not come, where a cancel cannot reach it.
    Each call runs in a thread that must end within seconds."""
    import threading

    from jupyter_staging.engine.tasks import TaskContext, fetch_range, finish_ranges
    from jupyter_staging.sources.registry import open_source

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lc.bin").write_bytes(b"y" * 1000)
    roots = [str(tmp_path / "src")]
    source = open_source(str(tmp_path / "src" / "lc.bin"), source_roots=roots)
    (item,) = source.list_items()
    final, token = _ranges_part(tmp_path, b"\0" * 1000)
    os.unlink(part_path(final))
    os.mkfifo(part_path(final))
    ctx = TaskContext("job-1", str(tmp_path))
    calls = {
        "fetch_range": lambda: fetch_range(ctx, source.uri, roots, item, "out/lc.bin", 0, 1000, token=token),
        "finish_ranges": lambda: finish_ranges(ctx, "out/lc.bin", 1000, {}, token=token),
    }
    for what, call in calls.items():
        raised: list[BaseException] = []

        def run(call=call, raised=raised) -> None:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                raised.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), f"{what} waits on the FIFO"
        assert len(raised) == 1 and isinstance(raised[0], PathNotAllowed), (what, raised)
    assert part_path(final).is_fifo() and not final.exists()
