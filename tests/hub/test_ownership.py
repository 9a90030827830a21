"""What the hub service gives to the user when it runs as root (``owner_for``): only what it made itself,
and only by descriptor. The user's moves in their own folder are made for real at the instant that matters
(a hook on the system call just before), so the races are deterministic. Giving files away needs root, as
the service has; the service itself never depends on it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from jupyter_staging.hub.areas import Owner, UserAreas
from jupyter_staging.hub.fileops import check_source, symlink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to a user needs root")

#: The user the service acts for: ``nobody``'s ids, which no file of the test's own belongs to.
ALICE = Owner(uid=65534, gid=65534)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "a.fits").write_bytes(b"archive file\n")
    (tmp_path / "homes" / "alice" / "staging").mkdir(parents=True)
    return tmp_path


def test_a_symlink_keeps_the_services_owner_and_nothing_is_chowned_by_name(site, monkeypatch):
    """The user renames a hard link to another owner's file onto the symlink's name right after the
    service made it: that file keeps its owner (the service never ``chown``s a name in the user's folder),
    and the symlink, where nobody moves it, stays the service's."""
    victim = site / "victim.conf"  # root's, writable by all: protected_hardlinks lets the user link it
    victim.write_text("root's file\n")
    os.chmod(victim, 0o666)
    folder = site / "homes" / "alice" / "staging"
    real_symlink = os.symlink

    def symlink_then_swap(src, dst, *args, **kwargs):
        real_symlink(src, dst, *args, **kwargs)
        os.link(victim, folder / "swap")
        os.rename(folder / "swap", folder / dst)

    src = check_source(str(site / "archive" / "a.fits"), [str(site / "archive")])
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    with areas.open_target("alice", "swapped.fits", src.name, owner=ALICE) as target:
        monkeypatch.setattr(os, "symlink", symlink_then_swap)
        symlink(src, target)
        monkeypatch.undo()
    assert (victim.stat().st_uid, victim.stat().st_gid) == (0, 0)
    with areas.open_target("alice", "plain.fits", src.name, owner=ALICE) as target:
        assert symlink(src, target).status == "succeeded"
    link = (folder / "plain.fits").lstat()
    assert stat.S_ISLNK(link.st_mode) and link.st_uid == os.geteuid()
    assert os.readlink(folder / "plain.fits") == str(site / "archive" / "a.fits")


def test_only_folders_the_service_made_are_given_to_the_user(site):
    """Staging into an area whose home (setgid, group ``users``) and an administrator's read-only folder
    exist already: both keep their owner, group and mode; the folder the call made is the user's."""
    home = site / "homes" / "alice"
    os.chown(home, ALICE.uid, 100)
    os.chmod(home, 0o2770)
    course = home / "staging" / "course-material"
    course.mkdir()
    os.chmod(course, 0o755)  # root's: the user may read it, not change it
    (course / "handout.txt").write_text("do not edit\n")
    before = {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (home, course)}
    src = check_source(str(site / "archive" / "a.fits"), [str(site / "archive")])
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    with areas.open_target("alice", "course-material/new/", src.name, owner=ALICE) as target:
        symlink(src, target)
    assert {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (home, course)} == before
    made = (course / "new").stat()
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (ALICE.uid, ALICE.gid, 0o755)


def test_a_folder_the_user_swaps_in_for_the_one_made_is_not_given_away(site, monkeypatch):
    """The user renames the administrator's folder onto the name of the folder the service just made
    (they own the parent): the service opens that name and finds another folder, which it leaves alone."""
    staging = site / "homes" / "alice" / "staging"
    course = staging / "course-material"
    course.mkdir()
    (course / "handout.txt").write_text("do not edit\n")
    real_mkdir = os.mkdir

    def mkdir_then_swap(path, mode=0o777, *, dir_fd=None):
        real_mkdir(path, mode, dir_fd=dir_fd)
        if path == "new":
            os.rename(course, staging / "new")  # over the empty folder just made

    src = check_source(str(site / "archive" / "a.fits"), [str(site / "archive")])
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with areas.open_target("alice", "new/", src.name, owner=ALICE):
        pass
    monkeypatch.undo()
    swapped = (staging / "new").stat()
    assert (staging / "new" / "handout.txt").exists()
    assert (swapped.st_uid, stat.S_IMODE(swapped.st_mode)) == (0, 0o755)
