"""A new named part file whose ``<name>.part`` is taken (``PartPlace._make_way``): what is the job's, or
holds nothing of anyone's, is removed; a file of the user's or of another job is set aside under a name of
its own, never removed, and the part's :meth:`set_aside_notice` says so for the job's log.

Every case is made for real in ``tmp_path``: the files, a symlink, a FIFO, a folder, owner tags.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.ownership import OWNER_XATTR, part_owner_prefix
from jupyter_staging.safety.partfile import PartFile, part_path

JOB = "5f0c9d1e-0000-4000-8000-000000000001"
OTHER_JOB = "0a1b2c3d-0000-4000-8000-000000000002"
DATA = b"flux,time\n" * 1000


def staged(tmp_path: Path, owner: str | None = JOB) -> tuple[PartFile, Path]:
    """``out/lc.csv`` below ``tmp_path`` written through a new named part of ``owner`` and published."""
    final = tmp_path / "out" / "lc.csv"
    part = PartFile(final, folders=FolderCache(tmp_path), owner=owner)
    part.write(DATA)
    part.commit(len(DATA))
    return part, final


def planted(tmp_path: Path, content: bytes, owner: str | None = None) -> Path:
    """``out/lc.csv.part`` holding ``content``, tagged as ``owner``'s part when given."""
    part = part_path(tmp_path / "out" / "lc.csv")
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(content)
    if owner is not None:
        os.setxattr(part, OWNER_XATTR, part_owner_prefix(owner).encode())
    return part


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("owner", [None, OTHER_JOB], ids=["untagged", "another-jobs"])
def test_a_file_not_the_jobs_is_set_aside_with_its_bytes(tmp_path: Path, owner: str | None):
    planted(tmp_path, b"the user's own notes", owner)
    part, final = staged(tmp_path)
    aside = final.parent / f"_lc.csv.part.set-aside-{JOB[:8]}"
    assert entries(final.parent) == [aside.name, "lc.csv"]
    assert aside.read_bytes() == b"the user's own notes" and final.read_bytes() == DATA
    assert part.set_aside == aside.name
    notice = part.set_aside_notice()
    assert notice is not None and aside.name in notice and "did not write" in notice


def test_a_second_file_in_the_way_keeps_the_first_one_set_aside(tmp_path: Path):
    planted(tmp_path, b"first")
    _, final = staged(tmp_path)
    final.unlink()
    planted(tmp_path, b"second")
    part, _ = staged(tmp_path)
    first = final.parent / f"_lc.csv.part.set-aside-{JOB[:8]}"
    assert first.read_bytes() == b"first"
    assert (final.parent / part.set_aside).read_bytes() == b"second" and part.set_aside == f"{first.name}-2"


@pytest.mark.parametrize("content", [b"a dead attempt's bytes", b""], ids=["the-jobs", "empty-untagged"])
def test_the_jobs_own_part_or_an_empty_untagged_one_is_removed(tmp_path: Path, content: bytes):
    planted(tmp_path, content, JOB if content else None)
    part, final = staged(tmp_path)
    assert entries(final.parent) == ["lc.csv"] and final.read_bytes() == DATA
    assert part.set_aside is None and part.set_aside_notice() is None


def test_without_an_owner_the_rule_before_the_tags_holds(tmp_path: Path):
    """Callers that tag nothing (an archive's unpacking, the manifest) cannot tell whose a part is."""
    planted(tmp_path, b"left by an earlier unpacking")
    part, final = staged(tmp_path, owner=None)
    assert entries(final.parent) == ["lc.csv"] and part.set_aside is None


def test_a_symlink_is_removed_never_its_target_and_a_fifo_never_blocks(tmp_path: Path):
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"keep me")
    (tmp_path / "out").mkdir()
    part_path(tmp_path / "out" / "lc.csv").symlink_to(target)
    part, final = staged(tmp_path)
    assert entries(final.parent) == ["lc.csv"] and target.read_bytes() == b"keep me"
    final.unlink()
    os.mkfifo(part_path(final))
    part, _ = staged(tmp_path)
    assert entries(final.parent) == ["lc.csv"] and part.set_aside is None


def test_a_folder_at_the_parts_name_is_refused_and_kept(tmp_path: Path):
    folder = part_path(tmp_path / "out" / "lc.csv")
    folder.mkdir(parents=True)
    (folder / "inside.txt").write_bytes(b"mine")
    with pytest.raises(DestinationExists, match=r"lc\.csv\.part already exists"):
        PartFile(tmp_path / "out" / "lc.csv", folders=FolderCache(tmp_path), owner=JOB)
    assert (folder / "inside.txt").read_bytes() == b"mine"
    assert entries(folder.parent) == ["lc.csv.part"]


def test_claiming_untagged_parts_removes_an_untagged_one_and_still_sets_another_jobs_aside(tmp_path: Path):
    """``claim_untagged``: the job's parts were made untagged (a job an earlier version started), so an
    untagged file at the name is its dead part; another job's tagged part is still not its to remove."""
    planted(tmp_path, b"a dead attempt of an earlier version")
    final = tmp_path / "out" / "lc.csv"
    part = PartFile(final, folders=FolderCache(tmp_path), owner=JOB, claim_untagged=True)
    part.discard()
    assert entries(final.parent) == [] and part.set_aside is None
    planted(tmp_path, b"another job's", OTHER_JOB)
    part = PartFile(final, folders=FolderCache(tmp_path), owner=JOB, claim_untagged=True)
    part.discard()
    assert entries(final.parent) == [f"_lc.csv.part.set-aside-{JOB[:8]}"]


def test_a_name_near_the_longest_is_set_aside_under_a_name_that_fits(tmp_path: Path):
    name = "é" * 118 + ".fits"  # 241 bytes: its .part name is 246, the set-aside name would be 270
    final = tmp_path / "out" / name
    final.parent.mkdir()
    part_path(final).write_bytes(b"the user's")
    part = PartFile(final, folders=FolderCache(tmp_path), owner=JOB)
    part.write(DATA)
    part.commit(len(DATA))
    assert part.set_aside is not None and len(part.set_aside.encode()) <= 255
    assert part.set_aside.endswith(f".set-aside-{JOB[:8]}") and part.set_aside.startswith("_" + "é" * 100)
    assert (final.parent / part.set_aside).read_bytes() == b"the user's" and final.read_bytes() == DATA


def test_a_name_taken_again_after_it_was_cleared_fails_destination_exists(tmp_path: Path, monkeypatch):
    """The user's process puts a file at the name in the instant after it was cleared (caused here by
    running that process's step right after the clearing; no other way to hit the instant)."""
    from jupyter_staging.safety.partplace import PartPlace

    cleared = PartPlace._make_way

    def clear_then_race(self: PartPlace) -> None:
        cleared(self)
        part_path(self.final).write_bytes(b"put there again")

    monkeypatch.setattr(PartPlace, "_make_way", clear_then_race)
    planted(tmp_path, b"first")
    with pytest.raises(DestinationExists, match=r"lc\.csv\.part already exists"):
        PartFile(tmp_path / "out" / "lc.csv", folders=FolderCache(tmp_path), owner=JOB)
    assert part_path(tmp_path / "out" / "lc.csv").read_bytes() == b"put there again"
    assert (tmp_path / "out" / f"_lc.csv.part.set-aside-{JOB[:8]}").read_bytes() == b"first"


def test_a_parquet_part_that_fails_to_encode_still_logs_the_file_it_set_aside(tmp_path: Path):
    import pyarrow as pa

    from jupyter_staging.errors import ConversionFailed
    from jupyter_staging.formats.parquet import _encode_part
    from jupyter_staging.safety.control import JobControl

    lines: list[tuple[str, str]] = []
    table = tmp_path / "out" / "t.parquet"
    table.mkdir(parents=True)
    (table / "part-00000.parquet.part").write_bytes(b"the user's")
    batch = pa.record_batch({"flux": pa.array([1.0, 2.0])})
    wrong = pa.schema([("flux", pa.string())])
    with pytest.raises(ConversionFailed):
        _encode_part(
            table / "part-00000.parquet",
            [batch],
            wrong,
            "zstd",
            1000,
            tmp_path,
            JOB,
            control=JobControl(log=lambda level, message: lines.append((level, message))),
        )
    aside = f"_part-00000.parquet.part.set-aside-{JOB[:8]}"
    assert entries(table) == [aside] and (table / aside).read_bytes() == b"the user's"
    assert [level for level, _ in lines] == ["warning"] and aside in lines[0][1]


def test_the_manifests_part_sets_a_users_file_aside(tmp_path: Path):
    """``LocalDestination.write_manifest`` makes ``manifest.json.part`` as the job's: a file of the user's
    at that name in the destination folder is set aside, never removed."""
    from jupyter_staging.destinations.local import LocalDestination

    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "manifest.json.part").write_bytes(b"the user's draft")
    LocalDestination(JOB, tmp_path, "staged").write_manifest({"job_id": JOB, "objects": []})
    aside = f"_manifest.json.part.set-aside-{JOB[:8]}"
    assert entries(folder) == [aside, "manifest.json"]
    assert (folder / aside).read_bytes() == b"the user's draft"
