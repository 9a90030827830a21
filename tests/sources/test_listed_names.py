"""Keys below an S3 / Azure prefix are not file names: a part longer than a file name may be, holding
control characters, ending in ``.part`` or named ``manifest.json`` at the top. Each becomes a safe, stable,
distinct name inside the destination, and the job succeeds with its own manifest (a prefix holding a
``manifest.json`` object used to fail ``internal_error`` after overwriting nothing but its own manifest, a
300-byte key part failed ``internal_error`` with ``ENAMETOOLONG``, ``a.fits.part`` collided with the part
file of ``a.fits``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import InvalidRequest
from jupyter_staging.sources.base import SAFE_NAME_BYTES, SourceItem, distinct_names, listed_name
from jupyter_staging.sources.s3 import S3Source
from tests.helpers.managers import manager_for

LONG = "y" * 300 + ".fits"
HOSTILE_KEYS = [
    "manifest.json",
    "MANIFEST.JSON",
    "sub/manifest.json",
    "a.fits",
    "a.fits.part",
    LONG,
    "long/" + "z" * 400 + "/f.csv",
    "tab\tname.csv",
    "esc\x1b[31m.txt",
    "é" * 200 + ".fits",
]


def test_plain_names_are_kept_and_unsafe_ones_become_distinct_safe_names():
    assert listed_name("data/kplr.fits") == "data/kplr.fits"
    assert listed_name("sub/manifest.json") == "sub/manifest.json"  # only the job folder's own is reserved
    for skipped in ("../x", "a//b", ".hidden", "a/./b", "a/", ".git/config", ".zattrs/x", "a/.zarray.bak"):
        assert listed_name(skipped) is None
    for zarr in (".zgroup", "cube.zarr/.zarray", "cube.zarr/flux/.zattrs", ".zmetadata"):
        assert listed_name(zarr) == zarr  # a Zarr v2 store's metadata: data, not a hidden setting
    names = [listed_name(key) for key in HOSTILE_KEYS]
    assert len(set(names)) == len(names)
    for key, name in zip(HOSTILE_KEYS, names, strict=True):
        assert name is not None and name == listed_name(key)  # stable across listings
        for part in name.split("/"):
            assert len(part.encode()) <= SAFE_NAME_BYTES, key
            assert not part.lower().endswith(".part"), key
            assert part.isprintable(), key
        assert name.lower() != "manifest.json"
    assert listed_name("a.fits.part") != listed_name("a.fits_part")
    assert listed_name(LONG).endswith(".fits")


def stage_prefix(s3, bucket: str, bodies: dict[str, bytes], tmp_path: Path) -> tuple[str, Path]:
    """Put ``bodies`` (key -> bytes) below ``p/`` and stage ``s3://bucket/p/`` into ``out`` with a manager of
    ``tmp_path``; asserts the job succeeded within 60 s. Returns the job's id and the output folder."""
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"p/{key}", Body=body)
    (tmp_path / "root").mkdir()
    manager = manager_for(tmp_path)
    try:
        job, _ = manager.create(CreateJob(source=f"s3://{bucket}/p/", destination="out"))
        deadline = time.monotonic() + 60
        while manager.get(job.id).state.value not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
        done = manager.get(job.id)
        assert done.state.value == "succeeded", done.error
    finally:
        manager.stop()
    return job.id, tmp_path / "root" / "out"


@pytest.mark.slow
def test_s3_prefix_with_hostile_keys_stages_every_object_inside_the_destination(s3_env, tmp_path: Path):
    s3, bucket = s3_env
    bodies = {key: f"object {i}: {key!r}".encode() for i, key in enumerate(HOSTILE_KEYS)}
    job_id, out = stage_prefix(s3, bucket, bodies, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job_id"] == job_id
    paths = {o["path"] for o in manifest["objects"]}
    assert len(paths) == len(HOSTILE_KEYS)
    staged = {p.read_bytes() for p in out.rglob("*") if p.is_file() and p != out / "manifest.json"}
    assert staged == set(bodies.values())
    assert not list(out.rglob("*.part"))
    items = S3Source(f"s3://{bucket}/p/").list_items()
    assert sorted(i.name for i in items) == sorted(paths)


def test_a_key_named_like_a_changed_name_is_changed_too():
    """``a~00701940.fits_part`` is what ``a.fits.part`` becomes: a key so named literally was kept and both
    objects went to one file (the job failed verification_failed, 'the partial file was replaced', leaving
    one object published and the other set aside)."""
    changed = listed_name("a.fits.part")
    assert changed is not None
    assert listed_name(changed) not in (changed, None)
    assert listed_name(changed) == listed_name(changed)  # stable
    assert listed_name("sub/" + changed) == "sub/" + listed_name(changed)
    assert listed_name("a~0070194.fits") == "a~0070194.fits"  # not a tag: kept
    assert listed_name("run~2024.fits") == "run~2024.fits"


def _item(key: str) -> SourceItem:
    return SourceItem(name=key, size=1, locator=f"s3://b/p/{key}")


def test_two_objects_staged_to_one_path_are_refused_before_any_byte_moves():
    assert distinct_names([_item("a"), _item("b/c")], "s3://b/p/", "object")
    for clash in (["a", "a"], ["d", "d/x.fits"], ["d/e/x.fits", "d/e"]):
        with pytest.raises(InvalidRequest, match="would both be staged"):
            distinct_names([_item(name) for name in clash], "s3://b/p/", "object")


@pytest.mark.slow
def test_s3_prefix_with_a_key_named_like_a_changed_name_stages_both(s3_env, tmp_path: Path):
    s3, bucket = s3_env
    changed = listed_name("a.fits.part")
    bodies = {"a.fits.part": b"first object", changed: b"second object, named as the first is changed to"}
    _, out = stage_prefix(s3, bucket, bodies, tmp_path)
    staged = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"}
    assert sorted(staged.values()) == sorted(bodies.values())
    assert len(staged) == 2
