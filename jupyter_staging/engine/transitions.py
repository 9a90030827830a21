"""Conditional state changes: what a state change expects to find, checked in its own transaction.

Two verbs may meet on one job: a cancel as its runner takes it, a pause after a cancel, two resumes at once
(a double click). Each state change they make is a compare-and-set: it names the state (and the pending
``requested`` pause or cancel) it was decided on, and the transaction that writes it reads the row again and
writes nothing when it changed meanwhile (:class:`StateChanged`): exactly one of two racing changes wins.

A cancel takes precedence over a pause: a pause never replaces a pending cancel, in a runner's control or
in the ``requested`` column (:func:`stronger`).
"""

from __future__ import annotations

from collections.abc import Callable

from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.errors import InvalidState

#: A condition on the job's row as read in the transaction of a state change.
Guard = Callable[[JobRecord], bool]

CANCELLED, PAUSED = JobState.cancelled.value, JobState.paused.value


class StateChanged(InvalidState):
    """The job changed between the read a state change was decided on and its transaction (nothing was
    written): another verb, or another runner, was first."""


class JobEnded(InvalidState):
    """The job had ended (succeeded, failed, cancelled, expired) when a state change came: a run that finds
    its job ended as it records its own end (another server's run of it ended it) records nothing."""


def found(state: JobState, requested: str | None) -> Guard:
    """The job is still in ``state`` with ``requested`` pending (None: nothing)."""
    return lambda rec: rec.state == state.value and rec.requested == requested


def in_state(*states: JobState) -> Guard:
    """The job is in one of ``states``, whatever is requested."""
    values = {s.value for s in states}
    return lambda rec: rec.state in values


def no_cancel_pending(*states: JobState) -> Guard:
    """The job is in one of ``states`` and no cancel is pending (a pause or a resume must not undo it)."""
    values = {s.value for s in states}
    return lambda rec: rec.state in values and rec.requested != CANCELLED


def held_by(runner: str, guard: Guard) -> Guard:
    """``guard``, and the job's ``runner`` is still ``runner``: no server of another host took it over
    (its lease lapsed) since that runner's run began (:mod:`~jupyter_staging.engine.leases`)."""
    return lambda rec: rec.runner == runner and guard(rec)


def stronger(pending: str | None, wanted: str) -> str:
    """The request that stands when ``wanted`` comes while ``pending`` is: a cancel outranks a pause."""
    return CANCELLED if CANCELLED in (pending, wanted) else wanted
