"""What the hub service gives to the user when it runs as root (``owner_for``): only what it made itself,
and only by descriptor. The user's moves in their own folder are made for real at the instant that matters
(a hook on the system call just before), so the races are deterministic. Giving files away needs root, as
the service has; the service itself never depends on it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import jupyter_staging.hub.areas as areas_module
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.hub.areas import Owner, UserAreas
from jupyter_staging.hub.fileops import check_source, symlink
from jupyter_staging.hub.jobfiles import publish_from_folder, remove_folder

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
    (they own the parent): the service finds another folder there, leaves it alone and refuses."""
    staging = site / "homes" / "alice" / "staging"
    course = staging / "course-material"
    course.mkdir()
    (course / "handout.txt").write_text("do not edit\n")
    real_mkdir = os.mkdir
    made: list[str] = []

    def mkdir_then_swap(path, mode=0o777, *, dir_fd=None):
        real_mkdir(path, mode, dir_fd=dir_fd)
        if str(path).startswith(".staging-folder-"):  # made under a name of its own, given, then renamed
            made.append(str(path))
            os.rename(course, staging / str(path))  # over the empty folder just made

    src = check_source(str(site / "archive" / "a.fits"), [str(site / "archive")])
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with pytest.raises(PathNotAllowed):
        areas.open_target("alice", "new/", src.name, owner=ALICE)
    monkeypatch.undo()
    swapped = (staging / made[0]).stat()
    assert (staging / made[0] / "handout.txt").exists() and not (staging / "new").exists()
    assert (swapped.st_uid, stat.S_IMODE(swapped.st_mode)) == (0, 0o755)


def test_two_calls_making_one_folder_at_once_both_leave_it_the_users(site, monkeypatch):
    """Two operations for one user at once both find the folder missing. One renames its new folder in;
    the other finds the name taken, removes its own and uses that one. Before, the second saw the first's
    folder not empty, did not give it away, and the user's home stayed the service's, 0700, for good."""
    staging = site / "homes" / "alice" / "staging"
    real_rename = areas_module.rename_noreplace_at
    first: list[bool] = []

    def other_call_first(parent_fd, name, new_name, **kwargs):
        if not first and new_name == "shared":  # the other call renames its folder in just before
            first.append(True)
            real_mkdir = os.mkdir
            real_mkdir("shared", 0o755, dir_fd=parent_fd)
            os.chown("shared", ALICE.uid, ALICE.gid, dir_fd=parent_fd)
            (staging / "shared" / "theirs.txt").write_text("the other call's file\n")
        return real_rename(parent_fd, name, new_name, **kwargs)

    src = check_source(str(site / "archive" / "a.fits"), [str(site / "archive")])
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    monkeypatch.setattr(areas_module, "rename_noreplace_at", other_call_first)
    with areas.open_target("alice", "shared/", src.name, owner=ALICE) as target:
        assert target.folder == "shared"
    folder = (staging / "shared").stat()
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (ALICE.uid, 0o755)
    assert sorted(p.name for p in staging.iterdir()) == ["shared"]  # no folder of the service's left


@pytest.fixture
def open_site() -> Iterator[Path]:
    """A site nobody may reach (pytest's own folders are private to root)."""
    site = Path(tempfile.mkdtemp(prefix="staging-owner-"))
    os.chmod(site, 0o755)
    (site / "homes" / "alice" / "staging").mkdir(parents=True)
    yield site
    shutil.rmtree(site)


def _admins_folder_at_the_scratch_name(site: Path) -> tuple[Path, str]:
    """An administrator's folder (root's, 0755) in alice's area, holding a file of root's, which alice (as
    nobody, for real) renames onto the scratch folder's name of a jupyter_copy she asked for."""
    area = site / "homes" / "alice" / "staging"
    for folder in (site / "homes" / "alice", area):
        os.chown(folder, ALICE.uid, ALICE.gid)
    reference = area / "reference"
    reference.mkdir()
    (reference / "keep.fits").write_text("the administrator's\n")
    scratch = "lc.fits.staging-0123abcd"
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    subprocess.run([*as_nobody, "mv", str(reference), str(area / scratch)], check=True)
    return area / scratch, scratch


def test_an_admins_folder_renamed_onto_a_scratch_folder_is_neither_emptied_nor_linked_from(open_site):
    """root emptied (and removed) a folder alice may not write into, once she renamed it onto the scratch
    folder's name (she knows it: the operation's id), and linked its file under the target's name."""
    swapped, scratch = _admins_folder_at_the_scratch_name(open_site)
    areas = UserAreas(str(open_site / "homes" / "{username}" / "staging"))
    with areas.open_target("alice", "lc.fits", "lc.fits", owner=ALICE) as target:
        with pytest.raises(PathNotAllowed):
            publish_from_folder(scratch, "keep.fits", target)
        remove_folder(target.dir_fd, scratch, target.owner)
    assert (swapped / "keep.fits").read_text() == "the administrator's\n"
    assert not (swapped.parent / "lc.fits").exists()
