"""Shared helpers of the benchmarks: page-cache control, interleaved repetitions, medians, formatting, the
lines around every benchmark's figures (:class:`BenchRun`) and one timed staging job (:func:`run_job`).

Nothing here asserts on time. Every benchmark runs its candidates interleaved (the order rotates each
repetition) in one process and reports medians, because this machine's two cores are shared and its disk
speed varies (``DESIGN.md``, "Facts about the tools").
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / "_work"  # gitignored

if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from jupyter_staging.engine.manager import StagingManager
    from jupyter_staging.engine.models import CreateJob, DescribeChunk

MiB = 1024 * 1024


class PageCache:
    """Drops the page cache before a timed run when the kernel lets us (root), else warms the files.

    ``mode="drop"``: ``sync; echo 3 > /proc/sys/vm/drop_caches`` before every timed run; if that is not
    permitted, falls back to reading the inputs once so that every candidate starts equally warm.
    ``mode="warm"``: never drops; reads the inputs once before each run (measures CPU + write path).
    """

    def __init__(self, mode: str = "drop") -> None:
        self.mode = mode
        self.dropped = 0
        self.failed: str | None = None

    def prepare(self, *inputs: Path) -> None:
        """Call right before a timed run."""
        os.sync()
        if self.mode == "drop" and self.failed is None:
            try:
                with open("/proc/sys/vm/drop_caches", "w") as fh:
                    fh.write("3\n")
                self.dropped += 1
                return
            except OSError as exc:
                self.failed = f"{type(exc).__name__}: {exc.strerror or exc}"
        for path in inputs:  # fallback / warm mode: same (warm) start for everyone
            warm(path)

    def describe(self) -> str:
        if self.mode == "warm":
            return "page cache: WARM (inputs read into the cache before each run; not dropped)"
        if self.failed is None:
            return f"page cache: dropped before every timed run ({self.dropped}x sync + drop_caches=3)"
        return (
            f"page cache: NOT dropped ({self.failed}); inputs were read into the cache before each run "
            "instead, so every candidate started warm"
        )


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(16 * MiB):
            pass


def interleaved(
    candidates: Mapping[str, Callable[[int], float]],
    reps: int,
    *,
    before: Callable[[str, int], None] | None = None,
    after: Callable[[str, int], None] | None = None,
    log: Callable[[str], None] = print,
    cpu: dict[str, list[float]] | None = None,
    first_rep: int = 0,
    total_reps: int | None = None,
) -> dict[str, list[float]]:
    """Run each candidate ``reps`` times, interleaved, rotating the order every repetition.

    ``candidates[name](rep)`` runs once and returns its own measured seconds (so that set-up and
    clean-up stay outside the timing). ``before``/``after`` are called around each run, untimed.
    Returns ``{name: [seconds per repetition]}`` (index = repetition); ``cpu``, when given, receives
    the CPU seconds (this process + its children) each run used. ``first_rep`` / ``total_reps``: for a
    caller that runs one repetition at a time of several groups of candidates (the order keeps rotating,
    the log line counts out of ``total_reps``).
    """
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(first_rep, first_rep + reps):
        k = rep % len(names)
        order = names[k:] + names[:k]
        line = []
        for name in order:
            if before is not None:
                before(name, rep)
            c0 = CpuClock.now()
            seconds = candidates[name](rep)
            if cpu is not None:
                cpu.setdefault(name, []).append(CpuClock.now() - c0)
            if after is not None:
                after(name, rep)
            times[name].append(seconds)
            line.append(f"{name} {seconds:.2f}s")
        log(f"  rep {rep + 1}/{total_reps or reps}: " + ", ".join(line))
    return times


class CpuClock:
    """CPU seconds (user + system) of this process and its waited-for children, between two reads.

    On a shared machine the wall time of a run depends on the neighbours; the CPU time a candidate
    itself burns is a steadier second opinion.
    """

    @staticmethod
    def now() -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            total += r.ru_utime + r.ru_stime
        return total


def ratios(baseline: Sequence[float], candidate: Sequence[float]) -> list[float]:
    """Per-repetition ``baseline / candidate`` (≥ 1: the candidate is as fast as the baseline)."""
    return [b / c for b, c in zip(baseline, candidate, strict=True)]


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    return f"[{min(values):.2f}..{max(values):.2f}]"


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def timed_run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def machine() -> str:
    cpus = os.cpu_count()
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) / 1024 / 1024
    except OSError:
        mem = float("nan")
    return f"python {sys.version.split()[0]}, {cpus} cpus, {mem:.0f} GiB RAM"


class MachineLoad:
    """How busy the whole machine was between ``start()`` and ``stop()``, from ``/proc/stat``:
    busy core-seconds of everyone vs of this process tree (the rest is the neighbours)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.cpu0 = CpuClock.now()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except OSError:
            return float("nan")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        steal = fields[7] if len(fields) > 7 else 0
        return (sum(fields[:8]) - idle - steal) / os.sysconf("SC_CLK_TCK")

    def describe(self) -> str:
        wall = time.monotonic() - self.t0
        busy = self._busy() - self.busy0
        ours = CpuClock.now() - self.cpu0
        cores = os.cpu_count() or 1
        others = max(0.0, busy - ours)
        return (
            f"machine load over {wall:.0f} s: {busy / wall:.2f} of {cores} cores busy, of which this "
            f"benchmark {ours / wall:.2f} and other processes {others / wall:.2f}; load average "
            f"{os.getloadavg()[0]:.1f}"
        )


def peak_rss_reset() -> None:
    """Reset this process's ``VmHWM`` (Linux: ``5 > /proc/self/clear_refs``); ignored where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5\n")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """This process's peak resident set since the last :func:`peak_rss_reset` (``VmHWM``), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class BenchRun:
    """What a benchmark prints around its figures: a first line naming it and the machine, and at the
    end the page-cache mode, the machine's load and the CPU seconds of the whole run; the figures are
    written as JSON when asked.

    ``cache_mode``: ``"drop"`` or ``"warm"`` (:class:`PageCache`); ``note`` ends the first line.
    """

    def __init__(self, name: str, cache_mode: str, note: str = "") -> None:
        self.cache = PageCache(cache_mode)
        print(f"# {name}: {machine()}{note}", flush=True)
        self.load = MachineLoad()
        self.cpu0 = CpuClock.now()

    def finish(self, results: dict[str, Any], json_path: Path | None) -> dict[str, Any]:
        """Add ``cache`` and ``load`` (descriptions) to ``results``, print them with the CPU seconds of
        the run, write ``results`` to ``json_path`` when given; returns ``results``."""
        results |= {"cache": self.cache.describe(), "load": self.load.describe()}
        print(f"# {results['cache']}\n# {results['load']}; {CpuClock.now() - self.cpu0:.0f} CPU-s in all")
        if json_path is not None:
            json_path.write_text(json.dumps(results, indent=2))
        return results


@dataclass(frozen=True)
class FinishedJob:
    """A staging job :func:`run_job` ran to success."""

    job_id: str
    #: From ``create()`` to the job's ``finished_at``, seconds.
    seconds: float
    #: This process's peak resident set during the job (``VmHWM``), MiB.
    peak_rss_mib: float
    #: The job's chunk records.
    chunks: list[DescribeChunk]


def run_job(mgr: StagingManager, request: CreateJob, what: str) -> FinishedJob:
    """Create ``request`` on the started manager ``mgr`` (no HTTP in front) and wait for its end (at most
    an hour), with this process's peak RSS reset before. Raises :class:`SystemExit` naming ``what`` when
    the job did not succeed."""
    # deferred: importing this module first puts the checkout on sys.path (above)
    from jupyter_staging.engine.models import JobState

    peak_rss_reset()
    started = time.time()
    job, _ = mgr.create(request)
    done = mgr.wait(job.id, timeout=3600)
    peak = peak_rss_mib()
    if done.state != JobState.succeeded or done.finished_at is None:
        raise SystemExit(f"{what}: job {done.state}: {done.error}")
    seconds = done.finished_at.timestamp() - started
    return FinishedJob(job.id, seconds, peak, mgr.chunks(job.id, urls=False))
