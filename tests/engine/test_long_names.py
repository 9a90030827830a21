"""Files whose names leave no room for ``.part``: a name of 251 to 255 bytes is a legal name (``NAME_MAX``
is 255) that a user's folder may hold, but ``<name>.part`` is not. A local folder of such files larger than
the small-file limit (written through a named part) failed the job ``internal_error`` (the ``OSError``
``ENAMETOOLONG`` of creating the part). Their part is now named ``<name cut>~<8 hex>.part``, within 255
bytes and distinct for names alike up to the cut. The same held for the other names the engine derives from
a name: a refreshed folder's ``.<name>.staging-<id8>`` and a converted table's ``<stem>.parquet``. A real
manager, a real folder (ext4 or tmpfs: 255 bytes)."""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.safety.partplace import part_path
from tests.helpers.data import sha256

#: Larger than the small files written unnamed (4 MiB), so each goes through a named part.
SIZE = 5 * 1024 * 1024


def test_part_names_fit_and_differ_past_the_cut():
    for name in ("a" * 250, "a" * 251, "é" * 127, "a" * 254 + "b", "a" * 254 + "c"):
        part = part_path(Path("/f") / name).name
        assert len(os.fsencode(part)) <= 255 and part.endswith(".part"), name
        part.encode("utf-8")  # a character is never cut in two
    assert part_path(Path("a" * 250)).name == "a" * 250 + ".part"  # names that fit keep the plain part name
    assert part_path(Path("a" * 254 + "b")) != part_path(Path("a" * 254 + "c"))


def test_files_with_the_longest_names_are_staged(manager: StagingManager, root: Path):
    src = root / "src"
    src.mkdir()
    names = ["L" * 250, "L" * 251, "L" * 254 + "b", "L" * 254 + "c", "é" * 127]
    for name in names:
        (src / name).write_bytes(os.urandom(SIZE))
    job, _ = manager.create(CreateJob(source=str(src), destination="out"))
    done = manager.wait(job.id, timeout=120)
    assert done.state == JobState.succeeded, done.error
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "manifest.json"])
    for name in names:
        assert sha256(out / name) == sha256(src / name)


def test_a_folder_of_the_longest_name_is_staged_again(manager: StagingManager, root: Path):
    """``if_exists="refresh"`` stages beside the folder, in ``.<name>.staging-<id8>``: for a folder name of
    238 bytes or more that name was too long, and the job failed ``internal_error``."""
    src = root / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"first")
    folder = "D" * 255
    job, _ = manager.create(CreateJob(source=str(src), destination=folder))
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    (src / "a.bin").write_bytes(b"second")
    job, _ = manager.create(CreateJob(source=str(src), destination=folder, if_exists="refresh"))
    done = manager.wait(job.id, timeout=60)
    assert done.state == JobState.succeeded, done.error
    assert (root / folder / "a.bin").read_bytes() == b"second"
    assert sorted(p.name for p in root.iterdir()) == sorted(["src", folder])


def test_tables_of_the_longest_names_are_converted(manager: StagingManager, root: Path):
    """A table named with 248 bytes or more has no room for ``.parquet``: its conversion failed
    ``internal_error``. Two tables named alike up to the cut get two folders."""
    import pyarrow.parquet as pq

    src = root / "src"
    src.mkdir()
    names = ["C" * 247 + "1.csv", "C" * 247 + "2.csv"]
    for i, name in enumerate(names):
        (src / name).write_text(f"a,b\n{i},2\n3,4\n")
    job, _ = manager.create(CreateJob(source=str(src), destination="conv", convert={"format": "parquet"}))
    done = manager.wait(job.id, timeout=120)
    assert done.state == JobState.succeeded, done.error
    folders = sorted(p for p in (root / "conv").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(len(os.fsencode(p.name)) <= 255 for p in folders)
    assert sorted(pq.read_table(p).column("a").to_pylist()[0] for p in folders) == [0, 1]
