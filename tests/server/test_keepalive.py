"""KeepAlive: the server counts as active while a job runs, within the cap; never when idle."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from jupyter_staging.server.keepalive import SETTING, KeepAlive

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_marks_activity_only_while_jobs_run_and_stops_at_the_cap() -> None:
    settings: dict[str, object] = {}
    running = [False]
    clock = Clock()
    keep = KeepAlive(settings, lambda: running[0], max_seconds=3600, now=clock)

    assert not keep.tick() and SETTING not in settings
    running[0] = True
    assert keep.tick() and settings[SETTING] == T0
    clock.now = T0 + timedelta(minutes=59)
    assert keep.tick() and settings[SETTING] == clock.now
    clock.now = T0 + timedelta(minutes=61)
    assert not keep.tick() and settings[SETTING] == T0 + timedelta(minutes=59)  # capped
    # Jobs end, a new one starts: the cap counts again from then.
    running[0] = False
    clock.now = T0 + timedelta(minutes=62)
    assert not keep.tick()
    running[0] = True
    assert keep.tick() and settings[SETTING] == clock.now


def test_no_cap_and_a_failing_query_are_harmless() -> None:
    settings: dict[str, object] = {}
    clock = Clock()
    keep = KeepAlive(settings, lambda: True, max_seconds=0, now=clock)
    clock.now = T0 + timedelta(days=3)
    assert keep.tick() and settings[SETTING] == clock.now

    def broken() -> bool:
        raise RuntimeError("database is locked")

    assert not KeepAlive(settings, broken).tick()
