"""A run's bookkeeping of its job's resume data: changes written as rows of their own, whole writes now
and then (:mod:`~jupyter_staging.engine.resumechanges`).

:class:`ResumeBook` is a mixin of :class:`~jupyter_staging.engine.items.ItemStager`: code that changes one
entry of the resume data calls :meth:`~ResumeBook._resume_put`, :meth:`~ResumeBook._resume_drop` or
:meth:`~ResumeBook._resume_add`; the next flush of chunk records (``ItemStager._flush_chunks``) writes the
change in the same transaction, taking it with :meth:`~ResumeBook._take_resume`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from jupyter_staging.engine.records import json_copy
from jupyter_staging.engine.resumechanges import add, compaction_due, drop, put
from jupyter_staging.engine.schema import (
    BYTES_COLUMNS,
    NOT_CONVERTED,
    PART_BYTES,
    SHOWN_PART_BYTES,
    JobRecord,
)

#: Entries of a shown part of the resume data (``not_converted``, ``bytes_columns``; ``part_bytes`` has its
#: own, :data:`~jupyter_staging.engine.schema.SHOWN_PART_BYTES`) up to which a write of changes touching it
#: writes it too (:meth:`ResumeBook._take_resume`): O(1) per write.
SHOWN_WITH_CHANGES = 256


class ResumeBook:
    """The resume data of a running job (``resume``, guarded by ``_lock``) and what of it waits to be
    written."""

    #: Engine bookkeeping persisted in ``JobRecord.resume`` (ItemStager's).
    resume: dict[str, Any]
    _lock: threading.RLock
    #: Writes the chunk records waiting, with what :meth:`_take_resume` gives (ItemStager's).
    _flush_chunks: Callable[..., JobRecord | None]

    def _init_resume_book(self) -> None:
        """Set up the bookkeeping (from ``ItemStager.__init__``)."""
        #: Items relisted (:meth:`_relist`) since the resume data was last written: the next write is whole.
        self._resume_dirty = False
        #: Changes to the resume data (:mod:`~jupyter_staging.engine.resumechanges`) that the next flush
        #: of chunk records writes with them (:meth:`_save_changes`), and how many were written since
        #: the last whole write.
        self._resume_changes: list[list[Any]] = []
        self._changes_since_whole = 0
        #: The entries the resume data held at its last whole write (None: not counted yet), and the sum
        #: of its ``part_bytes`` (None: not summed yet).
        self._entries_at_whole: int | None = None
        self._output_bytes: int | None = None
        #: ``{key: (the list resume[key], a set of its values, its length then)}`` for :meth:`_resume_has`
        #: (made again when the list is another object, or changed in length behind it).
        self._resume_sets: dict[str, tuple[list[Any], set[Any], int]] = {}

    def _save_resume(
        self, *, load_job: bool = False, events: Sequence[tuple[str, str]] = (), **job_fields: Any
    ) -> JobRecord | None:
        """Write the resume data whole now, with the chunk records waiting in the ledger (one transaction,
        so the resume data never gets ahead of the chunks it speaks of), and like :meth:`_flush_chunks`
        ``job_fields`` and ``events``; returns what it returns."""
        with self._lock:
            self._resume_dirty = True
            return self._flush_chunks(force=True, load_job=load_job, events=events, **job_fields)

    def _save_changes(
        self, *, load_job: bool = False, events: Sequence[tuple[str, str]] = (), **job_fields: Any
    ) -> JobRecord | None:
        """Write the changes made to the resume data since the last write (:meth:`_resume_put`...) now,
        with the chunk records waiting in the ledger, in one transaction: :meth:`_flush_chunks` with
        ``force`` (see :meth:`_take_resume` for when the resume data is written whole instead)."""
        return self._flush_chunks(force=True, load_job=load_job, events=events, **job_fields)

    def _take_resume(self, given: bool) -> tuple[dict[str, Any], tuple[list[list[Any]], bool] | None]:
        """What a flush writes of the resume data, taken holding ``_lock`` with the ledger's batch:
        ``(job fields, taken)``, ``taken`` to give back with :meth:`_give_back_resume` when the write fails.
        ``given``: the caller passes the resume data whole (``resume=``).

        The changes (one row, :mod:`~jupyter_staging.engine.resumechanges`): O(changes), not O(items).
        The resume data whole instead when an item was relisted, or when the changes since the last whole
        write outnumber the entries it held then
        (:func:`~jupyter_staging.engine.resumechanges.compaction_due`): the whole writes come at
        geometrically growing intervals, each entry is written a bounded number of times. The shown parts
        of the resume data go with the changes that touch them: ``output_bytes`` (the sum of the parts'
        bytes, kept in memory) always, ``part_bytes`` while it holds at most
        :data:`~jupyter_staging.engine.schema.SHOWN_PART_BYTES` parts (else None: only the sum is shown),
        ``not_converted`` and ``bytes_columns`` while they hold at most :data:`SHOWN_WITH_CHANGES` entries
        (a bigger one is shown as of the last whole write, which every end of a run makes:
        :meth:`_settle_resume`). Raises ``TypeError`` for what JSON cannot hold, having taken
        nothing."""
        whole = given or self._resume_dirty
        if not whole and self._resume_changes:
            if self._entries_at_whole is None:  # the run's start wrote it whole
                self._entries_at_whole = self._resume_size()
            since = self._changes_since_whole + len(self._resume_changes)
            whole = compaction_due(since, self._entries_at_whole)
        if whole:
            copied = {} if given else {"resume": json_copy(self.resume)}
            changes, self._resume_changes = self._resume_changes, []
            self._resume_dirty = False
            return copied, (changes, True)
        changes, self._resume_changes = self._resume_changes, []
        if not changes:
            return {}, None
        fields: dict[str, Any] = {"resume_changes": changes}
        for key in {c[1] for c in changes} & {PART_BYTES, NOT_CONVERTED, BYTES_COLUMNS}:
            shown = self.resume.get(key) or {}
            if key == PART_BYTES:
                fields["output_bytes"] = self._part_bytes_total()
                fields[key] = (dict(shown) or None) if len(shown) <= SHOWN_PART_BYTES else None
            elif len(shown) <= SHOWN_WITH_CHANGES:
                fields[key] = dict(shown) or None
        return fields, (changes, False)

    def _part_bytes_total(self) -> int:
        """The sum of the resume data's ``part_bytes`` (bytes), kept in memory by :meth:`_resume_put` and
        :meth:`_resume_drop` once first made. Called holding ``_lock``."""
        if self._output_bytes is None:
            self._output_bytes = sum(int(n) for n in (self.resume.get(PART_BYTES) or {}).values())
        return self._output_bytes

    def _give_back_resume(self, taken: tuple[list[list[Any]], bool] | None, *, written: bool) -> None:
        """After the write of what :meth:`_take_resume` took: count it (``written``), or keep it to write."""
        if taken is None:
            return
        changes, whole = taken
        if written and whole:
            self._changes_since_whole, self._entries_at_whole = 0, self._resume_size()
            return
        if written:
            self._changes_since_whole += len(changes)
            return
        self._resume_changes[:0] = changes
        if whole:
            self._resume_dirty = True

    def _settle_resume(self) -> None:
        """Write the resume data whole when changes were written since it last was (a run's end: its
        shown parts complete, and one row to read), with what waits in the ledger."""
        with self._lock:
            if self._changes_since_whole or self._resume_changes:
                self._save_resume()

    def _resume_size(self) -> int:
        """The entries the resume data holds, roughly what a whole write costs: the items it lists (its own
        and its manifest entries') and the entries of its other maps and lists."""
        entries = (self.resume.get("entries") or {}).values()
        size = sum(len(e.get("items") or []) for e in entries)
        return size + sum(len(v) for v in self.resume.values() if isinstance(v, (dict, list)))

    def _resume_put(self, key: str, name: str, value: Any) -> None:
        """``resume[key][name] = value``, written with the next flush as a change."""
        with self._lock:
            target = self.resume.setdefault(key, {})
            if key == PART_BYTES:
                self._output_bytes = self._part_bytes_total() + int(value) - int(target.get(name) or 0)
            target[name] = value
            self._resume_changes.append(put(key, name, value))

    def _resume_drop(self, key: str, name: str) -> None:
        """Remove ``resume[key][name]`` (when there), written with the next flush as a change."""
        with self._lock:
            if name in self.resume.get(key, {}):
                if key == PART_BYTES:
                    self._output_bytes = self._part_bytes_total() - int(self.resume[key][name] or 0)
                del self.resume[key][name]
                self._resume_changes.append(drop(key, name))

    def _resume_add(self, key: str, value: Any) -> bool:
        """Append ``value`` to the list ``resume[key]`` unless it holds it, written with the next flush as a
        change. Returns False when it held it."""
        with self._lock:
            values = self.resume.setdefault(key, [])
            if self._resume_has(key, value):
                return False
            values.append(value)
            known = self._resume_sets[key]
            known[1].add(value)
            self._resume_sets[key] = (values, known[1], len(values))
            self._resume_changes.append(add(key, value))
            return True

    def _resume_has(self, key: str, value: Any) -> bool:
        """True when the list ``resume[key]`` holds ``value``: O(1), through a set kept beside the list."""
        with self._lock:
            values = self.resume.get(key)
            if not isinstance(values, list):
                return False
            known = self._resume_sets.get(key)
            if known is None or known[0] is not values or known[2] != len(values):
                known = self._resume_sets[key] = (values, set(values), len(values))
            return value in known[1]
