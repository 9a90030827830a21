"""This process's file descriptors: out of them for real (its soft ``RLIMIT_NOFILE`` reached, ``EMFILE``
after), and which paths they hold open."""

from __future__ import annotations

import gc
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def descriptors_to_spare(spare: int = 0) -> Iterator[None]:
    """Within: the soft limit is lowered to the descriptors open now plus ``spare``, and every one of those
    but ``spare`` is taken (the ``spare + 1``-th ``open`` fails with ``EMFILE``); the limit is restored after.
    pytest-jupyter's server runs in the test's process: it is out of descriptors too."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, saved[1]))
    held: list[int] = []
    try:
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for _ in range(min(spare, len(held))):
            os.close(held.pop())
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def open_paths(root: Path) -> list[str]:
    """The paths below ``root`` this process holds open (its descriptors' targets), once objects no longer
    referenced are collected (a file object left to the collector is closed then; a descriptor is not)."""
    gc.collect()
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            held.append(target)
    return sorted(held)
