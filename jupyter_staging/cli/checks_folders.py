"""The local folder checks: ``staging folder`` (``<root_dir>/<staging_dir>``, or its nearest existing
parent, takes a probe file and has free space), ``scratch folder`` (the same for ``StagingApp.scratch_dir``
when set; outside the root, a folder no other account controls) and ``source root`` (each
``StagingApp.source_roots`` folder exists and can be listed)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from jupyter_staging.cli.model import FAIL, OK, WARN, Check, DoctorSettings, existing_ancestor
from jupyter_staging.destinations.base import scratch_root_of, within
from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.paths import resolve_destination
from jupyter_staging.safety.privatedir import path_exposure

STAGING = "staging folder"
SCRATCH = "scratch folder"
SOURCE_ROOT = "source root"


def check_staging_folder(settings: DoctorSettings) -> Check:
    """``root_dir/staging_dir`` is allowed, writable (a probe file, created and deleted), with free space."""
    root = Path(settings.root_dir).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        return Check(
            STAGING,
            FAIL,
            f"the server's root_dir {root} {what}",
            "pass --root-dir (or set ServerApp.root_dir) to the folder the Jupyter server serves",
        )
    rel = settings.staging_dir.replace("\\", "/").strip("/")
    target = root.joinpath(*[p for p in rel.split("/") if p]) if rel else root
    existing = existing_ancestor(target)
    if existing != target and existing.exists() and not existing.is_dir():
        return Check(
            STAGING,
            FAIL,
            f"the staging folder {target} cannot be created: {existing} is a file, not a folder",
            f"move {existing} out of the way, or set StagingApp.staging_dir to a folder under {root}",
        )
    try:
        resolve_destination(root, rel)
    except PathNotAllowed as exc:
        return Check(
            STAGING,
            FAIL,
            f"StagingApp.staging_dir {settings.staging_dir!r} is refused: {exc.message}",
            f"set StagingApp.staging_dir to a plain folder under {root} (no '..', dot-folders or "
            "symlinks), e.g. staging",
        )
    return _writable_with_space(target, existing, settings.min_free_bytes)


def check_scratch_folder(settings: DoctorSettings) -> Check:
    """``StagingApp.scratch_dir`` (:func:`~jupyter_staging.destinations.base.scratch_root_of`), where jobs
    writing to object storage prepare their files: writable with free space, as the staging folder. One
    outside the root must be a folder no other account controls, nor any folder or link on its way
    (:func:`~jupyter_staging.safety.privatedir.path_exposure`, which jobs check at their start: ``fail``
    otherwise); one still to be made in a folder other accounts may write into is a warning (another
    account could make it first). Empty: ``ok``, the scratch is below the staging folder."""
    if not settings.scratch_dir:
        return Check(
            SCRATCH,
            OK,
            "StagingApp.scratch_dir is empty: jobs writing to S3 or Azure prepare their files in "
            f"{settings.staging_dir}/.staging-scratch below the root",
        )
    root = Path(settings.root_dir).expanduser().resolve()
    target = scratch_root_of(root, settings.staging_dir, settings.scratch_dir)
    existing = existing_ancestor(target)
    if existing.exists() and not existing.is_dir():
        return Check(
            SCRATCH,
            FAIL,
            f"the scratch folder {target} cannot be created: {existing} is not a folder",
            f"move {existing} out of the way, or set StagingApp.scratch_dir to another folder",
        )
    fix = (
        f"create {target} beforehand as a folder of this account with mode 0700 (mkdir -m 700), or leave "
        "StagingApp.scratch_dir empty"
    )
    if not within(target, root) and existing.exists():
        try:
            problem = path_exposure(existing)
        except OSError as exc:
            problem = f"{existing} cannot be looked at ({exc.strerror or exc})"
        if problem:
            return Check(SCRATCH, FAIL, f"the scratch folder {target} is not private: {problem}", fix)
        mode = existing.stat().st_mode
        if existing != target and mode & (stat.S_IWGRP | stat.S_IWOTH):
            return Check(
                SCRATCH,
                WARN,
                f"the scratch folder {target} will be made in {existing}, which other accounts can write "
                f"into (mode {stat.S_IMODE(mode):o}): one could make it first, and jobs would refuse it",
                fix,
            )
    return _writable_with_space(target, existing, settings.min_free_bytes, SCRATCH, "StagingApp.scratch_dir")


def _writable_with_space(
    target: Path,
    existing: Path,
    min_free_bytes: int,
    name: str = STAGING,
    setting: str = "StagingApp.staging_dir",
) -> Check:
    """``existing`` (``target`` or its nearest existing parent) takes a probe file and has at least
    ``min_free_bytes`` free. ``name``: the check's name; ``setting``: the setting a fix names."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".jupyter-staging-doctor-", dir=existing)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return Check(
            name,
            FAIL,
            f"cannot write in {existing}: {exc.strerror or exc}",
            f"give the account running Jupyter write access to {existing} (chown/chmod), or set "
            f"{setting} to a folder it can write",
        )
    free = shutil.disk_usage(existing).free
    later = "" if existing == target else f" (created by the first job; {existing} is writable)"
    if free < min_free_bytes:
        return Check(
            name,
            WARN,
            f"the {name} {target}{later} has only {format_bytes(free)} free",
            f"free some space on that file system (at least {format_bytes(min_free_bytes)}), "
            f"or set {setting} / the server's root_dir to a larger one",
        )
    return Check(name, OK, f"the {name} {target} is writable{later}, {format_bytes(free)} free")


def check_source_roots(settings: DoctorSettings) -> list[Check]:
    """Each configured source root exists, is a folder, and can be listed: one check per root."""
    if not settings.source_roots:
        return [
            Check(
                "source roots",
                OK,
                "StagingApp.source_roots is empty: jobs may read any local path this account can read",
            )
        ]
    return [check_source_root(Path(raw).expanduser()) for raw in settings.source_roots]


def check_source_root(path: Path) -> Check:
    """``path`` exists, is a folder, and can be listed."""
    if not path.exists():
        dangling = " (a symlink to a missing target)" if path.is_symlink() else ""
        return Check(
            SOURCE_ROOT,
            FAIL,
            f"source root {path} does not exist{dangling}",
            f"mount or create {path}, or remove it from StagingApp.source_roots",
        )
    if not path.is_dir():
        return Check(
            SOURCE_ROOT,
            FAIL,
            f"source root {path} is not a folder",
            f"set StagingApp.source_roots to folders; replace {path} by its folder",
        )
    try:
        with os.scandir(path) as entries:
            next(entries, None)
        readable = os.access(path, os.R_OK | os.X_OK)
    except OSError as exc:
        readable, reason = False, exc.strerror or str(exc)
    else:
        reason = "permission denied"
    if not readable:
        return Check(
            SOURCE_ROOT,
            FAIL,
            f"source root {path} cannot be listed: {reason}",
            f"give the account running Jupyter read and execute access to {path}",
        )
    real = path.resolve()
    via = f" (-> {real})" if real != path.absolute() else ""
    return Check(SOURCE_ROOT, OK, f"source root {path}{via} is readable")
