"""Listing a local folder (issue 12): one ``os.scandir`` walk with each entry's ``lstat``, in the same order
and with the same choices as the ``os.walk`` + per-file ``resolve_source`` listing it replaced — hidden
entries skipped, folder symlinks never followed, file symlinks kept only when they resolve inside the
source roots (the folder itself without roots), special files skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_staging.safety.paths import resolve_source
from jupyter_staging.sources.local import LocalSource


def walk_listing(folder: Path, roots: list[str] | None) -> list[tuple[str, str, int]]:
    """The listing as the earlier implementation computed it: ``(name, locator, size)`` per file."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for fname in sorted(files):
            if fname.startswith("."):
                continue
            full = Path(here) / fname
            try:
                resolved = resolve_source(str(full), roots or [str(folder)])
            except Exception:  # noqa: S112 - what the old listing did
                continue
            if resolved.is_file():
                found.append((full.relative_to(folder).as_posix(), str(resolved), resolved.stat().st_size))
    return found


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A source folder ``area/src`` with nested folders, hidden entries, links of every kind and a FIFO;
    ``area/other`` (inside ``area``, outside ``src``) and ``outside`` hold link targets."""
    area, outside = tmp_path / "area", tmp_path / "outside"
    src, other = area / "src", area / "other"
    for folder in (src / "b" / "deep" / "er", src / "a", src / "Z", src / ".hidden", other, outside):
        folder.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(["top.fits", "B.txt", "a/1.fits", "a/2.fits", "b/deep/x", "b/deep/er/y", "Z/z"]):
        (src / rel).write_bytes(b"d" * (i + 1))
    (src / ".secret").write_text("hidden file")
    (src / ".hidden" / "in-hidden.fits").write_text("hidden folder")
    (src / "é-unicode.fits").write_text("unicode name")
    (other / "shared.fits").write_text("inside the area, outside the folder")
    (outside / "passwd").write_text("outside every root")
    (src / "a" / "to-top").symlink_to(src / "top.fits")  # inside the folder: kept
    (src / "a" / "relative").symlink_to("../b/deep/x")  # relative, inside: kept
    (src / "to-other").symlink_to(other / "shared.fits")  # kept only when roots include area
    (src / "escape").symlink_to(outside / "passwd")  # never kept
    (src / "dangling").symlink_to(src / "missing")
    (src / "dir-link").symlink_to(outside)  # a folder symlink: never followed
    (src / "b" / "loop").symlink_to(src / "b")
    os.mkfifo(src / "b" / "fifo")
    return src, area


@pytest.mark.parametrize("with_roots", [False, True])
def test_listing_matches_the_walk_it_replaced(tree, with_roots: bool):
    src, area = tree
    roots = [str(area)] if with_roots else None
    items = LocalSource(str(src), source_roots=roots).list_items()
    assert [(i.name, i.locator, i.size) for i in items] == walk_listing(src, roots)
    names = [i.name for i in items]
    assert "a/to-top" in names and "a/relative" in names
    assert ("to-other" in names) is with_roots
    assert not {"escape", "dangling", "b/fifo", ".secret"} & set(names)
    assert not any(n.startswith(("dir-link/", "b/loop/", ".hidden/")) for n in names)


def test_items_carry_the_files_fingerprint(tree):
    src, _ = tree
    items = {i.name: i for i in LocalSource(str(src)).list_items()}
    st = os.stat(src / "b" / "deep" / "er" / "y")
    y = items["b/deep/er/y"]
    assert y.locator == str(src / "b" / "deep" / "er" / "y")
    assert y.validator == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    assert y.content_type is None and items["top.fits"].content_type == "image/fits"
    # A link's item describes its target (the file that is read), under the link's name.
    assert items["a/to-top"].locator == str(src / "top.fits")
    assert items["a/to-top"].validator["inode"] == os.stat(src / "top.fits").st_ino


def test_a_deep_tree_is_walked_without_recursion(tmp_path: Path):
    src = tmp_path / "src"
    deep = str(src)
    os.mkdir(deep)
    for _ in range(1100):  # deeper than Python's recursion limit (made one level at a time)
        deep += "/d"
        os.mkdir(deep)
    Path(deep, "leaf.fits").write_text("leaf")
    (src / "first.fits").write_text("first")
    try:
        names = [i.name for i in LocalSource(str(src)).list_items()]
        assert names == ["first.fits", "/".join(["d"] * 1100) + "/leaf.fits"]
    finally:
        # Removed one level at a time: shutil.rmtree (pytest's clean-up of old temporary folders) recurses
        # once per level and would hit the recursion limit.
        os.unlink(os.path.join(deep, "leaf.fits"))
        while deep != str(src):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


@pytest.mark.parametrize(
    "name",
    [
        "kplr008462852-2011073133259_llc.fits",
        "sector-01/tess2018206045859-s0001-0000000025155310-0120-s_lc.fits",
        "spitzer.vot.xml",
        "table.ecsv",
        "LIGHTCURVE.CSV",
        "cube.fits.gz",
        "archive.tar.bz2",
        ".hidden.csv",
        "folder.with.dots/README",
        "no-suffix",
        "odd:name.json",
    ],
)
def test_the_content_type_is_the_one_mimetypes_gives_for_the_name(name: str):
    """Looked up once per chain of suffixes (a folder of 20,000 light curves asks once), the type is the
    one ``mimetypes.guess_type`` gives for the whole name."""
    import mimetypes

    from jupyter_staging.sources.base import content_type_of

    assert content_type_of(name) == mimetypes.guess_type(name)[0]


def test_a_zarr_stores_metadata_files_are_listed_and_other_hidden_entries_are_not(tmp_path: Path):
    """A Zarr v2 store on shared storage cannot be read without its ``.zgroup``, ``.zarray``, ``.zattrs``
    and ``.zmetadata`` files: they are listed as the store's chunks are. Every other hidden entry, and a
    folder named like one of them, is still skipped."""
    src = tmp_path / "cube.zarr"
    for folder in (src / "flux", src / ".git", src / ".zattrs-not", src / "sub" / ".zarray"):
        folder.mkdir(parents=True)
    wanted = [".zattrs", ".zgroup", ".zmetadata", "flux/.zarray", "flux/.zattrs", "flux/0.0", "flux/0.1"]
    for rel in wanted:
        (src / rel).write_text(rel)
    for rel in (".git/config", ".bashrc", ".zattrs-not/x", "sub/.zarray/x", "flux/.zarray.bak"):
        (src / rel).write_text("not staged")
    items = LocalSource(str(src)).list_items()
    assert sorted(i.name for i in items) == sorted(wanted)
    assert all(Path(i.locator).read_text() == i.name for i in items)
