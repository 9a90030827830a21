"""A delegating job control: pause and cancel are the job's, progress is reported its own way."""

from __future__ import annotations

import threading

import pytest

from jupyter_staging.engine.conversion import CountedControl
from jupyter_staging.engine.ranges import _Counted
from jupyter_staging.errors import JobInterrupted
from jupyter_staging.safety.control import DelegatingControl, JobControl


def job_control() -> tuple[JobControl, list[tuple[str, object]]]:
    seen: list[tuple[str, object]] = []
    job = JobControl(
        on_bytes=lambda n: seen.append(("bytes", n)),
        on_rows=lambda n: seen.append(("rows", n)),
        log=lambda level, message: seen.append((level, message)),
    )
    return job, seen


def test_a_pause_of_the_job_stops_the_delegate_and_one_asked_of_the_delegate_stops_the_job():
    job, _ = job_control()
    part = DelegatingControl(job)
    part.check()
    job.interrupt("paused")
    assert part.interrupted
    with pytest.raises(JobInterrupted, match="paused"):
        part.check()
    with pytest.raises(JobInterrupted):
        part.wait(5)  # at once: the job is interrupted already
    other, _ = job_control()
    DelegatingControl(other).interrupt("cancelled")
    assert other.interrupted and other.reason == "cancelled"


def test_a_conversion_counts_rows_and_logs_but_not_the_bytes_it_downloaded_already():
    job, seen = job_control()
    counted = CountedControl(job)
    counted.add_bytes(100)
    counted.add_rows(7)
    counted.log("info", "part 1")
    assert seen == [("rows", 7), ("info", "part 1")]


def test_the_ranges_of_a_file_count_the_bytes_they_report_from_every_thread():
    job, seen = job_control()
    ranges = _Counted(job)

    def report() -> None:
        for _ in range(1000):
            ranges.add_bytes(3)

    threads = [threading.Thread(target=report) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ranges.add_rows(2)
    ranges.log("warning", "range retried")
    assert ranges.bytes == 12_000
    assert sum(n for kind, n in seen if kind == "bytes") == 12_000
    assert seen[-2:] == [("rows", 2), ("warning", "range retried")]
