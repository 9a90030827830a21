"""The local folder checks: ``staging folder`` (``<root_dir>/<staging_dir>``, or its nearest existing
parent, takes a probe file and has free space), ``scratch folder`` (the same for ``StagingApp.scratch_dir``
when set, and no other account can write where it is) and ``source root`` (each
``StagingApp.source_roots`` folder exists and can be listed)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from jupyter_staging.cli.model import FAIL, OK, WARN, Check, DoctorSettings, existing_ancestor
from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.paths import resolve_destination

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
    """``StagingApp.scratch_dir`` (relative to ``root_dir``, or absolute), where jobs writing to object
    storage prepare their files: writable with free space, as the staging folder. Outside the root it is
    used by path, so a folder (or the nearest existing parent it will be created in) that another account
    can write to, or a symlink, is a warning. Empty: ``ok``, the scratch is below the staging folder."""
    if not settings.scratch_dir:
        return Check(
            SCRATCH,
            OK,
            "StagingApp.scratch_dir is empty: jobs writing to S3 or Azure prepare their files in "
            f"{settings.staging_dir}/.staging-scratch below the root",
        )
    root = Path(settings.root_dir).expanduser()
    target = root / Path(settings.scratch_dir).expanduser()
    existing = existing_ancestor(target)
    if existing.exists() and not existing.is_dir():
        return Check(
            SCRATCH,
            FAIL,
            f"the scratch folder {target} cannot be created: {existing} is not a folder",
            f"move {existing} out of the way, or set StagingApp.scratch_dir to another folder",
        )
    outside = not target.absolute().is_relative_to(root.absolute())
    if outside and (exposed := _writable_by_others(target, existing)):
        return Check(
            SCRATCH,
            WARN,
            f"the scratch folder {target} is outside the root and used by path, but {exposed}",
            f"create {target} beforehand as a folder of this account with mode 0700 (mkdir -m 700), "
            "or leave StagingApp.scratch_dir empty",
        )
    return _writable_with_space(target, existing, settings.min_free_bytes, SCRATCH, "StagingApp.scratch_dir")


def _writable_by_others(target: Path, existing: Path) -> str | None:
    """Why another account could plant a link or folder at ``target`` (``existing``: it or its nearest
    existing parent), or None."""
    info = existing.lstat()
    if stat.S_ISLNK(info.st_mode):
        return f"{existing} is a symlink"
    if existing == target and info.st_uid != os.geteuid():
        return f"it belongs to another account (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        where = "it" if existing == target else f"{existing}, where it will be created,"
        return f"{where} can be written by other accounts (mode {stat.S_IMODE(info.st_mode):o})"
    return None


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
