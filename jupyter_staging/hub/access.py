"""Whether the user a call acts for may read a source or write into a folder, when the service's own
permissions would not say: the kernel answers, asked by a short-lived process running as the user.

A service running as root may read every file under the shared roots, a root-only file (mode 0600) and a
file in another group's folder (0750) alike; it must not hand the user a copy, a download or a hard link of a
file the user could not read from a terminal. Likewise it must not write, for the user, into a folder of the
user's area the user may not write into (an administrator's read-only folder there). When it runs as root and
the user is in the password database (:func:`reader_for`), each check starts ONE child process per check
(:func:`kernel_answers`): ``/usr/bin/find`` run as the user's uid, primary group and supplementary groups
(``setresuid`` before ``exec``: no capability left, an empty environment, no descriptor but the ones asked
about, ``/`` as its folder), the paths passed as arguments, never through a shell. For every path it prints
the (device, inode) the user reaches there (``stat``: search on every folder of the path, as the user) and
which of read, write and search ``access(2)`` grants the user on it. The kernel decides, so whatever the
kernel would refuse the user from a terminal is refused: mode bits, groups, POSIX ACLs with their mask,
NFSv4 ACLs (GPFS / Spectrum Scale, NFSv4 mounts), Lustre, NFS answering for the user's own credentials (not
root's, which a root-squashed export maps to ``nobody``), LSMs (SELinux, AppArmor: their inode permission
hooks), a file made immutable (``chattr +i``), a folder on a read-only mount. A file system mounted noexec
does not matter (only search is asked of folders, read of files).

- :func:`check_user_may_read` asks about the source's resolved path and compares the (device, inode) the
  user reaches there with the one the caller pinned (:func:`~jupyter_staging.safety.paths.check_source`):
  a file put there since the caller checked it, or a folder on the way swapped for a link, is refused.
- :func:`check_user_may_reach` asks for search on every folder on the way to a path the service refused.
- :func:`check_user_may` asks about folders open as descriptors, which the child inherits and names as
  ``/proc/self/fd/N``: the answer is about the very folders the service then writes into, whatever was
  renamed in their place since (:meth:`~jupyter_staging.hub.areas.UserAreas.open_target`).

Time of check, time of use: the answer holds for the moment the child asked. A file's or folder's
permissions changed after it (a ``chmod`` while a copy runs) are not looked at again, as for a user whose
``cp`` started before that ``chmod``; a different file at the source's path afterwards is the caller's
identity check's to refuse (``source_changed``). ``access(2)`` is the kernel's own answer for the inode's
permission, not an ``open(2)``: an LSM rule on ``open`` alone (SELinux ``file:open``), a lease or a
mandatory lock are not asked about, and nothing is recalled from tape (HSM) to answer. A child costs about
3 ms on the development machine (2 cores, loaded; median of 100: 2.6 ms to check a source, 2.9 ms a target's
folders, against 0.05 ms for the Python rules it replaces): 5.4 ms added to a staging call, which starts two
(the source's, the target's; one more for a refused path, one more for a folder someone else made while the
call made the target's folders). A child that cannot start or does not answer within
:data:`CHILD_TIMEOUT` seconds grants nothing: :class:`~jupyter_staging.errors.AccessCheckUnavailable` (503,
``access_check_unavailable``). A service that is not root reads and writes only what its own account may:
it is not checked again here.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jupyter_staging.errors import AccessCheckUnavailable, SourceNotFound

#: Permission bits asked for: read a file, write into a folder, search a folder.
READ, WRITE, SEARCH = 4, 2, 1

#: The program the child runs (GNU findutils: ``-readable``, ``-writable``, ``-executable`` are access(2)).
FIND = "/usr/bin/find"

#: Seconds the child may take before it is killed and the check fails (never a grant).
CHILD_TIMEOUT = 20.0

#: For each start point: ``<path>\0<device>:<inode>:<letters granted>\0`` (a path holds no NUL).
_EXPRESSION = [
    "-maxdepth", "0", "-printf", r"%p\0%D:%i:",
    "(", "-readable", "-printf", "r", ")", ",",
    "(", "-writable", "-printf", "w", ")", ",",
    "(", "-executable", "-printf", "x", ")", ",",
    "-printf", r"\0",
]  # fmt: skip
_LETTERS = {"r": READ, "w": WRITE, "x": SEARCH}
#: Asked about first in every child: no answer about it is no answer at all, never a refusal.
_ALWAYS = "/"


@dataclass(frozen=True)
class Reader:
    """A user's numeric identity as the kernel checks it: ``uid``, primary group ``gid`` and every group id
    it is in (``gids``, the primary one included)."""

    name: str
    uid: int
    gids: frozenset[int]
    gid: int


@dataclass(frozen=True)
class Answer:
    """What the kernel told the child about one path: the (device, inode) the user reaches there and the
    :data:`READ` / :data:`WRITE` / :data:`SEARCH` bits granted (or'ed)."""

    identity: tuple[int, int]
    granted: int

    def grants(self, want: int) -> bool:
        """Whether every bit of ``want`` is granted."""
        return self.granted & want == want


def reader_for(username: str) -> Reader | None:
    """The user's :class:`Reader` (uid, primary and supplementary groups) when this process runs as root
    and the user is in the password database; None otherwise (nothing to check: the service reads only
    what its own account may)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        return None
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    return Reader(entry.pw_name, entry.pw_uid, frozenset([entry.pw_gid, *groups]), entry.pw_gid)


def kernel_answers(paths: Sequence[str], reader: Reader, fds: Sequence[int] = ()) -> dict[str, Answer]:
    """Ask the kernel, in one child process running as ``reader`` (see the module's docstring), about every
    absolute path of ``paths`` (``/proc/self/fd/N`` for a descriptor of ``fds``, which the child inherits).
    Returns an :class:`Answer` for each path the user may reach (a symbolic link followed); a path missing
    from the answer is one the user may not reach (a folder on the way refused search) or that is not there.

    Raises :class:`~jupyter_staging.errors.AccessCheckUnavailable` (503) when the child cannot start, is
    killed, or does not answer within :data:`CHILD_TIMEOUT` seconds; :class:`ValueError` for a path that
    is not absolute or holds NUL (the caller's bug: a path could be taken for an expression)."""
    if not paths:
        return {}
    for path in paths:
        if not path.startswith("/") or "\x00" in path:
            raise ValueError(f"not an absolute path: {path!r}")
    try:
        done = subprocess.run(
            [FIND, "-H", _ALWAYS, *paths, *_EXPRESSION],
            user=reader.uid,
            group=reader.gid,
            extra_groups=sorted(reader.gids),
            env={},
            cwd="/",
            close_fds=True,
            pass_fds=tuple(fds),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _unavailable(reader, f"it did not answer within {CHILD_TIMEOUT:g} s") from None
    except (OSError, subprocess.SubprocessError) as err:
        raise _unavailable(reader, f"it could not start ({type(err).__name__})") from None
    if done.returncode not in (0, 1):  # 1: some path refused or missing; a signal or anything else: no answer
        raise _unavailable(reader, f"it ended with status {done.returncode}")
    try:
        answers = _parse(done.stdout)
    except (ValueError, KeyError):
        answers = {}
    if _ALWAYS not in answers:  # "/" is every user's to reach: a find that cannot ask (no -readable, say)
        raise _unavailable(reader, "its answer could not be read")
    return answers


def _parse(output: bytes) -> dict[str, Answer]:
    """The :class:`Answer` of every ``<path>\\0<device>:<inode>:<letters>\\0`` of the child's output."""
    fields = output.split(b"\0")
    if len(fields) % 2 != 1 or fields[-1]:
        raise ValueError("a cut answer")
    answers = {}
    for name, value in zip(fields[0:-1:2], fields[1::2], strict=True):
        device, inode, letters = value.decode("ascii").split(":")
        granted = sum({_LETTERS[letter] for letter in letters})
        answers[os.fsdecode(name)] = Answer((int(device), int(inode)), granted)
    return answers


def _unavailable(reader: Reader, why: str) -> AccessCheckUnavailable:
    return AccessCheckUnavailable(
        f"whether {reader.name} may read the source or write the target could not be checked ({why}); "
        "nothing was staged: try again later"
    )


def check_user_may_read(path: Path, reader: Reader, identity: tuple[int, int] | None = None) -> None:
    """Raise :class:`SourceNotFound` (403, ``permission_denied``) unless the kernel lets ``reader`` reach
    the absolute ``path`` (search on every folder from ``/`` down, as the user) and read the file, and,
    with ``identity``, the file the user reaches there is that (device, inode): the file the caller
    checked, not one put at that path since, nor one a link swapped in on the way leads to. The message
    names the path, not which folder or which bits refused. One child process (:func:`kernel_answers`);
    raises :class:`~jupyter_staging.errors.AccessCheckUnavailable` (503) when it gives no answer."""
    if reader.uid == 0:
        return
    answer = kernel_answers([str(path)], reader).get(str(path))
    if answer is None or not answer.grants(READ) or identity not in (None, answer.identity):
        raise _not_readable(str(path), reader)


def check_user_may_reach(path: str, reader: Reader) -> None:
    """Raise :class:`SourceNotFound` (403, ``permission_denied``) when a folder on the way to ``path`` as
    written (absolute, made normal without resolving links) exists and the kernel does not let ``reader``
    search it: what lies below such a folder is not the user's to learn of, so a refusal of ``path`` for
    what is there (missing, a folder, a link leaving the roots) is answered as this instead. A name on the
    way that is missing, a link or not a folder ends the look (nothing raised). One child process for the
    folders up to there (:func:`kernel_answers`); raises
    :class:`~jupyter_staging.errors.AccessCheckUnavailable` (503) when it gives no answer."""
    if reader.uid == 0 or not path.startswith("/") or "\x00" in path:
        return
    parts = Path(os.path.normpath(path)).parts
    folders = []
    for depth in range(1, len(parts)):
        step = str(Path(*parts[:depth]))
        try:
            st = os.stat(step, follow_symlinks=False)
        except OSError:
            break
        if not stat.S_ISDIR(st.st_mode):
            break
        folders.append(step)
    answers = kernel_answers(folders, reader)
    if any(folder not in answers or not answers[folder].grants(SEARCH) for folder in folders):
        raise _not_readable(path, reader)


def _not_readable(path: str, reader: Reader) -> SourceNotFound:
    return SourceNotFound(
        f"source {path!r}: {reader.name} may not read it (its permissions, or a folder's on the way); "
        "the service stages only what the user may read",
        code="permission_denied",
        status=403,
    )


def check_user_may(wanted: Sequence[tuple[int, int]], reader: Reader) -> int | None:
    """The index in ``wanted`` of the first ``(fd, bits)`` whose folder (or file) open as ``fd`` the kernel
    does not grant ``reader`` all ``bits`` of (:data:`READ`, :data:`WRITE`, :data:`SEARCH`, or'ed); None
    when it grants every one, or for root (uid 0). One child process for all of them, asked about the
    descriptors themselves (``/proc/self/fd/N``), not about a path that may lead elsewhere by then. Raises
    :class:`~jupyter_staging.errors.AccessCheckUnavailable` (503) when the child gives no answer."""
    if reader.uid == 0 or not wanted:
        return None
    paths = [f"/proc/self/fd/{fd}" for fd, _ in wanted]
    answers = kernel_answers(paths, reader, fds=sorted({fd for fd, _ in wanted}))
    for index, ((fd, bits), path) in enumerate(zip(wanted, paths, strict=True)):
        answer = answers.get(path)
        if answer is None or not answer.grants(bits) or answer.identity != _identity(fd):
            return index
    return None


def user_may(fd: int, reader: Reader, want: int) -> bool:
    """Whether the kernel grants ``reader`` the ``want`` bits (:data:`READ`, :data:`WRITE`, :data:`SEARCH`,
    or'ed) on the file or folder open as ``fd``; always for root (uid 0). One child process
    (:func:`check_user_may`, which raises as it does)."""
    return check_user_may([(fd, want)], reader) is None


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
