"""Unpacking archives and decompressing files, confined and bounded (jupyter_staging.formats.archives).

Every archive is built in the test from the shipped light curves (``../shared/data``, read only) or from
hand-made members; refusals are checked for their code and for leaving every folder as it was.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists, JobInterrupted, UnsafeArchive
from jupyter_staging.formats.archives import (
    Extracted,
    archive_kind,
    compressed_kind,
    decompress,
    decompressed_name,
    unpack,
)
from jupyter_staging.safety.control import JobControl
from tests.helpers.data import KEPLER, TESS, sha256

MB = 1024 * 1024
GB = 1024 * MB
#: A limit no test reaches unless it tests the limit, bytes.
NO_LIMIT = 100 * GB


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (files, folders, links, not followed), relative and sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty destination folder; archives are built in ``tmp_path / "in"``."""
    (tmp_path / "in").mkdir()
    folder = tmp_path / "dest"
    folder.mkdir()
    return folder


def regular(name: str, data: bytes = b"light curve\n") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    fast = {"w:gz": {"compresslevel": 1}, "w:bz2": {"compresslevel": 1}, "w:xz": {"preset": 0}}.get(mode, {})
    with tarfile.open(path, mode, **fast) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    info.external_attr = mode << 16
    return info


def patch_zip_central(path: Path, name: str, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of ``name``'s central directory record (APPNOTE 4.3.12) in place."""
    blob = bytearray(path.read_bytes())
    start = blob.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", blob, start + 28)[0]
        if blob[start + 46 : start + 46 + name_len].decode() == name:
            struct.pack_into(fmt, blob, start + offset, value)
            path.write_bytes(bytes(blob))
            return
        start = blob.index(b"PK\x01\x02", start + 46)


def gz_of_zeros(total: int) -> bytes:
    """A multi-member gzip stream (RFC 1952 2.2) of ``total`` zero bytes, built without compressing them
    all: ~1 kB per MiB, so 1 GB of zeros is a ~1 MB file."""
    one = gzip.compress(bytes(MB), compresslevel=9)
    return one * (total // MB)


def tar_gz_bomb(path: Path, expanded: int = GB) -> Path:
    """A .tar.gz holding ``ok.txt`` then ``zeros.bin``, ``expanded`` bytes of zeros (~1000:1)."""
    ok = tarfile.TarInfo("ok.txt")
    ok.size = 3
    head = ok.tobuf() + b"ok\n".ljust(512, b"\0")
    zeros = tarfile.TarInfo("zeros.bin")
    zeros.size = expanded
    parts = gzip.compress(head + zeros.tobuf()) + gz_of_zeros(expanded) + gzip.compress(bytes(1024))
    path.write_bytes(parts)
    return path


def assert_refused(
    archive: Path, dest: Path, code: str, max_bytes: int = NO_LIMIT, max_ratio: float = 100.0
) -> UnsafeArchive:
    """``unpack`` refuses ``archive`` with ``code`` and no folder around ``dest`` changes."""
    root = dest.parent
    before = tree(root)
    with pytest.raises(UnsafeArchive) as refused:
        unpack(archive, dest, max_bytes=max_bytes, max_ratio=max_ratio)
    assert refused.value.code == code, refused.value.message
    assert refused.value.status == 400
    assert list(dest.iterdir()) == []
    assert tree(root) == before
    return refused.value


# -- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("bulk.zip", "zip"),
        ("BULK.ZIP", "zip"),
        ("mast.tar", "tar"),
        ("mast.tar.gz", "tar.gz"),
        ("mast.TGZ", "tar.gz"),
        ("mast.tar.bz2", "tar.bz2"),
        ("mast.tar.xz", "tar.xz"),
        ("kplr.fits.gz", None),
        ("kplr.fits", None),
        (".zip", None),
    ],
)
def test_archive_kind_by_name(name: str, kind: str | None) -> None:
    assert archive_kind(name) == kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("kplr.fits.gz", "gz"),
        ("table.csv.BZ2", "bz2"),
        ("cube.fits.xz", "xz"),
        ("mast.tar.gz", None),
        ("mast.tgz", None),
        ("mast.tar.xz", None),
        ("kplr.fits", None),
        ("kplr.fits.fz", None),
        (".gz", None),
    ],
)
def test_compressed_kind_by_name(name: str, kind: str | None) -> None:
    assert compressed_kind(name) == kind


def test_decompressed_name_strips_the_suffix() -> None:
    assert decompressed_name("kplr.fits.gz") == "kplr.fits"
    assert decompressed_name("Table.CSV.BZ2") == "Table.CSV"
    assert decompressed_name("cube.xz") == "cube"
    with pytest.raises(ValueError):
        decompressed_name("mast.tar.gz")


# -- unpacking ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def light_curves_tgz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, Path]]]:
    """A .tar.gz of 100 FITS light curves: the Kepler and TESS files under 100 names."""
    folder = tmp_path_factory.mktemp("light-curves")
    names = [(f"lightcurves/lc_{i:03d}.fits", KEPLER if i % 2 else TESS) for i in range(100)]
    archive = folder / "bulk.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        for name, source in names:
            tf.add(source, arcname=name)
    return archive, names


def test_tar_gz_of_100_light_curves_unpacks_to_100_verified_files(light_curves_tgz, dest: Path) -> None:
    archive, names = light_curves_tgz
    digests = {KEPLER: sha256(KEPLER), TESS: sha256(TESS)}

    files = unpack(archive, dest, max_bytes=NO_LIMIT)

    assert [f.name for f in files] == [name for name, _ in names]
    for extracted, (name, source) in zip(files, names, strict=True):
        assert extracted == Extracted(name, source.stat().st_size, digests[source])
        assert sha256(dest / name) == digests[source]
    assert sorted(p.name for p in (dest / "lightcurves").iterdir()) == sorted(
        n.split("/")[1] for n, _ in names
    )
    assert not list(dest.rglob("*.part"))


ROUND_TRIP_MEMBERS = [
    ("kepler/kplr.fits", KEPLER.read_bytes()),
    ("tess.fits", TESS.read_bytes()),
    ("cube.zarr/.zattrs", b'{"a Zarr store\'s metadata is data": true}\n'),
    ("sub/manifest.json", b'{"only the top-level manifest.json is reserved": true}\n'),
]
#: Members not extracted: a hidden part, as a folder copy leaves out (a job publishes no hidden name).
HIDDEN_MEMBERS = [
    (".notes", b"hidden\n"),
    (".git/config", b"[core]\n\tfsmonitor = touch owned\n"),
    ("__MACOSX/._tess.fits", b"resource fork\n"),
    ("cube.zarr/.zattrs.bak", b"{}\n"),
]


def build_round_trip(path: Path) -> Path:
    if path.name.endswith(".zip"):
        members: list[tuple[zipfile.ZipInfo | str, bytes]] = [("empty/", b"")]
        return make_zip(path, members + list(ROUND_TRIP_MEMBERS) + HIDDEN_MEMBERS)
    mode = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}[str(archive_kind(path.name))]
    empty = tarfile.TarInfo("empty")
    empty.type = tarfile.DIRTYPE
    listed = [regular(n, d) for n, d in ROUND_TRIP_MEMBERS + HIDDEN_MEMBERS]
    return make_tar(path, [(empty, None)] + listed, mode)


@pytest.mark.parametrize("name", ["bulk.zip", "bulk.tar", "bulk.tgz", "bulk.tar.bz2", "bulk.tar.xz"])
def test_round_trip(name: str, dest: Path) -> None:
    archive = build_round_trip(dest.parent / "in" / name)

    files = unpack(archive, dest, max_bytes=NO_LIMIT)

    assert files == [Extracted(n, len(d), sha256(d)) for n, d in ROUND_TRIP_MEMBERS]
    for member, data in ROUND_TRIP_MEMBERS:
        assert (dest / member).read_bytes() == data
    assert (dest / "empty").is_dir()
    assert not list(dest.rglob("*.part"))
    for member, _ in HIDDEN_MEMBERS:
        assert not (dest / member).exists()
    assert not (dest / ".git").exists()


def test_unpack_creates_the_folder_and_counts_no_source_bytes(dest: Path) -> None:
    archive = build_round_trip(dest.parent / "in" / "bulk.zip")
    counted: list[int] = []
    logged: list[tuple[str, str]] = []
    control = JobControl(on_bytes=counted.append, log=lambda level, msg: logged.append((level, msg)))

    files = unpack(archive, dest / "new" / "folder", max_bytes=NO_LIMIT, control=control)

    assert len(files) == len(ROUND_TRIP_MEMBERS)
    assert counted == []
    assert [level for level, _ in logged] == ["info", "info"] and "unpacked 4 files" in logged[0][1]
    assert logged[1][1] == (
        "4 hidden member(s) of bulk.zip not extracted: "
        "'.notes', '.git/config', '__MACOSX/._tess.fits' and 1 more"
    )


def test_exactly_max_bytes_is_allowed_one_byte_less_is_refused(dest: Path) -> None:
    archive = build_round_trip(dest.parent / "in" / "bulk.zip")
    total = sum(len(d) for _, d in ROUND_TRIP_MEMBERS)

    assert_refused(archive, dest, "archive_too_large", max_bytes=total - 1)
    assert len(unpack(archive, dest, max_bytes=total)) == len(ROUND_TRIP_MEMBERS)


def test_a_hidden_tar_member_still_counts_as_its_bytes_are_read(dest: Path) -> None:
    """A hidden member is not extracted, but a tar stream is decompressed through it to reach the next one
    (in the scan and again in the extraction): a 64 kB .tar.gz whose ``.git/pack`` expands to 64 MB (a
    .tar.bz2 of 2.7 kB expanding to 2 GB held a worker 5 s, uncancellable) is a bomb like any other, and
    over ``max_bytes``. A zip's hidden members are never read: the same in a zip is unpacked."""
    pad = tarfile.TarInfo(".git/pack")
    pad.size = 64 * MB
    ok = tarfile.TarInfo("ok.txt")
    ok.size = 3
    tail = ok.tobuf() + b"ok\n".ljust(512, b"\0") + bytes(1024)
    archive = dest.parent / "in" / "padded.tar.gz"
    archive.parent.mkdir(exist_ok=True)
    archive.write_bytes(gzip.compress(pad.tobuf()) + gz_of_zeros(pad.size) + gzip.compress(tail))

    assert_refused(archive, dest, "archive_bomb")
    assert_refused(archive, dest, "archive_too_large", max_bytes=10 * MB, max_ratio=10_000)

    zipped = dest.parent / "in" / "padded.zip"
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(".git/pack", bytes(64 * MB))
        zf.writestr("ok.txt", b"ok\n")
    assert [f.name for f in unpack(zipped, dest, max_bytes=10 * MB)] == ["ok.txt"]


# -- refusals: nothing written anywhere ---------------------------------------------------------------------

TarMember = tuple[tarfile.TarInfo, bytes | None]


@pytest.mark.parametrize(
    ("member", "code"),
    [
        (lambda root: regular("../evil"), "unsafe_archive_path"),
        (lambda root: regular(str(root / "abs.txt")), "unsafe_archive_path"),
        (lambda root: regular("/abs"), "unsafe_archive_path"),
        (lambda root: regular("a/../../x"), "unsafe_archive_path"),
        (lambda root: regular("a/../b"), "unsafe_archive_path"),
        (lambda root: regular("..\\evil"), "unsafe_archive_path"),
        (lambda root: regular("manifest.json"), "unsafe_archive_path"),
        (lambda root: regular("./MANIFEST.json"), "unsafe_archive_path"),
        (lambda root: regular("kplr.fits.part"), "unsafe_archive_path"),
        (lambda root: regular("ok.txt"), "unsafe_archive_path"),  # the same name twice
        (lambda root: regular("ok.txt/inner"), "unsafe_archive_path"),  # a file used as a folder
        (lambda root: special("etc", tarfile.SYMTYPE, "/etc"), "unsafe_archive_link"),
        (lambda root: special("up", tarfile.SYMTYPE, "../.."), "unsafe_archive_link"),
        (lambda root: special("inside", tarfile.SYMTYPE, "ok.txt"), "unsafe_archive_link"),
        (lambda root: special("hard", tarfile.LNKTYPE, "ok.txt"), "unsafe_archive_link"),
        (lambda root: special("passwd", tarfile.LNKTYPE, "/etc/passwd"), "unsafe_archive_link"),
        (lambda root: special("fifo", tarfile.FIFOTYPE), "unsafe_archive_device"),
        (lambda root: special("null", tarfile.CHRTYPE), "unsafe_archive_device"),
        (lambda root: special("disk", tarfile.BLKTYPE), "unsafe_archive_device"),
    ],
    ids=[
        "dotdot",
        "absolute-into-tmp",
        "absolute",
        "dotdot-after-folder",
        "dotdot-staying-inside",
        "backslash-dotdot",
        "top-level-manifest",
        "top-level-manifest-any-case",
        "part-suffix",
        "duplicate",
        "file-as-folder",
        "symlink-to-etc",
        "symlink-up",
        "symlink-inside",
        "hardlink",
        "hardlink-to-etc-passwd",
        "fifo",
        "char-device",
        "block-device",
    ],
)
def test_tar_member_is_refused_and_nothing_is_written(
    member: Callable[[Path], TarMember], code: str, dest: Path
) -> None:
    archive = make_tar(dest.parent / "in" / "bad.tar.gz", [regular("ok.txt"), member(dest.parent)])

    assert_refused(archive, dest, code)

    assert not (dest.parent / "abs.txt").exists() and not Path("/abs").exists()


def test_tar_with_every_issue_5_threat_is_refused(dest: Path) -> None:
    members = [
        regular("ok.txt"),
        regular("../evil"),
        regular("/abs"),
        special("etc", tarfile.SYMTYPE, "/etc"),
    ]
    archive = make_tar(dest.parent / "in" / "threats.tar.gz", members)

    assert_refused(archive, dest, "unsafe_archive_path")
    assert not (dest.parent / "evil").exists()


@pytest.mark.parametrize(
    ("member", "code"),
    [
        (lambda root: ("..\\evil", b"x"), "unsafe_archive_path"),
        (lambda root: ("sub\\..\\..\\evil", b"x"), "unsafe_archive_path"),
        (lambda root: (str(root / "abs.txt"), b"x"), "unsafe_archive_path"),
        (lambda root: ("C:/Windows/evil", b"x"), "unsafe_archive_path"),
        (lambda root: ("ok.txt", b"again"), "unsafe_archive_path"),
        (lambda root: ("ok.txt/inner", b"x"), "unsafe_archive_path"),
        (lambda root: (zip_info("etc", stat.S_IFLNK | 0o777), b"/etc"), "unsafe_archive_link"),
        (lambda root: (zip_info("inside", stat.S_IFLNK | 0o777), b"ok.txt"), "unsafe_archive_link"),
        (lambda root: (zip_info("fifo", stat.S_IFIFO | 0o644), b""), "unsafe_archive_device"),
        (lambda root: (zip_info("null", stat.S_IFCHR | 0o644), b""), "unsafe_archive_device"),
    ],
    ids=[
        "backslash-dotdot",
        "backslash-dotdot-after-folder",
        "absolute",
        "drive-letter",
        "duplicate",
        "file-as-folder",
        "symlink-to-etc",
        "symlink-inside",
        "fifo",
        "char-device",
    ],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_member_is_refused_and_nothing_is_written(
    member: Callable[[Path], tuple[zipfile.ZipInfo | str, bytes]], code: str, dest: Path
) -> None:
    archive = make_zip(dest.parent / "in" / "bad.zip", [("ok.txt", b"ok\n"), member(dest.parent)])

    assert_refused(archive, dest, code)


def test_tar_member_expanding_to_1_gb_is_refused_before_its_bytes_are_read(dest: Path) -> None:
    archive = tar_gz_bomb(dest.parent / "in" / "bomb.tar.gz")
    assert archive.stat().st_size < 2 * MB

    error = assert_refused(archive, dest, "archive_too_large", max_bytes=100 * MB)
    assert "declares more than 104857600 bytes" in error.message  # refused from the header, not the data
    assert_refused(archive, dest, "archive_bomb")  # 1 GB from ~1 MB: over 100:1
    assert_refused(archive, dest, "archive_bomb", max_ratio=500.0)


def test_small_very_compressible_file_is_not_a_bomb(dest: Path) -> None:
    archive = make_zip(dest.parent / "in" / "sparse.zip", [("mask.bin", bytes(MB))])
    assert archive.stat().st_size * 100 < MB  # over 100:1, but below RATIO_FLOOR_BYTES

    assert unpack(archive, dest, max_bytes=NO_LIMIT) == [Extracted("mask.bin", MB, sha256(bytes(MB)))]


def test_zip_whose_declared_size_lies_low_is_refused_and_what_was_written_is_removed(dest: Path) -> None:
    archive = make_zip(dest.parent / "in" / "liar.zip", [("ok.txt", b"ok\n"), ("big.bin", bytes(200_000))])
    patch_zip_central(archive, "big.bin", 24, "<I", 1000)  # uncompressed size: 1000 bytes, not 200 000

    assert_refused(archive, dest, "archive_corrupt")


def test_zip_whose_declared_size_lies_high_is_refused_before_writing(dest: Path) -> None:
    archive = make_zip(dest.parent / "in" / "liar.zip", [("ok.txt", b"ok\n"), ("big.bin", bytes(200_000))])
    patch_zip_central(archive, "big.bin", 24, "<I", GB)

    assert_refused(archive, dest, "archive_bomb")
    assert_refused(archive, dest, "archive_too_large", max_bytes=100 * MB)


def test_encrypted_zip_member_is_refused(dest: Path) -> None:
    archive = make_zip(dest.parent / "in" / "secret.zip", [("ok.txt", b"ok\n"), ("secret.txt", b"x")])
    patch_zip_central(archive, "secret.txt", 8, "<H", 0x1)  # general purpose flag bit 0: encrypted

    assert_refused(archive, dest, "archive_unsupported")


@pytest.mark.parametrize("name", ["broken.tar.gz", "broken.zip", "broken.tar"])
def test_damaged_archive_is_refused(name: str, dest: Path) -> None:
    built = build_round_trip(dest.parent / "in" / name.replace("broken", "whole"))
    archive = dest.parent / "in" / name
    archive.write_bytes(built.read_bytes()[: built.stat().st_size // 2])
    built.unlink()

    assert_refused(archive, dest, "archive_corrupt")


def test_unknown_archive_name_is_refused(dest: Path) -> None:
    archive = dest.parent / "in" / "bulk.rar"
    archive.write_bytes(b"Rar!\x1a\x07\x00")

    assert_refused(archive, dest, "archive_unsupported")


@pytest.mark.parametrize("name", ["bulk.tar.gz", "bulk.zip"])
def test_existing_file_is_never_overwritten(name: str, dest: Path) -> None:
    (dest / "tess.fits").write_bytes(b"earlier output")
    archive = build_round_trip(dest.parent / "in" / name)

    with pytest.raises(DestinationExists):
        unpack(archive, dest, max_bytes=NO_LIMIT)

    assert tree(dest) == ["tess.fits"]
    assert (dest / "tess.fits").read_bytes() == b"earlier output"


def test_link_already_in_the_destination_is_not_followed(dest: Path) -> None:
    elsewhere = dest.parent / "elsewhere"
    elsewhere.mkdir()
    (dest / "kepler").symlink_to(elsewhere)
    archive = build_round_trip(dest.parent / "in" / "bulk.tar.gz")

    with pytest.raises(UnsafeArchive) as refused:
        unpack(archive, dest, max_bytes=NO_LIMIT)

    assert refused.value.code == "unsafe_archive_link"
    assert list(elsewhere.iterdir()) == []
    assert tree(dest) == ["kepler"]


class InterruptAfter(JobControl):
    """A control whose job is cancelled after ``checks`` calls of :meth:`check`."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks

    def check(self) -> None:
        self.left -= 1
        if self.left < 0:
            self.interrupt("cancelled")
        super().check()


def test_cancel_while_extracting_removes_what_was_written(dest: Path) -> None:
    archive = build_round_trip(dest.parent / "in" / "bulk.tar.gz")
    scan_checks = len(ROUND_TRIP_MEMBERS) + len(HIDDEN_MEMBERS) + 1  # one per member, the empty folder too

    with pytest.raises(JobInterrupted):
        unpack(archive, dest, max_bytes=NO_LIMIT, control=InterruptAfter(scan_checks + 4))

    assert tree(dest) == []


# -- decompressing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)]
)
def test_decompress_round_trip(suffix: str, compress: Callable[[bytes], bytes], dest: Path) -> None:
    source = dest.parent / "in" / f"{KEPLER.name}{suffix}"
    source.write_bytes(compress(KEPLER.read_bytes()))
    out = dest / decompressed_name(source.name)

    extracted = decompress(source, out, max_bytes=NO_LIMIT)

    assert extracted == Extracted(KEPLER.name, KEPLER.stat().st_size, sha256(KEPLER))
    assert sha256(out) == sha256(KEPLER)
    assert tree(dest) == [KEPLER.name]


@pytest.mark.parametrize(
    ("max_bytes", "max_ratio", "code"),
    [(8 * MB, 100.0, "archive_too_large"), (NO_LIMIT, 4.0, "archive_bomb")],
)
def test_decompress_stops_on_real_bytes_and_removes_its_output(
    max_bytes: int, max_ratio: float, code: str, dest: Path
) -> None:
    source = dest.parent / "in" / "zeros.bin.gz"
    source.write_bytes(gz_of_zeros(GB))  # declares nothing trustworthy: only real bytes can trip

    with pytest.raises(UnsafeArchive) as refused:
        decompress(source, dest / "zeros.bin", max_bytes=max_bytes, max_ratio=max_ratio)

    assert refused.value.code == code
    assert tree(dest) == []


def test_decompress_damaged_file_is_refused(dest: Path) -> None:
    whole = gzip.compress(KEPLER.read_bytes())
    source = dest.parent / "in" / "kplr.fits.gz"
    source.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(UnsafeArchive) as refused:
        decompress(source, dest / "kplr.fits", max_bytes=NO_LIMIT)

    assert refused.value.code == "archive_corrupt"
    assert tree(dest) == []


def test_decompress_never_overwrites(dest: Path) -> None:
    source = dest.parent / "in" / "kplr.fits.gz"
    source.write_bytes(gzip.compress(b"new bytes"))
    (dest / "kplr.fits").write_bytes(b"earlier output")

    with pytest.raises(DestinationExists):
        decompress(source, dest / "kplr.fits", max_bytes=NO_LIMIT)

    assert (dest / "kplr.fits").read_bytes() == b"earlier output"
    assert tree(dest) == ["kplr.fits"]


def test_decompress_of_a_tarball_or_plain_file_is_refused(dest: Path) -> None:
    source = build_round_trip(dest.parent / "in" / "bulk.tgz")

    with pytest.raises(UnsafeArchive) as refused:
        decompress(source, dest / "bulk.tar", max_bytes=NO_LIMIT)

    assert refused.value.code == "archive_unsupported"
    assert tree(dest) == []


def test_a_folder_made_by_another_archive_while_this_one_looks_is_taken_not_refused(tmp_path):
    """Manifest entries unpack at once and share the job's scratch folder: one made it between this one's
    two looks at it (a folder? anything there?), and the second took it for a link (``unsafe_archive_link``,
    seen once in CI). A single look per folder: a folder made meanwhile is taken as it is."""
    from jupyter_staging.formats.archives import _Writer

    root = tmp_path / "root"
    root.mkdir()
    shared = root / "scratch"
    writer = _Writer(root / "scratch" / "expand-1", root)
    looked = writer.fs.lstat

    def another_archive_makes_it(path):
        seen = looked(path)
        if path == shared and seen is None:
            shared.mkdir()  # the other entry, right after this look
        return seen

    writer.fs.lstat = another_archive_makes_it  # type: ignore[method-assign]
    writer.folder(root / "scratch" / "expand-1" / "bulk")
    assert (root / "scratch" / "expand-1" / "bulk").is_dir()
