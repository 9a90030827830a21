"""A re-run never loses the user's work: a staged file the user changed since it was staged, and a file of
the user's whose name the new output takes, are kept under a set-aside name (``_<name>.set-aside-<id8>``)
when the new output is swapped in, and the job's log says so. Unchanged output is replaced as before; a link
job's output (whose size and time follow its source) is never taken for the user's.

:func:`swap_in` is run directly on folders in ``tmp_path`` (both the rename beside the folder and the merge
into a mount point's hidden folder, which takes only the paths); the engine tests run a real
:class:`StagingManager` on copies of the shipped mission data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jupyter_staging.engine.swap import changed_since_staged, kept_lines, recorded_outputs, swap_in
from jupyter_staging.safety.dirfd import NAME_MAX_BYTES, set_aside_name
from tests.engine.test_rerun import failed_on_the_users_file, log_text, run
from tests.helpers.data import KEPLER, SPITZER, sha256

SUFFIX = "0123abcd"


def recorded(path: Path) -> dict[str, int]:
    """The manifest object a job records for a file it staged: size in bytes and ``mtime_ns``."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def old_output(folder: Path) -> dict[str, dict[str, int]]:
    """An old output of three files in ``folder`` (``a.txt``, ``b.txt``, ``sub/c.txt``), as staged."""
    (folder / "sub").mkdir(parents=True)
    for rel in ("a.txt", "b.txt", "sub/c.txt"):
        (folder / rel).write_bytes(b"staged " + rel.encode())
    return {rel: recorded(folder / rel) for rel in ("a.txt", "b.txt", "sub/c.txt")}


def new_output(folder: Path, names: list[str]) -> None:
    """The new output (the same bytes prefixed ``new``) of ``names`` in ``folder``."""
    for rel in names:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"new " + rel.encode())


def files(folder: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_changed_since_staged_compares_size_and_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "x.fits"
    path.write_bytes(b"12345")
    obj = recorded(path)
    assert not changed_since_staged(obj, path.lstat())
    os.utime(path, ns=(obj["mtime_ns"], obj["mtime_ns"] + 10**9))  # edited in place, the same size
    assert changed_since_staged(obj, path.lstat())
    assert not changed_since_staged({}, path.lstat())  # nothing recorded: a link job's output
    assert not changed_since_staged(obj, None)  # gone
    assert not changed_since_staged(obj, tmp_path.lstat())  # a folder


@pytest.mark.parametrize("mount_point", [False, True], ids=["renamed", "merged"])
def test_changed_staged_files_and_a_users_file_in_the_way_are_kept(tmp_path: Path, mount_point: bool) -> None:
    """``a.txt`` was edited in place (same size), ``sub/c.txt`` appended to, and the user saved a file
    of their own as ``d.txt``, a name the new output takes; ``b.txt`` is untouched, and the new output
    lacks it. After the swap the new output is whole under its names, the three files of the user's are
    kept under set-aside names (``Swapped.set_aside``), the untouched ``b.txt`` is gone."""
    root = tmp_path / "root"
    final = root / "out"
    staged = old_output(final)
    with open(final / "a.txt", "r+b") as fh:
        fh.write(b"EDITED")
    os.utime(final / "a.txt", ns=(0, staged["a.txt"]["mtime_ns"] + 10**9))
    with open(final / "sub" / "c.txt", "ab") as fh:
        fh.write(b" and the user's notes")
    (final / "d.txt").write_bytes(b"the user's d")
    into = "out/.staging-1" if mount_point else ".swap"
    new_output(root / into, ["a.txt", "sub/c.txt", "d.txt"])
    (root / into / "manifest.json").write_text("{}")

    done = swap_in(
        root,
        "out",
        into,
        staged_before=staged,
        staged_now={"a.txt", "sub/c.txt", "d.txt"},
        aside_name=".replaced-1",
        suffix=SUFFIX,
    )

    aside = {rel: (Path(rel).parent / set_aside_name(Path(rel).name, SUFFIX)).as_posix() for rel in staged}
    aside["d.txt"] = set_aside_name("d.txt", SUFFIX)
    assert done.set_aside == {rel: aside[rel] for rel in ("a.txt", "sub/c.txt", "d.txt")}
    assert done.moved == []
    assert files(final) == {
        "a.txt": b"new a.txt",
        "d.txt": b"new d.txt",
        "sub/c.txt": b"new sub/c.txt",
        aside["a.txt"]: b"EDITED a.txt",
        aside["d.txt"]: b"the user's d",
        aside["sub/c.txt"]: b"staged sub/c.txt and the user's notes",
        "manifest.json": b"{}",
    }
    assert sorted(p.name for p in root.iterdir()) == ["out"]  # no folder left aside


def test_a_changed_file_the_new_output_lacks_is_kept_too(tmp_path: Path) -> None:
    """The merge into a mount point removes the old files the new output lacks, unless the user changed
    them: ``b.txt`` (changed) is set aside in place, ``sub/c.txt`` (untouched) is removed."""
    root = tmp_path / "root"
    final = root / "mp"
    staged = old_output(final)
    (final / "b.txt").write_bytes(b"rewritten by the user, longer than before")
    new_output(final / ".staging-1", ["a.txt"])
    done = swap_in(
        root,
        "mp",
        "mp/.staging-1",
        staged_before=staged,
        staged_now={"a.txt"},
        aside_name=".replaced-1",
        suffix=SUFFIX,
    )
    assert done.set_aside == {"b.txt": set_aside_name("b.txt", SUFFIX)}
    assert files(final) == {
        "a.txt": b"new a.txt",
        set_aside_name("b.txt", SUFFIX): b"rewritten by the user, longer than before",
    }


def test_a_merge_run_again_after_a_crash_still_keeps_a_changed_file(tmp_path: Path) -> None:
    """A merge into a mount point removes the old manifest first; the server dies after the first new file
    moved in. Run again with what the runner recorded before it started (``resume["swap"]["before"]``),
    the merge still sets aside the file the user edited in place (same size) and has not reached yet."""
    root = tmp_path / "root"
    final = root / "mp"
    staged = old_output(final)
    with open(final / "b.txt", "r+b") as fh:
        fh.write(b"EDITED")
    os.utime(final / "b.txt", ns=(0, staged["b.txt"]["mtime_ns"] + 10**9))
    new_output(final / ".staging-1", ["a.txt", "b.txt", "sub/c.txt"])
    os.rename(final / ".staging-1" / "a.txt", final / "a.txt")  # moved before the crash
    done = swap_in(
        root,
        "mp",
        "mp/.staging-1",
        staged_before=staged,
        staged_now={"a.txt", "b.txt", "sub/c.txt"},
        aside_name=".replaced-1",
        suffix=SUFFIX,
    )
    assert done.set_aside == {"b.txt": set_aside_name("b.txt", SUFFIX)}
    assert files(final)[set_aside_name("b.txt", SUFFIX)] == b"EDITED b.txt"
    assert files(final)["a.txt"] == b"new a.txt" and files(final)["b.txt"] == b"new b.txt"


def test_what_cannot_be_moved_is_left_and_reported_never_lost(tmp_path: Path) -> None:
    """The user edited ``sub/c.txt``, and the new output has a file named ``sub``: the edited file cannot
    go into the new folder, so it stays in the old one (kept, renamed ``aside_name``) and ``Swapped.left``
    names it. Two long names whose set-aside names are the same once cut to 255 bytes are both kept: the
    second takes ``-2``, chosen in the folder it moves to."""
    root = tmp_path / "root"
    final = root / "out"
    (final / "sub").mkdir(parents=True)
    long1, long2 = "x" * 240 + "-1.fits", "x" * 240 + "-2.fits"
    staged = {}
    for rel in ("sub/c.txt", long1, long2):
        (final / rel).write_bytes(b"staged")
        staged[rel] = recorded(final / rel)
        with open(final / rel, "ab") as fh:
            fh.write(b" + the user's work")
    new_output(root / ".swap", [long1, long2])
    (root / ".swap" / "sub").write_bytes(b"new: sub is a file now")
    done = swap_in(
        root,
        "out",
        ".swap",
        staged_before=staged,
        staged_now={"sub", long1, long2},
        aside_name=".replaced-1",
        suffix=SUFFIX,
    )
    assert done.left == ["sub/c.txt"]
    assert (root / ".replaced-1" / "sub" / "c.txt").read_bytes() == b"staged + the user's work"
    kept = sorted(done.set_aside.values())
    assert set_aside_name(long1, SUFFIX) == set_aside_name(long2, SUFFIX)  # the same once cut
    assert kept == sorted([set_aside_name(long1, SUFFIX), set_aside_name(long1, SUFFIX, 2)])
    assert all(len(os.fsencode(name)) <= NAME_MAX_BYTES for name in kept)
    assert [(final / name).read_bytes() for name in kept] == [b"staged + the user's work"] * 2
    lines = kept_lines(done, set(staged), ".replaced-1")
    assert [level for level, _ in lines] == ["warning", "warning"]
    assert "2 entries under another name (2 changed since staged, 0 of yours" in lines[0][1]
    assert "1 entry could not be moved into the new output and stay in .replaced-1: sub/c.txt" in lines[1][1]


def test_a_link_jobs_output_counts_as_changed_only_when_it_is_no_longer_the_link(tmp_path: Path) -> None:
    """A hard link is the source's inode (its size and time follow the source): changed only when it is
    another file now (the user saved over it); a symlink only when it is no link any more."""
    source = tmp_path / "source.fits"
    source.write_bytes(b"the archive's bytes")
    os.link(source, tmp_path / "linked.fits")
    (tmp_path / "pointed.fits").symlink_to(source)
    manifest = {
        "method": "hardlink",
        "objects": [{"path": "linked.fits", "size": 19, "fingerprint": {"inode": source.stat().st_ino}}],
    }
    hard = recorded_outputs(manifest)["linked.fits"]
    soft = recorded_outputs({"method": "symlink", "objects": [{"path": "pointed.fits"}]})["pointed.fits"]
    with open(source, "ab") as fh:
        fh.write(b", appended by the archive")  # the source changed: the link with it
    assert not changed_since_staged(hard, (tmp_path / "linked.fits").lstat())
    assert not changed_since_staged(soft, (tmp_path / "pointed.fits").lstat())
    for name in ("linked.fits", "pointed.fits"):
        (tmp_path / "mine").write_bytes(b"the user's version")
        os.replace(tmp_path / "mine", tmp_path / name)
    assert changed_since_staged(hard, (tmp_path / "linked.fits").lstat())
    assert changed_since_staged(soft, (tmp_path / "pointed.fits").lstat())


# -- through the engine -----------------------------------------------------------------------------


def test_a_rerun_restores_an_edited_fits_file_and_keeps_the_users_version(manager, archive):
    """The notebook edits a staged FITS header in place (astropy ``mode="update"``: same size) and is run
    again: the output is the source's copy again (up to date afterwards), and the edited file is kept
    beside it as ``_<name>.set-aside-<id8>``, which the job's log names. Before, the edit was lost."""
    from astropy.io import fits

    body = {"source": str(archive / KEPLER.name), "destination": "k"}
    first, _ = run(manager, **body)
    staged = manager.root_dir / "k" / KEPLER.name
    with fits.open(staged, mode="update") as hdul:
        hdul[0].header["OBSERVER"] = "someone"
    edited_digest = sha256(staged)
    second, created = run(manager, **body)
    assert created and second["state"] == "succeeded", second["error"]
    assert sha256(staged) == sha256(KEPLER)
    kept = staged.with_name(set_aside_name(KEPLER.name, second["id"][:8]))
    assert sha256(kept) == edited_digest and fits.getheader(kept)["OBSERVER"] == "someone"
    assert f"{KEPLER.name} as {kept.name}" in log_text(manager, second["id"])
    manifest = json.loads((manager.root_dir / "k" / "manifest.json").read_text())
    assert [o["path"] for o in manifest["objects"]] == [KEPLER.name]  # the kept file is the user's
    third, created = run(manager, **body)
    assert not created and third["up_to_date"] and third["id"] == second["id"]


def test_a_table_folder_still_reads_whole_with_a_changed_part_kept(manager, archive):
    """A Parquet part of a converted table rewritten by the user: the re-run converts the table again,
    keeps the user's part as ``_part-…set-aside-…`` (which dataset readers skip: names starting ``_``), and
    the folder reads as the table's rows, once."""
    body = {"source": str(archive / KEPLER.name), "destination": "t", "convert": {"chunk_rows": 1000}}
    first, _ = run(manager, **body)
    folder = manager.root_dir / "t" / f"{KEPLER.stem}.parquet"
    rows = pq.read_table(folder).num_rows
    part = sorted(folder.glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(part).slice(0, 10), part)
    second, created = run(manager, **body)
    assert created and second["state"] == "succeeded", second["error"]
    assert (folder / set_aside_name(part.name, second["id"][:8])).exists()
    assert pq.read_table(folder).num_rows == rows


def test_a_hardlink_jobs_output_is_replaced_never_kept_when_its_source_changed(manager, archive):
    """A hard link is the source file itself: when the source is rewritten in place, the old output
    "changed" with it. The re-run links the new version; nothing is kept under a set-aside name (it would
    be a second link to the shared file)."""
    source = archive / SPITZER.name
    body = {"source": str(source), "destination": "h", "method": "hardlink"}
    first, _ = run(manager, **body)
    assert first["state"] == "succeeded", first["error"]
    with open(source, "ab") as fh:
        fh.write(b"<!-- appended -->\n")
    second, created = run(manager, **body)
    assert created and second["state"] == "succeeded", second["error"]
    assert sorted(p.name for p in (manager.root_dir / "h").iterdir()) == ["manifest.json", SPITZER.name]
    assert "set-aside" not in log_text(manager, second["id"])


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_a_link_jobs_output_the_user_saved_over_is_kept(manager, archive, method):
    """The notebook saves its own version over a linked output (astropy ``writeto(overwrite=True)``
    removes the file first: a new file, not the source): the re-run links the source again and keeps the
    user's version as ``_<name>.set-aside-<id8>``; the source is untouched."""
    source = archive / SPITZER.name
    body = {"source": str(source), "destination": method, "method": method}
    first, _ = run(manager, **body)
    staged = manager.root_dir / method / SPITZER.name
    mine = staged.with_name("reduced.xml")
    mine.write_bytes(b"<the user's reduced version/>\n")
    os.replace(mine, staged)
    second, created = run(manager, **body)
    assert created and second["state"] == "succeeded", second["error"]
    assert sha256(staged) == sha256(SPITZER) and sha256(source) == sha256(SPITZER)
    kept = staged.with_name(set_aside_name(SPITZER.name, second["id"][:8]))
    assert kept.read_bytes() == b"<the user's reduced version/>\n" and not kept.is_symlink()


def test_a_failed_jobs_file_edited_in_place_is_kept_when_the_request_runs_again(manager, tmp_path):
    """A folder copy published a FITS file, then failed on the user's own file where its last file goes;
    the user updates the FITS header in place (same size) and runs the request again. The failed job wrote
    no manifest: its chunks' records (size and publication time, migration 0007) tell its files, so the
    edited one is kept beside the new copy as ``_<name>.set-aside-<id8>``. Before, a file of the chunk's
    size was taken for the failed job's and dropped with the old folder."""
    from astropy.io import fits

    source = tmp_path / "lcs"
    source.mkdir()
    (source / KEPLER.name).write_bytes(KEPLER.read_bytes())
    out = failed_on_the_users_file(manager, source)
    staged = out / KEPLER.name
    assert sha256(staged) == sha256(KEPLER)  # published before the failure
    with fits.open(staged, mode="update") as hdul:
        hdul[0].header["OBSERVER"] = "someone"
    edited = sha256(staged)
    again, created = run(manager, source=str(source), destination="out")
    assert created and again["state"] == "succeeded", again["error"]
    assert sha256(staged) == sha256(KEPLER)
    kept = staged.with_name(set_aside_name(KEPLER.name, again["id"][:8]))
    assert sha256(kept) == edited and fits.getheader(kept)["OBSERVER"] == "someone"
    assert (out / "zz" / set_aside_name("last.bin", again["id"][:8])).read_text() == "the user's"
    assert sorted(p.name for p in manager.root_dir.iterdir()) == ["out"]


def test_a_parquet_part_edited_at_the_same_size_is_kept_and_the_table_converted_again(manager, archive):
    """A Parquet part of a converted table changed in place at the same size (its bytes and time; the
    footer rewritten with another ``created_by``, say): the re-run converts the table again and keeps the
    user's part as ``_part-…set-aside-…``. Before, the part passed the size check for reuse, was then
    refused as changed, and the re-run failed ``transfer_failed`` ("part … disappeared"), every time."""
    body = {"source": str(archive / KEPLER.name), "destination": "t", "convert": {"chunk_rows": 1000}}
    first, _ = run(manager, **body)
    folder = manager.root_dir / "t" / f"{KEPLER.stem}.parquet"
    rows = pq.read_table(folder).num_rows
    part = sorted(folder.glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[4:8] = bytes(b ^ 0xFF for b in data[4:8])  # inside the first page: the size is the same
    with open(part, "r+b") as fh:  # in place, as an editor saving over it would not keep the inode
        fh.write(data)
    os.utime(part, ns=(0, part.stat().st_mtime_ns + 10**9))
    second, created = run(manager, **body)
    assert created and second["state"] == "succeeded", second["error"]
    kept = folder / set_aside_name(part.name, second["id"][:8])
    assert kept.read_bytes() == bytes(data)
    assert pq.read_table(folder).num_rows == rows
    third, created = run(manager, **body)
    assert not created and third["up_to_date"]


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_a_failed_link_jobs_output_is_replaced_and_one_the_user_saved_over_kept(manager, tmp_path, method):
    """A failed link job's links are its own: the corrected request replaces them without a set-aside
    copy (a symlink was taken for the user's and kept as ``_<name>.set-aside-…``), and a file the user
    saved over one (another inode, no link) is kept. The inode comes from what the failed job listed."""
    source = tmp_path / "lcs"
    source.mkdir()
    (source / KEPLER.name).write_bytes(KEPLER.read_bytes())
    (source / SPITZER.name).write_bytes(SPITZER.read_bytes())
    out = failed_on_the_users_file(manager, source, method=method)
    mine = out / "mine.tmp"
    mine.write_bytes(b"the user's reduced version\n")
    os.replace(mine, out / KEPLER.name)
    again, created = run(manager, source=str(source), destination="out", method=method)
    assert created and again["state"] == "succeeded", again["error"]
    suffix = again["id"][:8]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if "set-aside" in p.name) == [
        set_aside_name(KEPLER.name, suffix),
        f"zz/{set_aside_name('last.bin', suffix)}",
    ]
    assert (out / set_aside_name(KEPLER.name, suffix)).read_bytes() == b"the user's reduced version\n"
    assert sha256(out / KEPLER.name) == sha256(KEPLER) and sha256(out / SPITZER.name) == sha256(SPITZER)


def test_a_swap_run_again_after_its_removal_of_the_old_folder_stopped_makes_no_folder(tmp_path: Path) -> None:
    """The server died while the old folder (kept aside as ``.replaced-<id8>``) was being removed, after
    its ``sub/`` was emptied: run again, the swap finishes and does not take that emptied folder of the old
    output for an empty folder of the user's (which it makes again in the new output, as it does
    ``mine/``)."""
    root = tmp_path / "root"
    staged = old_output(root / "out")
    new_output(root / ".out.staging-1", ["a.txt"])
    (root / "out" / "mine").mkdir()
    os.rename(root / "out", root / ".replaced-1")
    os.rename(root / ".out.staging-1", root / "out")
    for rel in ("sub/c.txt", "b.txt"):  # removed before the stop, with the old folder's manifest
        (root / ".replaced-1" / rel).unlink()
    done = swap_in(
        root,
        "out",
        ".out.staging-1",
        staged_before=staged,
        staged_now={"a.txt"},
        aside_name=".replaced-1",
        suffix=SUFFIX,
    )
    assert done.moved == ["mine/"] and not done.set_aside and not done.left
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["out", "out/a.txt", "out/mine"]
