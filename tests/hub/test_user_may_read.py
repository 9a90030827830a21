"""The hub service running as root stages for a user only what that user may read, and only where that user
may write: root reads every file below the shared roots (a root-only file, a file in a folder of another
group), and handed the user a copy of it (given to the user, 0444), a download of its bytes, or a hard link
to it in the user's area (a readable name for a file whose folder the user may not search); and it wrote
into any folder of the user's area. The user is ``nobody`` (a real account, in no group of the test's
files), and each answer is compared with what the kernel says ``nobody`` may do (``setpriv``), POSIX ACLs
included; the service asks the kernel itself, as the user, so what no mode bit tells (a folder made
immutable, a read-only mount) is answered as the kernel does, and no answer grants nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_staging.errors import StagingError
from jupyter_staging.hub import access
from jupyter_staging.hub.access import SEARCH, WRITE, check_user_may_read, reader_for, user_may
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.db import Operation, OperationStore
from jupyter_staging.hub.operations import Caller, StagingOperations

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the service reads what the user may not as root")

NOBODY = Caller("nobody", "user", False)
NOBODY_UID = 65534
METHODS = ["local_copy", "hardlink", "symlink", "direct_download", "jupyter_copy"]


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A ``system.posix_acl_access`` value (version 2) of ``(tag, perm, id)`` entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


ANY = 0xFFFFFFFF
#: user::rw-, user:nobody:---, group::r--, mask::r--, other::r--: the mode says 0644, nobody may not read.
NOBODY_DENIED = acl((0x01, 6, ANY), (0x02, 0, NOBODY_UID), (0x04, 4, ANY), (0x10, 4, ANY), (0x20, 4, ANY))
#: user::rw-, user:nobody:r--, group::---, mask::r--, other::---: the mode says 0640, nobody may read.
NOBODY_GRANTED = acl((0x01, 6, ANY), (0x02, 4, NOBODY_UID), (0x04, 0, ANY), (0x10, 4, ANY), (0x20, 0, ANY))


@pytest.fixture
def site() -> Iterator[Path]:
    """An archive ``nobody`` may enter (pytest's own folders are root's, 0700), with files it may and may
    not read."""
    top = Path(tempfile.mkdtemp(prefix="user-may-read-", dir="/tmp"))
    os.chmod(top, 0o755)
    archive = top / "archive"
    archive.mkdir()
    os.chmod(archive, 0o755)
    files = {
        "open.bin": 0o644,
        "root-only.bin": 0o600,
        "closed/in-a-root-folder.bin": 0o644,
        "group/nogroup-may-read.bin": 0o640,
        "acl-denied.bin": 0o644,
        "acl-granted.bin": 0o640,
    }
    (archive / "closed").mkdir(mode=0o700)
    (archive / "group").mkdir()
    os.chown(archive / "group", 0, NOBODY_UID)  # nobody's primary group, nogroup
    os.chmod(archive / "group", 0o750)
    for name, mode in files.items():
        (archive / name).write_bytes(f"{name}\n".encode())
        os.chmod(archive / name, mode)
    os.chown(archive / "group" / "nogroup-may-read.bin", 0, NOBODY_UID)
    os.setxattr(archive / "acl-denied.bin", "system.posix_acl_access", NOBODY_DENIED)
    os.setxattr(archive / "acl-granted.bin", "system.posix_acl_access", NOBODY_GRANTED)
    (top / "homes" / "nobody").mkdir(parents=True)
    os.chown(top / "homes" / "nobody", NOBODY_UID, NOBODY_UID)  # nobody's home: the user may write there
    yield top
    shutil.rmtree(top)


def kernel_lets_nobody_read(path: Path) -> bool:
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--init-groups", "cat", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


READABLE = ["open.bin", "group/nogroup-may-read.bin", "acl-granted.bin"]
UNREADABLE = ["root-only.bin", "closed/in-a-root-folder.bin", "acl-denied.bin"]


def test_the_check_agrees_with_the_kernel(site):
    reader = reader_for("nobody")
    assert reader is not None and reader.uid == NOBODY_UID
    for name in READABLE + UNREADABLE:
        path = site / "archive" / name
        try:
            check_user_may_read(path, reader)
            allowed = True
        except StagingError as refused:
            assert (refused.code, refused.status) == ("permission_denied", 403)
            allowed = False
        assert allowed == kernel_lets_nobody_read(path) == (name in READABLE), name
    st = (site / "archive" / "open.bin").stat()
    check_user_may_read(site / "archive" / "open.bin", reader, (st.st_dev, st.st_ino))
    with pytest.raises(StagingError):  # another file than the one checked is at that path now
        check_user_may_read(site / "archive" / "open.bin", reader, (st.st_dev, st.st_ino + 1))


def stage(site: Path, method: str, name: str, relative_path: str | None = None) -> tuple[str, str]:
    """``(outcome, detail)`` of nobody's ``POST api/stage`` of ``archive/<name>`` by ``method`` (into
    ``relative_path``; default ``<method>/<name>``)."""
    store = OperationStore(f"sqlite:///{site}/ops.sqlite")
    ops = StagingOperations(
        store,
        UserAreas(str(site / "homes" / "{username}" / "staging")),
        [str(site / "archive")],
        None,  # type: ignore[arg-type]  # a jupyter_copy refused before it needs the hub
        server_root_template=str(site / "homes" / "{username}"),
    )
    body = {
        "method": method,
        "local_path_on_storage": str(site / "archive" / name),
        "relative_path": relative_path or f"{method}/{name.replace('/', '_')}",
    }

    async def go() -> tuple[str, str]:
        try:
            done = await ops.stage(NOBODY, json.dumps(body).encode(), None)
        except StagingError as refused:
            return "refused", f"{refused.code} {refused.status}"
        finally:
            store.close()
        if isinstance(done, Operation):
            return done.status, ""
        with done.file:
            return "downloaded", done.file.read().decode()

    return asyncio.run(go())


@pytest.mark.parametrize("method", METHODS)
def test_a_file_the_user_may_not_read_is_refused_by_every_method(site, method):
    """Before, each method succeeded: a root-only file became the user's 0444 copy, or was streamed to
    them; a hard link gave a readable name to a file in a root-only folder."""
    for name in UNREADABLE:
        assert stage(site, method, name) == ("refused", "permission_denied 403"), name
    area = site / "homes" / "nobody" / "staging"
    assert not [p for p in area.rglob("*") if not p.is_dir()] if area.exists() else True


@pytest.mark.parametrize("method", ["local_copy", "hardlink", "symlink", "direct_download"])
def test_a_file_the_user_may_read_is_staged(site, method):
    for name in READABLE:
        outcome, detail = stage(site, method, name)
        assert outcome in ("succeeded", "downloaded"), (name, outcome, detail)
        if outcome == "downloaded":
            assert detail == f"{name}\n"


@pytest.mark.parametrize("method", ["local_copy", "hardlink", "symlink", "jupyter_copy"])
def test_nothing_is_written_where_the_user_may_not_write(site, method):
    """An administrator's folder in the user's area (root's, 0755) and a folder the user made read-only
    (0555): root wrote the file, or made a folder, there all the same. Before, each call succeeded."""
    area = site / "homes" / "nobody" / "staging"
    area.mkdir()
    os.chown(area, NOBODY_UID, NOBODY_UID)
    (area / "course").mkdir(mode=0o755)
    (area / "mine").mkdir()
    os.chown(area / "mine", NOBODY_UID, NOBODY_UID)
    os.chmod(area / "mine", 0o555)
    for where in ("course/", "course/new/", "mine/"):
        assert stage(site, method, "open.bin", where) == ("refused", "destination_not_writable 409"), where
    assert not list((area / "course").iterdir()) and not list((area / "mine").iterdir())
    (area / "course" / "shared").mkdir()
    os.chown(area / "course" / "shared", 0, NOBODY_UID)  # nobody's group may write there: allowed
    os.chmod(area / "course" / "shared", 0o775)
    if method != "jupyter_copy":  # which would need the user's server
        assert stage(site, method, "open.bin", "course/shared/new/")[0] == "succeeded"
        assert [p.name for p in (area / "course" / "shared" / "new").iterdir()] == ["open.bin"]


def test_what_lies_in_a_folder_the_user_may_not_search_is_not_told(site):
    """A missing file in a root-only folder was ``source_not_found`` where a present one is refused: an
    oracle for the names in a folder the user may not list. Both are ``permission_denied`` now; a missing
    file where the user may look stays ``source_not_found``."""
    for name in ("closed/in-a-root-folder.bin", "closed/no-such.bin", "closed/../closed/no-such.bin"):
        assert stage(site, "local_copy", name) == ("refused", "permission_denied 403"), name
    assert stage(site, "local_copy", "no-such.bin") == ("refused", "source_not_found 400")


def kernel_lets_nobody_write(path: Path) -> bool:
    as_nobody = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--init-groups"]
    done = subprocess.run([*as_nobody, "test", "-w", str(path)], check=False)
    return done.returncode == 0


@pytest.fixture
def frozen_folders(site: Path) -> Iterator[dict[str, Path]]:
    """Folders of nobody's area that nobody owns, mode 0755, and yet may not write into: one made immutable
    (``chattr +i``), one a read-only bind mount of itself; and one nobody may write into."""
    area = site / "homes" / "nobody" / "staging"
    folders = {name: area / name for name in ("open", "immutable", "read-only")}
    for folder in [area, *folders.values()]:
        folder.mkdir()
        os.chown(folder, NOBODY_UID, NOBODY_UID)
    done = []
    try:
        if subprocess.run(["chattr", "+i", str(folders["immutable"])], check=False).returncode:
            pytest.skip("chattr +i is not supported here")
        done.append(["chattr", "-i", str(folders["immutable"])])
        ro = str(folders["read-only"])
        if subprocess.run(["mount", "--bind", ro, ro], check=False).returncode:
            pytest.skip("no bind mount here")
        done.append(["umount", ro])
        if subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=False).returncode:
            pytest.skip("no read-only bind mount here")
        yield folders
    finally:
        for command in reversed(done):
            subprocess.run(command, check=True)


def test_the_write_check_agrees_with_the_kernel_where_the_mode_does_not_tell(frozen_folders):
    """Before, the service read the mode bits and said nobody may write into its own 0755 folders, though
    the kernel refuses both: the immutable one (EPERM) and the one on a read-only mount (EROFS)."""
    reader = reader_for("nobody")
    assert reader is not None
    for name, folder in frozen_folders.items():
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            allowed = user_may(fd, reader, WRITE | SEARCH)
        finally:
            os.close(fd)
        assert allowed == kernel_lets_nobody_write(folder) == (name == "open"), name


@pytest.mark.parametrize("method", ["local_copy", "hardlink", "symlink"])
def test_a_folder_the_kernel_keeps_from_the_user_is_refused(site, frozen_folders, method):
    """Before, a hard link into the immutable folder was ``link_not_permitted`` (403), blaming the link."""
    refused = ("refused", "destination_not_writable 409")
    for name in ("immutable", "read-only"):
        assert stage(site, method, "open.bin", f"{name}/") == refused, name
        assert stage(site, method, "open.bin", f"{name}/new/") == refused, name
        assert not list(frozen_folders[name].iterdir())
    assert stage(site, method, "open.bin", "open/new/")[0] == "succeeded"


def test_no_answer_from_the_kernel_grants_nothing(site, monkeypatch):
    """The child asking the kernel cannot start (its program is missing), says nothing (a program that
    cannot ask: ``true``) or does not answer in time: a 503 ``access_check_unavailable``, never a grant nor
    a refusal, nothing written."""
    reader = reader_for("nobody")
    assert reader is not None
    area = site / "homes" / "nobody" / "staging"
    faults = (("FIND", "/nonexistent/find"), ("FIND", shutil.which("true")), ("CHILD_TIMEOUT", 1e-6))
    for fault, value in faults:
        with monkeypatch.context() as patched:
            patched.setattr(access, fault, value)
            with pytest.raises(StagingError) as raised:
                check_user_may_read(site / "archive" / "open.bin", reader)
            assert (raised.value.code, raised.value.status) == ("access_check_unavailable", 503)
            assert "Traceback" not in raised.value.message and "nonexistent" not in raised.value.message
            for method in ("local_copy", "direct_download"):
                assert stage(site, method, "open.bin") == ("refused", "access_check_unavailable 503"), fault
    assert not [p for p in area.rglob("*") if not p.is_dir()] if area.exists() else True


def test_a_folder_the_service_makes_for_nobody_else_is_asked_about(site):
    """A folder the call makes but does not give to the user (no owner given) is root's, 0755: the kernel
    is asked about it after it is made, and the user may not write there (the folders the call gives the
    user are not asked about again: see the next staging test)."""
    reader = reader_for("nobody")
    assert reader is not None
    area = site / "homes" / "nobody" / "staging"
    area.mkdir()
    os.chown(area, NOBODY_UID, NOBODY_UID)
    areas = UserAreas(str(site / "homes" / "{username}" / "staging"))
    with pytest.raises(StagingError) as raised:
        areas.open_target("nobody", "made/", "open.bin", reader=reader)
    assert (raised.value.code, raised.value.status) == ("destination_not_writable", 409)
    assert not list((area / "made").iterdir())
    assert stage(site, "local_copy", "open.bin", "given/deeper/")[0] == "succeeded"
    assert (area / "given" / "deeper").stat().st_uid == NOBODY_UID
