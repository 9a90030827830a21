"""A small file system to fill for real: a tmpfs of :data:`TMPFS_SIZE` bytes mounted where a test needs a
full disk (``ENOSPC``), shared by the engine's and the hub service's tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MiB = 1024 * 1024
#: Bytes the tmpfs holds.
TMPFS_SIZE = 4 * MiB


def mount_small(folder: Path) -> Path:
    """Mount a :data:`TMPFS_SIZE` tmpfs at ``folder`` (created), or skip the test saying why not."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here: cannot make a small file system to fill")
    done = subprocess.run(  # noqa: S603 - fixed arguments
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(folder)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    return folder


def unmount(folder: Path) -> None:
    """Unmount what :func:`mount_small` mounted at ``folder`` (lazily: open descriptors do not stop it)."""
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)  # noqa: S603, S607


@contextmanager
def small_file_system(folder: Path) -> Iterator[Path]:
    """:func:`mount_small` at ``folder`` for the block, unmounted after it."""
    mount_small(folder)
    try:
        yield folder
    finally:
        unmount(folder)


@contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` (created) bind-mounted on itself read-only for the block, as a site mounts a shared
    dataset folder into a user's area; unmounted after it. Skips the test, saying why, where this process
    may not mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here: cannot make a read-only folder")
    for options in (["--bind"], ["-o", "remount,bind,ro"]):
        done = subprocess.run(  # noqa: S603 - fixed arguments
            ["mount", *options, str(folder), str(folder)],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            unmount(folder)
            pytest.skip(f"a read-only bind mount is not permitted here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        unmount(folder)


@contextmanager
def file_system_without_attributes(folder: Path) -> Iterator[Path]:
    """A ramfs mounted at ``folder`` (created) for the block, unmounted after it: a real file system that
    keeps no extended attributes (``setxattr`` answers ``ENOTSUP``, as NFS before 4.2 does), with hard
    links, symlinks and ``O_TMPFILE``. Skips the test, saying why, where this process may not mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here: cannot make a file system without extended attributes")
    done = subprocess.run(  # noqa: S603 - fixed arguments
        ["mount", "-t", "ramfs", "ramfs", str(folder)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a ramfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        unmount(folder)
