"""Confined: path-shaped operations done by descriptor never reach outside the root through a link."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from jupyter_staging.engine.swap import swap_in
from jupyter_staging.errors import DestinationExists, PathNotAllowed, UnsafeArchive
from jupyter_staging.formats.archives import decompress, unpack
from jupyter_staging.safety.confined import Confined


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (symlinks not followed)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A root (the user's area) and a sibling folder outside it holding a file that must survive."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "staging" / "run").mkdir(parents=True)
    (root / "staging" / "run" / "a.txt").write_bytes(b"a")
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"precious")
    (outside / "sub").mkdir()
    (outside / "sub" / "deep.txt").write_bytes(b"deep")
    return root, outside


def test_every_operation_refuses_a_folder_swapped_for_a_link(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    before = snapshot(outside)
    (root / "evil").symlink_to(outside, target_is_directory=True)
    fs = Confined(root)
    with pytest.raises(PathNotAllowed):
        fs.unlink(root / "evil" / "keep.txt")
    with pytest.raises(PathNotAllowed):
        fs.remove_tree(root / "evil" / "sub")
    with pytest.raises(PathNotAllowed):
        fs.rename(root / "staging" / "run" / "a.txt", root / "evil" / "a.txt")
    with pytest.raises(PathNotAllowed):
        fs.makedirs(root / "evil" / "new")
    with pytest.raises(PathNotAllowed):
        fs.rmdir(root / "evil" / "sub")
    assert snapshot(outside) == before
    assert not (outside / "new").exists() and not (outside / "a.txt").exists()
    # The link itself is what remove_tree removes, never its target.
    fs.remove_tree(root / "evil")
    assert not (root / "evil").is_symlink() and snapshot(outside) == before


def test_paths_outside_or_at_the_root_are_refused(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    fs = Confined(root)
    with pytest.raises(PathNotAllowed):
        fs.unlink(outside / "keep.txt")
    with pytest.raises(PathNotAllowed):
        fs.remove_tree(root)
    assert (outside / "keep.txt").read_bytes() == b"precious"


def test_rename_never_replaces_and_remove_tree_empties(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    fs = Confined(root)
    (root / "b.txt").write_bytes(b"b")
    with pytest.raises(DestinationExists):
        fs.rename(root / "b.txt", root / "staging" / "run" / "a.txt")
    fs.rename(root / "b.txt", root / "new" / "deeper" / "b.txt", make_parents=True)
    assert (root / "new" / "deeper" / "b.txt").read_bytes() == b"b"
    fs.remove_tree(root / "new")
    assert not (root / "new").exists()
    assert fs.exists(root / "staging" / "run" / "a.txt") and not fs.exists(root / "nothing" / "x")


def test_swap_in_refuses_a_parent_swapped_for_a_link(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    (root / "staging" / ".swap").mkdir()
    (root / "staging" / ".swap" / "a.txt").write_bytes(b"new")
    os.rename(root / "staging", root / "staging-moved")
    (root / "staging").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(PathNotAllowed):
        swap_in(
            root,
            "staging/run",
            "staging/.swap",
            staged_before={"a.txt": {}},
            staged_now={"a.txt"},
            aside_name=".aside",
            suffix="0123abcd",
        )
    assert snapshot(outside) == before


def swap_in_a_new_a_txt(root: Path) -> list[str]:
    """Swap a new output of one file, ``a.txt`` (the old output's only file too), into ``staging/run``;
    returns the user's entries moved."""
    (root / "staging" / ".swap").mkdir()
    (root / "staging" / ".swap" / "a.txt").write_bytes(b"new")
    return swap_in(
        root,
        "staging/run",
        "staging/.swap",
        staged_before={"a.txt": {}},
        staged_now={"a.txt"},
        aside_name=".aside",
        suffix="0123abcd",
    ).moved


def test_swap_in_carries_over_user_files_by_descriptor(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    run = root / "staging" / "run"
    (run / "notes").mkdir()
    (run / "notes" / "mine.txt").write_bytes(b"user's")
    (run / "linked").symlink_to(outside, target_is_directory=True)
    moved = swap_in_a_new_a_txt(root)
    assert moved == ["linked", "notes/mine.txt"]  # the user's symlink moves as a link, never followed
    assert (run / "linked").is_symlink() and os.readlink(run / "linked") == str(outside)
    assert (run / "a.txt").read_bytes() == b"new"
    assert (run / "notes" / "mine.txt").read_bytes() == b"user's"
    assert snapshot(outside) == {"keep.txt": b"precious", "sub/deep.txt": b"deep"}


def _tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (("d/x.txt", b"x" * 100), ("d/y.txt", b"y" * 100)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_unpack_into_a_folder_swapped_for_a_link_writes_nothing_outside(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    archive = _tarball(root / "bulk.tar.gz")
    (root / "scratch").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(UnsafeArchive) as err:
        unpack(archive, root / "scratch" / "expand-0", max_bytes=10**6, root=root)
    assert err.value.code == "unsafe_archive_link"
    assert snapshot(outside) == before and not (outside / "expand-0").exists()


def test_decompress_by_descriptor(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    src = root / "x.fits.gz"
    src.write_bytes(gzip.compress(b"SIMPLE" * 100))
    out = decompress(src, root / "out" / "x.fits", max_bytes=10**6, root=root)
    assert out.size == 600 and (root / "out" / "x.fits").read_bytes() == b"SIMPLE" * 100
    (root / "bad").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowed):
        decompress(src, root / "bad" / "x.fits", max_bytes=10**6, root=root)
    assert not (outside / "x.fits").exists() and not (outside / "x.fits.part").exists()


def test_conversion_parts_are_written_by_descriptor(layout: tuple[Path, Path], shared_data: Path) -> None:
    from jupyter_staging.formats.convert import convert_to_parquet

    root, outside = layout
    src = shared_data / "wright_eastmann_2014_tau_ceti.fits"
    parts = convert_to_parquet(src, root / "out" / "tau", chunk_rows=2000, root=root)
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    (root / "evil").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(PathNotAllowed):
        convert_to_parquet(src, root / "evil" / "tau", chunk_rows=2000, root=root)
    assert snapshot(outside) == before and not (outside / "tau").exists()


def test_swap_in_carries_over_a_users_part_file_and_empty_folder(layout: tuple[Path, Path]) -> None:
    """Entries of the user's that are neither files nor folders with files (an empty folder), or that look
    like a download in progress (``*.part``, a browser's): carried into the new folder, none removed with
    the old one."""
    root, _outside = layout
    run = root / "staging" / "run"
    (run / "empty").mkdir()
    (run / "catalog.csv.part").write_bytes(b"a browser's download")
    moved = swap_in_a_new_a_txt(root)
    assert sorted(moved) == ["catalog.csv.part", "empty/"]
    assert (run / "catalog.csv.part").read_bytes() == b"a browser's download" and (run / "empty").is_dir()
    assert sorted(p.name for p in (root / "staging").iterdir()) == ["run"]


def test_swap_in_gives_each_subfolder_the_access_the_user_gave_it(layout: tuple[Path, Path]) -> None:
    """The user made one subfolder of the output private (0700), shared another with a group (2750,
    group 100) and keeps a folder of their own (0750) beside them: after the swap the new folder's
    subfolders at those paths have those modes and that group, not the default 0755 of a folder the job
    made (which would open them to every user of the machine)."""
    root, _outside = layout
    run = root / "staging" / "run"
    for sub, mode in (("sector1", 0o700), ("sector2", 0o2750), ("mine", 0o750)):
        (run / sub).mkdir()
        (run / sub / "a.fits").write_bytes(b"old")
        os.chmod(run / sub, mode)
    os.chown(run / "sector2", -1, 100)
    os.chmod(run / "sector2", 0o2750)  # a chown may clear setgid
    new = root / "staging" / ".swap"
    for sub in ("sector1", "sector2"):
        (new / sub).mkdir(parents=True)
        os.chmod(new / sub, 0o755)
        (new / sub / "a.fits").write_bytes(b"new")
    swap_in(
        root,
        "staging/run",
        "staging/.swap",
        staged_before=dict.fromkeys(["sector1/a.fits", "sector2/a.fits"], {}),
        staged_now={"sector1/a.fits", "sector2/a.fits"},
        aside_name=".aside",
        suffix="0123abcd",
    )
    got = {
        sub: ((run / sub).stat().st_mode & 0o7777, (run / sub).stat().st_gid)
        for sub in os.listdir(run)
        if (run / sub).is_dir()
    }
    assert got == {"sector1": (0o700, 0), "sector2": (0o2750, 100), "mine": (0o750, 0)}
    assert (run / "sector1" / "a.fits").read_bytes() == b"new" and (
        run / "mine" / "a.fits"
    ).read_bytes() == b"old"


def test_swap_in_makes_a_private_parent_of_the_users_folders_private_again(layout: tuple[Path, Path]) -> None:
    """The user's folder ``private/`` (0700) holds only a folder ``notes/`` (0750) with a file, and the
    new output has no ``private/``: the folders made again to carry ``notes/x.txt`` over are 0700 and 0750
    again, never the default 0755 (a parent made on the way to a carried file, and never visited again)."""
    root, _outside = layout
    run = root / "staging" / "run"
    (run / "private" / "notes").mkdir(parents=True)
    (run / "private" / "notes" / "x.txt").write_text("mine")
    os.chmod(run / "private" / "notes", 0o750)
    os.chmod(run / "private", 0o700)
    moved = swap_in_a_new_a_txt(root)
    assert moved == ["private/notes/x.txt"]
    assert (run / "private").stat().st_mode & 0o7777 == 0o700
    assert (run / "private" / "notes").stat().st_mode & 0o7777 == 0o750
    assert (run / "private" / "notes" / "x.txt").read_text() == "mine"


_SWAP_AS_NOBODY = """
import json, os, sys
from pathlib import Path
from jupyter_staging.engine.swap import swap_in
root = Path(sys.argv[1])
staged = {"sector/a.fits": {}}
swap_in(root, "run", ".swap", staged_before=staged, staged_now=set(staged), aside_name=".aside", suffix="1")
seen = {p: [os.stat(root / p).st_mode & 0o7777, os.stat(root / p).st_gid] for p in ("run", "run/sector")}
print(json.dumps(seen))
"""


def test_a_swap_by_a_user_outside_the_folders_group_never_opens_it_to_another_group(tmp_path: Path) -> None:
    """A folder and its subfolder shared with one group (2770, group 100), swapped in by a server whose
    user is not in that group (``nobody``, no supplementary groups): the group cannot be given, so the new
    folders are 0700 in the server's own group, never 0770 for that other group."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the swap as another user")
    top = tmp_path / "top"
    for folder in ("run/sector", ".swap/sector"):
        (top / folder).mkdir(parents=True)
    (top / "run" / "sector" / "a.fits").write_bytes(b"old")
    (top / ".swap" / "sector" / "a.fits").write_bytes(b"new")
    for path in [top, *top.rglob("*")]:
        os.chown(path, 65534, 65534)
    for folder in ("run/sector", "run"):
        os.chown(top / folder, 65534, 100)
        os.chmod(top / folder, 0o2770)
    for parent in (tmp_path, *tmp_path.parents):
        if parent.stat().st_mode & 0o005 != 0o005:
            os.chmod(parent, parent.stat().st_mode | 0o005)  # nobody must reach the folder
    done = subprocess.run(  # noqa: S603 - fixed arguments
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            _SWAP_AS_NOBODY,
            str(top),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"run": [0o700, 65534], "run/sector": [0o700, 65534]}, seen
    assert (top / "run" / "sector" / "a.fits").read_bytes() == b"new"


def test_a_merge_into_a_mount_point_run_again_half_way_keeps_the_new_files(layout: tuple[Path, Path]) -> None:
    """``into`` inside ``rel`` (a mount point's hidden scratch folder): files move in one by one. Run
    again after a crash half-way (``a.txt`` already moved, the old manifest already gone), the merge moves
    the rest, removes only the old file the new output lacks (``b.txt``), never the new ``a.txt``, keeps
    the user's file, and puts the new manifest last."""
    root, _outside = layout
    final = root / "mp"
    (final / ".staging-1").mkdir(parents=True)
    (final / "b.txt").write_bytes(b"old b")
    (final / "notes.txt").write_bytes(b"the user's")
    (final / "a.txt").write_bytes(b"new a")  # moved before the crash
    (final / ".staging-1" / "c.txt").write_bytes(b"new c")
    (final / ".staging-1" / "manifest.json").write_text('{"job_id": "new"}')
    swap_in(
        root,
        "mp",
        "mp/.staging-1",
        staged_before={"a.txt": {}, "b.txt": {}},
        staged_now={"a.txt", "c.txt"},
        aside_name=".replaced-1",
        suffix="0123abcd",
    )
    assert {p.name: p.read_bytes() for p in final.iterdir()} == {
        "a.txt": b"new a",
        "c.txt": b"new c",
        "notes.txt": b"the user's",
        "manifest.json": b'{"job_id": "new"}',
    }
