"""Acknowledging every chunk of a ``delete_on_ack`` job of many small files (issue 12), through a real
:class:`~jupyter_staging.engine.manager.StagingManager` (SQLite, no HTTP): what a consumer reading and acking
each file, or a hub ``jupyter_copy``, costs as the job grows.

For each count (default 5,000 and 20,000 files of 256 bytes), one ``copy`` job with ``cleanup_policy
"delete_on_ack"`` is staged (untimed), then every chunk is acked in index order. Printed: the time to ack
them all, CPU seconds of this process over the acks, the median ms per ack of the first and of the last 200,
and SQL statements per ack (median, from an engine event listener). Per-ack time flat
between the first and the last acks, and between the counts, means the work per ack is O(1). Every run is
checked (unless ``--sample N`` acks only the first N, to see a slow per-ack time without waiting for all
of them): the job ends ``expired``, every chunk ``acked``, the destination folder gone. Usage::

    .venv/bin/python bench/bench_acks.py --counts 5000 20000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchlib import WORK, rmtree
from sqlalchemy import event

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

ROOT = WORK / "acks"


def make_source(root: Path, count: int, size: int = 256) -> Path:
    folder = root / f"src-{count}"
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"lc-{i:05d}.fits").write_bytes(i.to_bytes(4, "big") * (size // 4))
    return folder


class Reads:
    """SQL statements a store's engine runs, per call of :meth:`take`."""

    def __init__(self, mgr: StagingManager) -> None:
        self.statements = 0
        event.listen(mgr.store.engine, "before_cursor_execute", self._statement)

    def _statement(self, *_args) -> None:
        self.statements += 1

    def take(self) -> int:
        n, self.statements = self.statements, 0
        return n


def run(count: int, sample: int = 0) -> dict[str, float]:
    work = ROOT / str(count)
    rmtree(work)
    root = work / "root"
    root.mkdir(parents=True)
    source = make_source(root, count)
    mgr = StagingManager(root, db_url=f"sqlite:///{work / 'jobs.sqlite'}", sweep_interval=0)
    mgr.start()
    try:
        job, _ = mgr.create(
            CreateJob(source=str(source), destination="out", method="copy", cleanup_policy="delete_on_ack")
        )
        done = mgr.wait(job.id, timeout=1800)
        assert done.state.value == "succeeded", done
        reads = Reads(mgr)
        times, statements = [], []
        cpu0, t0 = time.process_time(), time.perf_counter()
        acks = count if not sample else min(sample, count)
        for i in range(acks):
            a = time.perf_counter()
            mgr.ack(job.id, str(i))
            times.append((time.perf_counter() - a) * 1000)
            statements.append(reads.take())
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if acks < count:  # a sample: the first acks only
            nan = float("nan")
            return {
                **dict(count=count, total_s=total, cpu_s=cpu, first_ms=statistics.median(times)),
                **dict(last_ms=nan, final_ms=nan, statements=statistics.median(statements)),
            }
        final = mgr.get(job.id)
        assert final.state.value == "expired", final
        assert all(c.state.value == "acked" for c in mgr.chunks(job.id)), "a chunk is not acked"
        assert not (root / "out").exists(), "the destination folder is still there"
        return {
            "count": count,
            "total_s": total,
            "cpu_s": cpu,
            "first_ms": statistics.median(times[:200]),
            "last_ms": statistics.median(times[-201:-1]),
            "final_ms": times[-1],
            "statements": statistics.median(statements[:-1]),
        }
    finally:
        mgr.stop()
        rmtree(work)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--sample", type=int, default=0, help="ack only the first N chunks (0: all)")
    args = parser.parse_args()
    heads = ("files", "ack all s", "CPU s", "first ms", "last ms", "final ms", "SQL/ack")
    print(" ".join(f"{h:>{max(len(h), 6)}}" for h in heads))
    for count in args.counts:
        r = run(count, args.sample)
        print(
            f"{r['count']:>6} {r['total_s']:9.1f} {r['cpu_s']:7.1f} {r['first_ms']:8.2f} {r['last_ms']:8.2f} "
            f"{r['final_ms']:8.1f} {r['statements']:7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
