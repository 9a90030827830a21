"""``pick_chunk`` finds the copied file among a job's chunks without parsing every chunk's path.

The service follows a ``jupyter_copy`` by reading its job's chunks (up to ``MOST_CHUNKS``, 20,000: the user
runs that server and may make it answer that many) and picking the one named as the target. It made a
``PurePosixPath`` of every chunk's path, on the event loop: 30-40 ms for 20,000, and with the pages of other
jobs being read at once the service answered nothing for 0.1-0.2 s (``bench/bench_hub_pages.py``: its
``api/operations`` p99 119-152 ms while the hub's own ``/hub/health`` was at 37-52). Only a path holding the
name is parsed now; the chunk picked is the one it always was. Counts, never times.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_staging.hub import jupytercopy
from jupyter_staging.hub.hubapi import MOST_CHUNKS
from jupyter_staging.hub.jupytercopy import pick_chunk


def picked_before(chunks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """``pick_chunk`` as it was: every chunk's path parsed."""
    for chunk in chunks:
        if PurePosixPath(str(chunk.get("path", ""))).name == name:
            return chunk
    return chunks[0] if len(chunks) == 1 else {}


def test_only_the_paths_holding_the_name_are_parsed(monkeypatch) -> None:
    chunks = [
        {"index": i, "path": f"tess2018206045859-s0001-{i:016d}-0120-s_lc.fits"} for i in range(MOST_CHUNKS)
    ]
    name = chunks[-3]["path"]
    parsed: list[str] = []

    class Counting(PurePosixPath):
        def __new__(cls, *parts: Any) -> Any:
            parsed.append(str(parts[0]))
            return PurePosixPath(*parts)

    monkeypatch.setattr(jupytercopy, "PurePosixPath", Counting)
    assert pick_chunk(chunks, name) is chunks[-3]
    assert parsed == [name], f"{len(parsed)} paths parsed"
    parsed.clear()
    assert pick_chunk(chunks, "kplr.fits") == {} and parsed == []  # in no path: none parsed
    assert pick_chunk(chunks, "s_lc.fits") == {} and len(parsed) == MOST_CHUNKS  # in all as text: parsed


PATHS = st.text(alphabet="ab./\\ é\x00", max_size=12) | st.sampled_from(
    ["", ".", "..", "/", "a/./b", "a//b/"]
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.fixed_dictionaries({"path": PATHS | st.integers() | st.none()}), max_size=5),
    st.text(alphabet="ab. é", max_size=4) | st.sampled_from(["", ".", "..", "b"]),
)
def test_the_same_chunk_as_before(chunks: list[dict[str, Any]], name: str) -> None:
    assert pick_chunk(chunks, name) is picked_before(chunks, name) or pick_chunk(chunks, name) == {} == (
        picked_before(chunks, name)
    )


def test_named_paths_in_folders_and_odd_forms() -> None:
    chunks = [{"path": "x/lc.fits.part"}, {"path": "scratch/./lc.fits/"}, {"path": "lc.fits"}]
    assert pick_chunk(chunks, "lc.fits") is chunks[1]  # "a/./b/" names b, as before
    assert pick_chunk([{"path": "a//lc.fits"}], "lc.fits")["path"] == "a//lc.fits"
    assert pick_chunk([{"path": 7}], "7") == {"path": 7}
    assert pick_chunk([{"path": "only.fits"}], "other.fits") == {"path": "only.fits"}  # the job's only chunk
    assert pick_chunk([], "lc.fits") == {}
