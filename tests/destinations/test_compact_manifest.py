"""``compact_manifest`` gives the bytes ``json.dumps(json.loads(data))`` gave, one list element at a time.

``GET /jobs/{id}/manifest`` answered ``json.dumps`` of the parsed ``manifest.json``: one ``json.loads`` and
one ``json.dumps`` of 6-8 MB for 20,000 files, each a C call holding the GIL 40-115 ms. The answer is now
made a value or list element at a time; these tests hold it to the bytes of before for any file, the
engine's layout, older layouts (``indent=2``), someone's file, and no JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_staging.destinations import manifest as manifest_module
from jupyter_staging.destinations.manifest import (
    build_manifest,
    compact_manifest,
    manifest_bytes,
    parse_manifest,
)
from jupyter_staging.engine.store import utcnow


def before(data: bytes) -> tuple[bytes, Any] | None:
    """What the answer was: ``json.dumps`` of :func:`parse_manifest` (None for no manifest)."""
    manifest = parse_manifest(data)
    return None if manifest is None else (json.dumps(manifest).encode(), manifest.get("job_id"))


def a_manifest(objects: int = 3, entries: bool = True) -> dict[str, Any]:
    now = utcnow()
    listed = [
        {
            "path": f"lc{i}.fits",
            "size": 2_039_040,
            "sha256": "ab" * 32,
            "rows": None,
            "mtime_ns": 17 * 10**17 + i,
        }
        | {"content_type": "application/fits", "fingerprint": {"size": 1, "inode": i}, "entry": "a é ✓"}
        for i in range(objects)
    ]
    return build_manifest(
        job_id="4f1c",
        name="sector \u2603",
        source="https://user:secret@archive.example/x?sig=1",
        method="copy",
        convert={"format": "parquet", "rows": 1.5e-300},
        objects=listed,
        created_at=now,
        finished_at=now,
        entries=[{"name": "a", "source": "s", "paths": [], "error": None}] if entries else None,
    )


LAYOUTS = [
    manifest_bytes(a_manifest()),  # the engine's own
    manifest_bytes(a_manifest(0, entries=False)),  # no object: "objects": []
    json.dumps(a_manifest(), indent=2).encode(),  # an older release's
    json.dumps(a_manifest(), separators=(",", ":")).encode(),
    json.dumps(a_manifest(), ensure_ascii=False).encode("utf-16"),  # with its BOM, as json.loads reads
    b"\xef\xbb\xbf" + json.dumps(a_manifest(), ensure_ascii=False).encode(),  # UTF-8 with a BOM
    json.dumps(a_manifest(), ensure_ascii=False).encode("utf-32-le"),
    b' \r\n\t{ "job_id" : "x" , "objects" : [ 1 , [ ] , { } , "\\ud800" , NaN , -Infinity , 1e400 ] } \n',
    b'{"job_id": "first", "objects": [1], "job_id": "second", "objects": {"a": 2}}',  # later keys win
    b'{"objects": [[1, [2, [3]]], {"k": [4]}], "n": null, "t": true, "f": false, "x": -0.0, "e": 1E+2}',
    b"{}",
    b"{ }",
    b'{"objects": [\n\n]}',
]

NOT_A_MANIFEST = [
    b"",
    b"   ",
    b"[1, 2]",  # JSON, no object
    b'"job_id"',
    b"null",
    b"\xff\xfe\xfa",  # no UTF
    b"{",
    b'{"a": 1,}',  # trailing comma
    b'{"a": [1, 2,]}',
    b'{"a": [1 2]}',
    b'{"a": [1, 2}',
    b'{"a" 1}',
    b"{'a': 1}",
    b'{"a": 1} x',  # extra data
    b'{"a": 1}{}',
    b'{"a": [1]]}',
    b'{"a": "\x01"}',  # a control character in a string: not strict JSON
    b"{a: 1}",
    b'{"a": 1' + b"0" * 5000 + b"}",  # more digits than int() takes
    b"\xef\xbb\xbf\xef\xbb\xbf{}",  # two BOMs
]


@pytest.mark.parametrize("data", LAYOUTS)
def test_the_same_bytes_and_job_id_as_json_loads_then_dumps(data: bytes) -> None:
    expected = before(data)
    assert expected is not None
    compact = compact_manifest(data)
    assert compact is not None and (compact.body, compact.job_id) == expected


@pytest.mark.parametrize("data", NOT_A_MANIFEST)
def test_none_where_parse_manifest_gives_none(data: bytes) -> None:
    assert parse_manifest(data) is None
    assert compact_manifest(data) is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), JSON_VALUES | st.lists(JSON_VALUES, max_size=6), max_size=6),
    st.sampled_from([None, 0, 2]),
    st.sampled_from(["utf-8", "utf-16", "utf-32"]),
)
def test_any_object_in_any_layout(document: dict[str, Any], indent: int | None, encoding: str) -> None:
    data = json.dumps(document, indent=indent, ensure_ascii=encoding != "utf-8").encode(
        encoding, "surrogatepass"
    )
    expected = before(data)
    assert expected is not None
    compact = compact_manifest(data)
    assert compact is not None and (compact.body, compact.job_id) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text(alphabet='{}[]",: 0123ab\n', max_size=30).map(str.encode))
def test_any_bytes(data: bytes) -> None:
    expected = before(data)
    compact = compact_manifest(data)
    assert (None if compact is None else (compact.body, compact.job_id)) == expected


def test_each_list_element_is_decoded_and_encoded_by_itself(monkeypatch) -> None:
    """A manifest of 2,000 objects: no ``json.loads`` of it, and no ``json.dumps`` or decoding call given
    more than one of its objects (each such C call holds the GIL for as long as it runs)."""
    data = manifest_bytes(a_manifest(2000))
    decoded: list[int] = []
    encoded: list[int] = []
    decoder, dumps = manifest_module._DECODER, json.dumps

    class Counting(json.JSONDecoder):
        def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
            obj, end = decoder.raw_decode(s, idx)
            decoded.append(end - idx)
            return obj, end

    def counting_dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        text = dumps(obj, *args, **kwargs)
        encoded.append(len(text))
        return text

    monkeypatch.setattr(manifest_module, "_DECODER", Counting())
    monkeypatch.setattr(json, "dumps", counting_dumps)
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("the whole manifest was parsed at once"))
    compact = compact_manifest(data)
    monkeypatch.undo()

    assert compact is not None and compact.body == before(data)[0]  # type: ignore[index]
    one = len(json.dumps(a_manifest(1)["objects"][0]))
    assert len(decoded) >= 2000 and max(decoded) <= one + 16, (len(decoded), max(decoded))
    assert len(encoded) >= 2000 and max(encoded) <= one + 16, (len(encoded), max(encoded))
