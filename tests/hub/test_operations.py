"""The hub service's file work on its own (no hub): confinement, no-follow, no overwrite, read-only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists, PathNotAllowed, SourceNotFound, StagingError
from jupyter_staging.hub import fileops, oplog
from jupyter_staging.hub.areas import Owner, UserAreas, escape_username, split_relative_path
from jupyter_staging.hub.fileops import check_source, hardlink, local_copy, symlink
from jupyter_staging.hub.handlers import content_disposition
from jupyter_staging.hub.jobfiles import make_read_only
from jupyter_staging.hub.recording import as_staging_error
from jupyter_staging.hub.requests import parse_stage_request
from tests.helpers.data import KEPLER_NAME
from tests.helpers.descriptors import descriptors_to_spare
from tests.helpers.space import TMPFS_SIZE, read_only_folder, small_file_system


@pytest.fixture
def site(tmp_path, kepler):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(kepler, archive / KEPLER_NAME)
    (tmp_path / "outside").mkdir()
    (tmp_path / "homes").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    (archive / "out").symlink_to(tmp_path / "outside" / "secret")
    return tmp_path


def test_usernames_are_escaped_to_one_safe_component():
    assert escape_username("alice") == "alice"
    assert escape_username("a.b") == "a-2eb"
    assert escape_username("..") == "-2e-2e"
    assert escape_username("x/../y") == "x-2f-2e-2e-2fy"
    assert escape_username("é") == "-c3-a9"


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("", ([], "f.fits")),
        ("d/", (["d"], "f.fits")),
        ("d/e/n.fits", (["d", "e"], "n.fits")),
        ("n", ([], "n")),
    ],
)
def test_relative_paths(relative, expected):
    assert split_relative_path(relative, "f.fits") == expected


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/abs/x", ".bashrc", "a/.ssh/", "a\x00b"])
def test_hostile_relative_paths(relative):
    with pytest.raises(PathNotAllowed):
        split_relative_path(relative, "f.fits")


def test_sources_are_confined_after_resolving_links(site):
    roots = [str(site / "archive")]
    assert check_source(str(site / "archive" / KEPLER_NAME), roots).size == 1457280
    for bad in (
        str(site / "archive" / "out"),
        str(site / "archive" / ".." / "outside" / "secret"),
        "/etc/passwd",
    ):
        with pytest.raises(PathNotAllowed):
            check_source(bad, roots)
    with pytest.raises(SourceNotFound):
        check_source(str(site / "archive" / "missing"), roots)


def test_templates_are_checked():
    for bad in ("relative/{username}", "/home/staging", "/home/{username}/../x"):
        with pytest.raises(ValueError):
            UserAreas(bad)


def test_copy_is_read_only_and_never_overwrites(site, kepler):
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    with areas.open_target("alice", "a/b/", src.name) as target:
        outcome = local_copy(src, target)
    final = site / "homes" / "alice" / "staging" / "a" / "b" / KEPLER_NAME
    assert outcome.status == "succeeded" and final.read_bytes() == kepler.read_bytes()
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    with areas.open_target("alice", "a/b/", src.name) as target:
        assert local_copy(src, target).duplicate
    os.chmod(final, 0o644)
    final.write_bytes(b"changed")
    with areas.open_target("alice", "a/b/", src.name) as target, pytest.raises(DestinationExists):
        local_copy(src, target)
    assert final.read_bytes() == b"changed"
    assert sorted(p.name for p in final.parent.iterdir()) == [KEPLER_NAME]  # no .part left


def test_a_part_replaced_in_the_users_folder_is_never_published(site, monkeypatch):
    """The service writes ``<name>.<random>.part`` into the user's folder, which the user may change: a
    part replaced there before it takes its name (another file, a symlink) is not published as the copy,
    and is not removed either (the service's copy lost its only name: nothing is published, the operation
    fails ``path_not_allowed``). The replacement is made for real at the last step before the link (the
    ``fchmod`` is hooked to make it). The service writes a named part only where it cannot write an
    unnamed file (``O_TMPFILE``): that is made so here."""
    monkeypatch.setattr(fileops, "create_unnamed", lambda dir_fd, mode: None)
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    folder = site / "homes" / "alice" / "staging" / "a"
    real_fchmod = os.fchmod

    def fchmod_then_replace(fd, mode):
        real_fchmod(fd, mode)
        (part,) = [p for p in folder.iterdir() if p.name.endswith(".part")]
        part.unlink()
        os.symlink("/etc/hostname", part)

    with areas.open_target("alice", "a/", src.name) as target:
        monkeypatch.setattr(os, "fchmod", fchmod_then_replace)
        with pytest.raises(PathNotAllowed, match="replaced while it was written"):
            local_copy(src, target)
        monkeypatch.undo()
    assert not os.path.lexists(folder / KEPLER_NAME)
    (planted,) = list(folder.iterdir())
    assert planted.is_symlink() and os.readlink(planted) == "/etc/hostname"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to a user needs root, as the service has")
def test_a_hard_link_to_someone_elses_file_is_not_given_to_the_user(site):
    """After a ``jupyter_copy``, the service (root) makes the file at the target read-only and gives it to
    the user: only when it is the user's file already. A hard link the user put at that name to a file of
    another owner keeps that file's mode and owner."""
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    folder = site / "homes" / "alice" / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    secret = site / "secret.txt"  # another owner's file (root's here), mode 0600
    secret.write_bytes(b"not alice's")
    os.chmod(secret, 0o600)
    os.link(secret, folder / "lc.fits")
    own = folder / "own.fits"  # a file the user's server wrote: the user's
    own.write_bytes(b"alice's")
    os.chown(own, 65534, 65534)
    alice = Owner(uid=65534, gid=65534)
    for name in ("lc.fits", "own.fits"):
        with areas.open_target("alice", "", name) as target:
            target.owner = alice
            make_read_only(target)
    st = secret.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    st = own.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o444)


def test_no_descriptor_left_is_too_many_open_files_not_io_error(site):
    """A copy that meets the service's open-file limit for real (``EMFILE`` opening the source) is
    recorded as ``too_many_open_files`` (503, the service's state), not a generic ``io_error`` (500), and
    leaves nothing in the user's area."""
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    with areas.open_target("alice", "a/", src.name) as target:
        with descriptors_to_spare(0), pytest.raises(OSError) as raised:
            local_copy(src, target)
    staging = as_staging_error(raised.value, "op-1")
    assert (staging.code, staging.status, staging.operation_id) == ("too_many_open_files", 503, "op-1")
    assert "RLIMIT_NOFILE" in str(staging) and str(site) not in str(staging)
    assert os.listdir(site / "homes" / "alice" / "staging" / "a") == []
    failed = as_staging_error(OSError(5, "Input/output error"), "op-2")
    assert (failed.code, failed.status) == ("io_error", 500)


def test_a_full_user_area_is_no_space_and_keeps_no_part(site):
    """A copy into a user's area whose file system fills up for real (a small tmpfs) is recorded as
    ``no_space`` (507, as the engine says it), not ``io_error`` (500), and leaves no part file; an area
    over its disk quota (``EDQUOT``) is ``no_space`` too."""
    (site / "archive" / "big.bin").write_bytes(os.urandom(TMPFS_SIZE + 2 * 1024 * 1024))
    areas = UserAreas(str(site / "homes" / "{username}"))
    src = check_source(str(site / "archive" / "big.bin"), [str(site / "archive")])
    with small_file_system(site / "homes" / "alice") as area:
        with areas.open_target("alice", "", src.name) as target, pytest.raises(OSError) as raised:
            local_copy(src, target)
        assert os.listdir(area) == []
    staging = as_staging_error(raised.value, "op-1")
    assert (staging.code, staging.status, staging.operation_id) == ("no_space", 507, "op-1")
    assert "no space left" in str(staging) and str(site) not in str(staging)
    quota = as_staging_error(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "op-2")
    assert (quota.code, quota.status) == ("no_space", 507) and "quota" in str(quota)


def test_a_read_only_user_area_is_destination_not_writable(site):
    """A copy into a user's area mounted read-only for real (a bind mount) is ``destination_not_writable``
    (409, as the engine says it), not ``io_error`` (500)."""
    areas = UserAreas(str(site / "homes" / "{username}"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    with read_only_folder(site / "homes" / "alice") as area:
        with pytest.raises(OSError) as raised, areas.open_target("alice", "", src.name) as target:
            local_copy(src, target)
        assert os.listdir(area) == []
    staging = as_staging_error(raised.value, "op-1")
    assert (staging.code, staging.status, staging.operation_id) == ("destination_not_writable", 409, "op-1")
    assert str(site) not in str(staging)


def test_symlinks_in_the_area_are_refused_at_every_level(site):
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    (site / "homes" / "bob").mkdir()
    (site / "homes" / "bob" / "staging").symlink_to(site / "outside")  # the area itself
    with pytest.raises(PathNotAllowed):
        areas.open_target("bob", "", src.name)
    (site / "homes" / "carol" / "staging").mkdir(parents=True)
    (site / "homes" / "carol" / "staging" / "d").symlink_to(site / "outside")  # a folder inside it
    with pytest.raises(PathNotAllowed):
        areas.open_target("carol", "d/x.fits", src.name)
    (site / "homes" / "carol" / "staging" / "f").write_text("a file, not a folder")
    with pytest.raises(PathNotAllowed):
        areas.open_target("carol", "f/x.fits", src.name)
    assert sorted(p.name for p in (site / "outside").iterdir()) == ["secret"]


@pytest.mark.parametrize("method", [local_copy, hardlink, symlink])
def test_a_backslash_in_a_source_name_is_a_character_not_a_folder(site, method):
    """A file named ``x\\pwned.conf`` (from Windows, say) staged into a folder keeps its name; it was taken
    for ``x/pwned.conf`` and followed the symlink ``x`` the user had planted there, out of the area."""
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    (site / "archive" / "x\\pwned.conf").write_text("from the archive")
    src = check_source(str(site / "archive" / "x\\pwned.conf"), [str(site / "archive")])
    (site / "homes" / "bob" / "staging" / "d").mkdir(parents=True)
    (site / "homes" / "bob" / "staging" / "d" / "x").symlink_to(site / "outside")

    with areas.open_target("bob", "d/", src.name) as target:
        method(src, target)

    assert (site / "homes" / "bob" / "staging" / "d" / "x\\pwned.conf").exists()
    assert sorted(p.name for p in (site / "outside").iterdir()) == ["secret"]
    with pytest.raises(PathNotAllowed):
        split_relative_path("d/", ".hidden")


def test_the_trusted_base_may_be_a_symlink(site):
    (site / "real-homes").mkdir()
    (site / "homes-link").symlink_to(site / "real-homes")
    areas = UserAreas(str(site / "homes-link" / "{username}"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    with areas.open_target("dave", "", src.name) as target:
        symlink(src, target)
    assert (site / "real-homes" / "dave" / KEPLER_NAME).is_symlink()


def test_hardlink_shares_the_inode_and_keeps_the_mode(site):
    areas = UserAreas(str(site / "homes" / "{username}"))
    src_path = site / "archive" / KEPLER_NAME
    os.chmod(src_path, 0o640)
    src = check_source(str(src_path), [str(site / "archive")])
    with areas.open_target("erin", "", src.name) as target:
        assert hardlink(src, target).status == "succeeded"
    assert (site / "homes" / "erin" / KEPLER_NAME).stat().st_ino == src_path.stat().st_ino
    assert stat.S_IMODE(src_path.stat().st_mode) == 0o640


@pytest.mark.parametrize("method", [local_copy, hardlink, symlink])
def test_a_target_folder_removed_during_the_call_is_target_missing(site, method):
    """The user removes the (empty) folder the call opened: each method answers ``target_missing`` (400).
    A hard link answered ``source_changed`` (409), blaming a source nobody changed."""
    areas = UserAreas(str(site / "homes" / "{username}"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    with areas.open_target("erin", "sub/", src.name) as target:
        (site / "homes" / "erin" / "sub").rmdir()
        with pytest.raises(Exception) as caught:
            method(src, target)
    err = as_staging_error(caught.value, "op")
    assert (err.code, err.status) == ("target_missing", 400)


def test_a_hardlink_source_removed_after_it_was_pinned_is_source_changed(site, monkeypatch):
    areas = UserAreas(str(site / "homes" / "{username}"))
    (site / "archive" / "gone.txt").write_text("soon gone")
    src = check_source(str(site / "archive" / "gone.txt"), [str(site / "archive")])
    pin = fileops._pin_source

    def pin_then_remove(source):
        fd = pin(source)
        (site / "archive" / "gone.txt").unlink()
        return fd

    monkeypatch.setattr(fileops, "_pin_source", pin_then_remove)
    with areas.open_target("erin", "", src.name) as target, pytest.raises(StagingError) as caught:
        hardlink(src, target)
    assert caught.value.code == "source_changed"
    assert not (site / "homes" / "erin" / "gone.txt").exists()


def test_hardlink_refuses_a_source_folder_replaced_by_a_symlink_after_the_check(site):
    """linkat follows symlinks in the source's folders: a folder swapped after check_source must not get a
    file from outside the shared roots linked into the user's area."""
    areas = UserAreas(str(site / "homes" / "{username}"))
    sub = site / "archive" / "sub"
    sub.mkdir()
    (sub / "data.txt").write_text("shared")
    src = check_source(str(sub / "data.txt"), [str(site / "archive")])
    (site / "outside" / "data.txt").write_text("private")
    sub.rename(site / "archive" / "sub-moved")
    sub.symlink_to(site / "outside", target_is_directory=True)
    with areas.open_target("erin", "", src.name) as target, pytest.raises(StagingError) as caught:
        hardlink(src, target)
    assert caught.value.code == "source_changed"
    assert not (site / "homes" / "erin" / "data.txt").exists()
    assert (site / "outside" / "data.txt").read_text() == "private"


def test_request_parsing():
    ok = parse_stage_request(b'{"method": "symlink_copy", "local_path_on_storage": "/a"}')
    assert ok.method == "symlink_copy" and ok.relative_path == ""
    for body, code in [
        (b"[]", "invalid_json"),
        (b"nope", "invalid_json"),
        (b'{"method": "local_copy"}', "invalid_request"),
        (b'{"method": "local_copy", "local_path_on_storage": "/a", "user": "bob"}', "user_in_body"),
        (b'{"method": "local_copy", "local_path_on_storage": "/a", "extra": 1}', "invalid_request"),
    ]:
        with pytest.raises(Exception) as info:
            parse_stage_request(body)
        assert info.value.code == code


def test_content_disposition_quotes_odd_names():
    assert content_disposition("a.fits") == "attachment; filename=\"a.fits\"; filename*=UTF-8''a.fits"
    assert 'filename="_x_.fits"' in content_disposition('"x".fits')
    assert "filename*=UTF-8''%C3%A9.fits" in content_disposition("é.fits")


def test_log_tail_filters_by_user_and_level(tmp_path):
    path = tmp_path / "ops.log"
    logger = oplog.open_log(path, max_bytes=1000, backup_count=3)  # about 4 lines per file
    for i in range(12):
        user = "alice" if i % 2 else "bob"
        logger.log(
            30 if i % 3 == 0 else 20, "line %d", i, extra={"user": user, "actor": user, "operation": str(i)}
        )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "ops.log.1").exists()  # it rotated
    everything = oplog.tail(path, lines=100, backup_count=3)
    assert [e["message"] for e in everything] == [f"line {i}" for i in range(12)]  # across 3 files
    assert [e["message"] for e in oplog.tail(path, lines=2, backup_count=3)] == ["line 10", "line 11"]
    alice = oplog.tail(path, lines=100, user="alice", backup_count=3)
    assert alice and {e["user"] for e in alice} == {"alice"}
    warnings = oplog.tail(path, lines=2, level="warning", backup_count=3)
    assert [e["message"] for e in warnings] == ["line 6", "line 9"]
    with pytest.raises(ValueError):
        oplog.tail(path, level="loud")


#: Run as a user (``nobody``) who may read ``archive/open.bin`` but not ``archive/closed.bin``, and may
#: write into ``homes/alice`` but not into its folder ``locked``: each file operation, its error as the
#: service records it (``as_staging_error``).
_AS_THE_SERVICE = """
import json, os, sys
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.fileops import check_source, hardlink, local_copy, symlink
from jupyter_staging.hub.recording import as_staging_error

site = sys.argv[1]
areas = UserAreas(site + "/homes/{username}")
seen = {}
for name, operation, source, folder in [
    ("copy", local_copy, "open.bin", "locked/"),
    ("hardlink", hardlink, "open.bin", "locked/"),
    ("symlink", symlink, "open.bin", "locked/"),
    ("unreadable", local_copy, "closed.bin", "free/"),
    ("made unreadable", local_copy, "later.bin", "free/"),
    ("folder made unsearchable", hardlink, "deep/lc.bin", "free/"),
]:
    try:
        src = check_source(site + "/archive/" + source, [site + "/archive"])
        if name == "made unreadable":  # its mode changed between the check and the copy
            os.chmod(src.path, 0)
        if name == "folder made unsearchable":  # its folder's, between the check and the link
            os.chmod(src.path.parent, 0)
        with areas.open_target("alice", folder, src.name) as target:
            seen[name] = {"status": operation(src, target).status}
    except Exception as exc:
        staging = as_staging_error(exc, "op")
        seen[name] = {"code": staging.code, "status": staging.status, "message": staging.message}
print(json.dumps(seen))
"""


def test_a_folder_or_source_the_service_may_not_use_is_a_4xx_not_io_error(request):
    """The service running as a user who may not write into the target's folder (its mode) records
    ``destination_not_writable`` (409) for a copy, a hard link and a symlink, naming the file and no path;
    a source it may not read is ``source_not_readable`` (400). Never ``io_error`` (500); nothing is left in
    the folder. Root may write anywhere, so the operations run as ``nobody`` (``setpriv``)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the service's operations as another user")
    site = Path(tempfile.mkdtemp(prefix="staging-hub-perm-"))  # pytest's own folders are 0700
    request.addfinalizer(lambda: shutil.rmtree(site, ignore_errors=True))
    for name in ("archive", "homes/alice/locked", "homes/alice/free"):
        (site / name).mkdir(parents=True)
    (site / "archive" / "open.bin").write_bytes(os.urandom(64 * 1024))
    (site / "archive" / "closed.bin").write_bytes(os.urandom(64 * 1024))
    os.chmod(site / "archive" / "closed.bin", 0o600)
    (site / "archive" / "later.bin").write_bytes(os.urandom(64 * 1024))
    (site / "archive" / "deep").mkdir()
    (site / "archive" / "deep" / "lc.bin").write_bytes(os.urandom(64 * 1024))
    for name in (
        "archive/open.bin",
        "archive/later.bin",
        "archive/deep",
        "archive/deep/lc.bin",
        "homes/alice",
        "homes/alice/free",
    ):
        os.chown(site / name, 65534, 65534)
    for folder in (site, site / "archive", site / "homes"):
        os.chmod(folder, 0o755)
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(  # noqa: S603 - fixed arguments
        [*command, sys.executable, "-c", _AS_THE_SERVICE, str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(site)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("copy", "hardlink", "symlink"):
        assert (seen[name]["code"], seen[name]["status"]) == ("destination_not_writable", 409), seen
        assert "'open.bin' could not be written: the service's user may not write" in seen[name]["message"]
        assert str(site) not in seen[name]["message"]
    for name in ("unreadable", "made unreadable", "folder made unsearchable"):
        assert (seen[name]["code"], seen[name]["status"]) == ("source_not_readable", 400), seen
    assert os.listdir(site / "homes" / "alice" / "locked") == []
    assert os.listdir(site / "homes" / "alice" / "free") == []


#: A service process killed (SIGKILL) in the middle of a copy: after the first block is written.
_KILLED_MID_COPY = """
import os, signal, sys
from jupyter_staging.hub import fileops
from jupyter_staging.hub.areas import UserAreas

def write_then_die(self, data):
    fileops.write_all(self.fd, data)
    os.kill(os.getpid(), signal.SIGKILL)

fileops._FdWriter.write = write_then_die
site = sys.argv[1]
src = fileops.check_source(site + "/archive/big.bin", [site + "/archive"])
with UserAreas(site + "/homes/{username}").open_target("alice", "run/", src.name) as target:
    fileops.local_copy(src, target)
"""


def test_a_service_killed_mid_copy_leaves_nothing_in_the_users_folder(site):
    """The copy has no name in the user's folder until it is complete (an unnamed ``O_TMPFILE`` file):
    a service process killed after writing part of it leaves no ``.part`` behind, and the copy made again
    (as a replica taking the operation over does) leaves the file alone."""
    (site / "archive" / "big.bin").write_bytes(os.urandom(3 * fileops.BLOCK_SIZE))
    done = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-c", _KILLED_MID_COPY, str(site)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == -9, done.stderr[-2000:]
    folder = site / "homes" / "alice" / "run"
    assert os.listdir(folder) == []
    src = check_source(str(site / "archive" / "big.bin"), [str(site / "archive")])
    with UserAreas(str(site / "homes" / "{username}")).open_target("alice", "run/", src.name) as target:
        assert local_copy(src, target).status == "succeeded"
    assert os.listdir(folder) == ["big.bin"]


@pytest.mark.parametrize("meanwhile", ["the same copy", "another file"])
def test_a_name_taken_while_copying_is_a_duplicate_only_for_the_same_bytes(site, monkeypatch, meanwhile):
    """Two identical copies at once: the one that publishes second finds the same bytes at the target and
    is ``skipped`` (a duplicate), not ``target_exists``; a different file put there meanwhile is still
    ``target_exists`` and is kept. The other call is run for real just before this one links its file."""
    areas = UserAreas(str(site / "homes" / "{username}"))
    src = check_source(str(site / "archive" / KEPLER_NAME), [str(site / "archive")])
    real_link = fileops.link_open_file

    def the_other_call_first(fd, dir_fd, name):
        monkeypatch.setattr(fileops, "link_open_file", real_link)
        if meanwhile == "the same copy":
            with areas.open_target("alice", "d/", src.name) as other:
                assert local_copy(src, other).status == "succeeded"
        else:
            (site / "homes" / "alice" / "d" / KEPLER_NAME).write_bytes(b"bob's own work")
        real_link(fd, dir_fd, name)

    with areas.open_target("alice", "d/", src.name) as target:
        monkeypatch.setattr(fileops, "link_open_file", the_other_call_first)
        if meanwhile == "the same copy":
            outcome = local_copy(src, target)
            assert (outcome.status, outcome.bytes) == ("skipped", src.size) and outcome.duplicate
        else:
            with pytest.raises(DestinationExists):
                local_copy(src, target)
    assert os.listdir(site / "homes" / "alice" / "d") == [KEPLER_NAME]
