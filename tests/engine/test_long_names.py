"""Files whose names leave no room for ``.part``: a name of 251 to 255 bytes is a legal name (``NAME_MAX``
is 255) that a user's folder may hold, but ``<name>.part`` is not. A local folder of such files larger than
the small-file limit (written through a named part) failed the job ``internal_error`` (the ``OSError``
``ENAMETOOLONG`` of creating the part). Their part is now named ``<name cut>~<8 hex>.part``, within 255
bytes and distinct for names alike up to the cut. A real manager, a real folder (ext4 or tmpfs: 255 bytes)."""

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
