"""Changes to a job's resume data, written as they happen instead of the whole resume data each time.

The resume data (``JobRecord.resume``) lists every item of a job. A conversion records a few small
entries per table (the folder it claims, the version it converts, each part's table and size, the mark
that it is converted); writing the whole resume data for each of them cost O(items) per table, so a folder
of N small tables cost O(N²) (1,000 five-row CSV files: 75 s, 2,000: about 210 s). Each write now adds one
row of changes (``staging_resume_changes``, migration 0006), applied in order on top of the last whole
write when the resume data is read; a whole write (:meth:`~jupyter_staging.engine.store.Store.write_chunks`
with ``resume``) replaces them. The runner writes the whole resume data again once the changes since the
last whole write outnumber the entries it held then (:func:`compaction_due`), and at the end of every run:
every change is then rewritten a bounded number of times, and a job of N tables costs O(N).

A change is a JSON list, one of:

- ``["put", key, name, value]``: ``resume[key][name] = value`` (``resume[key]`` made a dict if missing);
- ``["drop", key, name]``: ``resume[key].pop(name)`` when there;
- ``["add", key, value]``: ``value`` appended to the list ``resume[key]`` (made if missing) unless it
  holds it already.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Changes written since the last whole write below which the resume data is never rewritten whole for
#: them (:func:`compaction_due`): a small job's changes stay a few rows.
MIN_CHANGES_BEFORE_COMPACTION = 256


def put(key: str, name: str, value: Any) -> list[Any]:
    """The change ``resume[key][name] = value``."""
    return ["put", key, name, value]


def drop(key: str, name: str) -> list[Any]:
    """The change removing ``resume[key][name]``."""
    return ["drop", key, name]


def add(key: str, value: Any) -> list[Any]:
    """The change appending ``value`` to the list ``resume[key]`` (once)."""
    return ["add", key, value]


def apply_changes(resume: dict[str, Any] | None, writes: Iterable[list[list[Any]]]) -> dict[str, Any] | None:
    """``resume`` (freshly read: changed in place) with ``writes`` (the rows of changes, in the order they
    were written) applied; ``resume`` as it is when there are none. An unknown operation (a newer
    release's) is ignored. A list that ``add`` changes grew keeps each value once, in first-seen order (a
    value added by a change and by a whole write taken meanwhile is not doubled). Costs O(changes + the
    lists they grew)."""
    result = resume
    added: set[str] = set()
    for changes in writes:
        if result is None:
            result = {}
        for op, key, *args in changes:
            if op == "put":
                target = result.get(key)
                if not isinstance(target, dict):
                    target = result[key] = {}
                target[args[0]] = args[1]
            elif op == "drop":
                target = result.get(key)
                if isinstance(target, dict):
                    target.pop(args[0], None)
            elif op == "add":
                values = result.get(key)
                if not isinstance(values, list):
                    values = result[key] = []
                values.append(args[0])
                added.add(key)
    for key in added:
        assert result is not None
        result[key] = list(dict.fromkeys(result[key]))
    return result


def compaction_due(changes_since_whole: int, entries_then: int) -> bool:
    """True when the resume data should be written whole again: ``changes_since_whole`` changes were
    written since the last whole write, more than both :data:`MIN_CHANGES_BEFORE_COMPACTION` and
    ``entries_then``, the entries the resume data held at that write (the items it lists, and the entries
    of its other maps and lists: what a whole write costs). As the changes add entries, the whole writes
    come at geometrically growing intervals: O(entries) in all, however many there are."""
    return changes_since_whole > max(MIN_CHANGES_BEFORE_COMPACTION, entries_then)
