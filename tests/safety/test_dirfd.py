"""Descriptor-based file operations: symlinks planted below the root are refused, never followed."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists, DestinationUnavailable, PathNotAllowed
from jupyter_staging.safety import dirfd
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.dirfd import (
    components,
    create_file,
    folder_fd,
    open_existing,
    open_folder,
    open_root,
    read_file_at,
    rename_noreplace_at,
    set_aside_at,
    unlink_at,
)
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.publishing import publish_at


@pytest.fixture
def layout(tmp_path):
    """``root/`` (the confinement root) and ``outside/`` beside it, with one file to protect."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("keep me")
    return root, outside


def snapshot(folder: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = (
            f"-> {os.readlink(path)}"
            if path.is_symlink()
            else (path.read_bytes() if path.is_file() else "dir")
        )
    return out


@pytest.mark.parametrize("rel", ["..", "a/../b", "/etc", "a/\x00b", "../outside"])
def test_components_refuse_escapes(rel):
    with pytest.raises(PathNotAllowed):
        components(rel)


def test_components_of_plain_paths():
    assert components("") == []
    assert components(".") == []
    assert components("a/./b/") == ["a", "b"]


def test_open_folder_creates_missing_folders(layout):
    root, _ = layout
    with folder_fd(root, "a/b/c", create=True) as fd:
        assert os.path.samestat(os.fstat(fd), os.stat(root / "a/b/c"))


def test_open_folder_refuses_a_symlinked_component(layout):
    root, outside = layout
    (root / "a").mkdir()
    (root / "a" / "link").symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(PathNotAllowed) as info:
        open_folder(root, "a/link/deeper", create=True)
    assert info.value.code == "path_not_allowed"
    assert snapshot(outside) == before


def test_open_folder_refuses_a_file_component(layout):
    root, _ = layout
    (root / "file").write_text("x")
    with pytest.raises(PathNotAllowed):
        open_folder(root, "file/x", create=True)


def test_missing_folder_without_create(layout):
    root, _ = layout
    with pytest.raises(FileNotFoundError):
        open_folder(root, "nope")


def test_create_file_never_follows_a_planted_symlink(layout):
    root, outside = layout
    (root / "x.part").symlink_to(outside / "secret.txt")
    with folder_fd(root, "") as fd, pytest.raises(FileExistsError):
        create_file(fd, "x.part")
    assert (outside / "secret.txt").read_text() == "keep me"


def test_open_existing_refuses_symlinks_and_folders(layout):
    root, outside = layout
    (root / "link").symlink_to(outside / "secret.txt")
    (root / "folder").mkdir()
    with folder_fd(root, "") as fd:
        with pytest.raises(PathNotAllowed):
            open_existing(fd, "link")
        with pytest.raises(PathNotAllowed):
            open_existing(fd, "folder")
        assert open_existing(fd, "missing") is None


def test_publish_at_never_replaces(layout):
    root, outside = layout
    (root / "f.part").write_text("new")
    (root / "f").symlink_to(outside / "secret.txt")
    with folder_fd(root, "") as fd:
        with pytest.raises(DestinationExists):
            publish_at(fd, "f.part", fd, "f")
        unlink_at(fd, "f")
        publish_at(fd, "f.part", fd, "f")
    assert (root / "f").read_text() == "new"
    assert not (root / "f.part").exists()
    assert (outside / "secret.txt").read_text() == "keep me"


def test_unlink_at_removes_the_link_not_its_target(layout):
    root, outside = layout
    (root / "link").symlink_to(outside / "secret.txt")
    (root / "folder").mkdir()
    with folder_fd(root, "") as fd:
        assert unlink_at(fd, "link")
        assert not unlink_at(fd, "link")
        assert not unlink_at(fd, "folder")
    assert (outside / "secret.txt").read_text() == "keep me"
    assert (root / "folder").is_dir()


def test_set_aside_at_moves_a_symlink_itself(layout):
    root, outside = layout
    (root / "a.part").symlink_to(outside / "secret.txt")
    with folder_fd(root, "") as fd:
        assert set_aside_at(fd, "a.part", "abcd1234") == "_a.part.set-aside-abcd1234"
    assert (root / "_a.part.set-aside-abcd1234").is_symlink()
    assert not (root / "a.part").is_symlink()
    assert (outside / "secret.txt").read_text() == "keep me"


def _refused_with(code: int):
    """A stand-in for ``renameat2`` that fails with ``code``, as a kernel, file system or seccomp filter
    without the call or its flag does (none of those can be had here)."""

    def renameat2(*args: object) -> int:
        ctypes.set_errno(code)
        return -1

    return renameat2


@pytest.mark.parametrize(
    "way", ["renameat2", "no-renameat2", "EINVAL", "ENOSYS", "EPERM"], ids=lambda way: str(way)
)
def test_rename_noreplace_at_never_replaces_what_has_the_new_name(layout, monkeypatch, way):
    """Whatever has the new name stays (a file, a symlink, one that points nowhere, a folder); the entry
    to rename then keeps its name. Without ``renameat2`` (a C library without it) or its flag (``EINVAL``
    from a file system, ``ENOSYS`` from an old kernel, ``EPERM`` from a seccomp filter) the name is
    checked first, then renamed."""
    root, outside = layout
    assert dirfd._renameat2 is not None  # Linux with glibc: the atomic call is what runs
    if way == "no-renameat2":
        monkeypatch.setattr(dirfd, "_renameat2", None)
    elif way != "renameat2":
        monkeypatch.setattr(dirfd, "_renameat2", _refused_with(getattr(errno, way)))
    (root / "file").write_bytes(b"kept")
    (root / "link").symlink_to(outside / "secret.txt")
    (root / "dangling").symlink_to(outside / "missing")
    (root / "folder").mkdir()
    (root / "a.part").write_bytes(b"in the way")
    with folder_fd(root, "") as fd:
        for taken in ("file", "link", "dangling", "folder"):
            assert not rename_noreplace_at(fd, "a.part", taken)
        assert rename_noreplace_at(fd, "a.part", "_a.part.set-aside-x")
        with pytest.raises(FileNotFoundError):
            rename_noreplace_at(fd, "a.part", "elsewhere")
    assert (root / "file").read_bytes() == b"kept"
    assert os.readlink(root / "link") == str(outside / "secret.txt")
    assert os.readlink(root / "dangling") == str(outside / "missing")
    assert (root / "folder").is_dir() and not any((root / "folder").iterdir())
    assert (root / "_a.part.set-aside-x").read_bytes() == b"in the way"
    assert (outside / "secret.txt").read_text() == "keep me"


def test_rename_noreplace_at_raises_other_errors_of_renameat2(layout, monkeypatch):
    root, _ = layout
    (root / "a.part").write_bytes(b"x")
    monkeypatch.setattr(dirfd, "_renameat2", _refused_with(errno.EACCES))
    with folder_fd(root, "") as fd, pytest.raises(PermissionError):
        rename_noreplace_at(fd, "a.part", "b")
    assert (root / "a.part").read_bytes() == b"x" and not (root / "b").exists()


def test_set_aside_at_keeps_a_file_set_aside_before(layout):
    root, _ = layout
    (root / "_a.part.set-aside-abcd1234").write_bytes(b"first")
    (root / "_a.part.set-aside-abcd1234-2").symlink_to("nowhere")
    (root / "a.part").write_bytes(b"second")
    with folder_fd(root, "") as fd:
        assert set_aside_at(fd, "a.part", "abcd1234") == "_a.part.set-aside-abcd1234-3"
    assert (root / "_a.part.set-aside-abcd1234").read_bytes() == b"first"
    assert os.readlink(root / "_a.part.set-aside-abcd1234-2") == "nowhere"
    assert (root / "_a.part.set-aside-abcd1234-3").read_bytes() == b"second"
    assert not (root / "a.part").exists()


def test_read_file_at_refuses_symlinks(layout):
    root, outside = layout
    (root / "m.json").symlink_to(outside / "secret.txt")
    with folder_fd(root, "") as fd, pytest.raises(PathNotAllowed):
        read_file_at(fd, "m.json")


@pytest.mark.parametrize("resume", [False, True])
def test_partfile_with_root_replaces_a_planted_part_symlink(layout, resume):
    root, outside = layout
    dest = root / "dest"
    dest.mkdir()
    (dest / "data.bin.part").symlink_to(outside / "secret.txt")
    before = snapshot(outside)
    out = PartFile(dest / "data.bin", resume=resume, root=root)
    assert out.offset == 0
    out.write(b"payload")
    size, _ = out.commit(7)
    assert size == 7
    assert (dest / "data.bin").read_bytes() == b"payload"
    assert not (dest / "data.bin").is_symlink()
    assert snapshot(outside) == before


def test_partfile_with_root_resumes_its_own_part(layout):
    root, _ = layout
    out = PartFile(root / "d" / "f.bin", root=root)
    out.write(b"abc")
    out.close()
    again = PartFile(root / "d" / "f.bin", resume=True, root=root)
    assert again.offset == 3
    again.write(b"def")
    again.commit(6, checksums={"md5": "e80b5017098950fc58aad83c8c14978e"})
    assert (root / "d" / "f.bin").read_bytes() == b"abcdef"


def test_partfile_with_root_refuses_a_symlinked_folder(layout):
    root, outside = layout
    (root / "dest").symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(PathNotAllowed):
        PartFile(root / "dest" / "f.bin", root=root)
    assert snapshot(outside) == before


def test_partfile_with_root_refuses_a_folder_swapped_before_publishing(layout):
    root, outside = layout
    dest = root / "dest"
    out = PartFile(dest / "f.bin", root=root)
    out.write(b"bytes")
    dest.rename(root / "moved")
    dest.symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(PathNotAllowed) as info:
        out.commit(5)
    assert info.value.code == "path_not_allowed"
    assert snapshot(outside) == before
    assert list((root / "moved").iterdir()) == []


def test_partfile_with_root_never_overwrites(layout):
    root, _ = layout
    (root / "f.bin").write_text("old")
    with pytest.raises(DestinationExists):
        PartFile(root / "f.bin", root=root)
    assert (root / "f.bin").read_text() == "old"


def test_partfile_with_root_refuses_a_file_outside_the_root(layout):
    root, outside = layout
    with pytest.raises(PathNotAllowed):
        PartFile(outside / "f.bin", root=root)


def test_a_missing_root_is_unavailable_and_a_file_as_root_is_not_allowed(tmp_path: Path):
    with pytest.raises(DestinationUnavailable, match="No such file") as info:
        open_root(tmp_path / "gone")
    assert info.value.code == "destination_unavailable" and info.value.status == 503
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(PathNotAllowed, match="is not a folder"):
        open_root(tmp_path / "file")


def test_a_missing_root_is_only_missing_to_a_look_or_a_clean_up(tmp_path: Path):
    """Without ``writing`` (an existence check, a removal, a sweep) a missing root is a missing folder,
    ``FileNotFoundError``, which those callers take as "nothing there"; a writer's folder fails with
    ``destination_unavailable``."""
    gone = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        open_root(gone, writing=False)
    with pytest.raises(FileNotFoundError):
        folder_fd(gone, "a").__enter__()
    with pytest.raises(DestinationUnavailable):
        folder_fd(gone, "a", create=True).__enter__()
    files = Confined(gone)
    assert not files.exists(gone / "a" / "b.fits")
    with pytest.raises(DestinationUnavailable):
        files.makedirs(gone / "a")
    assert not gone.exists()


@pytest.mark.parametrize(
    ("code", "unavailable"),
    [(errno.ESTALE, True), (errno.ENOTCONN, True), (errno.EACCES, True), (errno.EIO, False)],
)
def test_a_root_on_a_stale_or_disconnected_mount_is_unavailable(
    tmp_path: Path, monkeypatch, code: int, unavailable: bool
):
    """A stale NFS handle (ESTALE) or a FUSE mount whose daemon died (ENOTCONN) cannot be made here: the
    root's ``open`` is replaced by one failing with that errno. Any other error stays an ``OSError``."""
    real_open = os.open

    def failing(path, flags, *args, **kwargs):
        if Path(path) == tmp_path:
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    if unavailable:
        with pytest.raises(DestinationUnavailable, match=os.strerror(code)):
            open_root(tmp_path)
    else:
        with pytest.raises(OSError) as info:
            open_root(tmp_path)
        assert info.value.errno == code and not isinstance(info.value, DestinationUnavailable)


def test_a_root_gone_while_a_job_writes_is_unavailable_to_every_writer(tmp_path: Path):
    """A root moved away after a writer started: writers into folders that exist (no ``create``) fail with
    ``destination_unavailable`` too (an unpack's ``mkdir``, a folder swap's ``rename``, a Dask range task,
    a part's publication), never a bare ``FileNotFoundError`` (an ``internal_error``); nothing is
    published and the part is gone."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    out = PartFile(root / "a" / "f.bin", root=root)
    out.write(b"bytes")
    root.rename(tmp_path / "moved")
    with pytest.raises(DestinationUnavailable):
        out.commit(5)
    assert sorted(p.name for p in (tmp_path / "moved" / "a").iterdir()) == []
    files = Confined(root)
    with pytest.raises(DestinationUnavailable):
        files.mkdir(root / "a" / "b")
    with pytest.raises(DestinationUnavailable):
        files.rename(root / "a" / "x", root / "a" / "y")
    with pytest.raises(DestinationUnavailable):
        folder_fd(root, "a", writing=True).__enter__()
    assert not files.exists(root / "a")
    assert not root.exists()
