"""What verifying a stated checksum costs an S3 download: the same bytes as two objects on moto's S3
server (a subprocess on 127.0.0.1), one uploaded with ``ChecksumAlgorithm="CRC64NVME"`` (what AWS adds to
every object uploaded without a checksum since December 2024), one with botocore's default CRC32. The
engine verifies the first by its CRC64NVME and the second by its ETag's MD5 (an MD5 before a 32-bit CRC:
:func:`jupyter_staging.safety.checksums.checksums_to_verify`); both take the sha256 every output gets.

Prints, per object, the job's wall seconds and this process's CPU seconds (the engine's alone: moto runs in
another process), interleaved, page cache dropped before each job. moto re-reads the whole object for every
ranged GET, so the wall times say little; the CPU seconds are the figure.

    python bench/bench_stated_checksums.py --size-mib 1024 --reps 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import benchlib
from benchlib import WORK, BenchRun, med, spread

KEYS = {"crc64nvme": "crc64nvme.bin", "md5": "md5.bin"}


def own_cpu() -> float:
    """CPU seconds (user + system) of this process alone."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_moto(port: int) -> subprocess.Popen[bytes]:
    """moto's server on 127.0.0.1:``port``, answering."""
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)  # noqa: S310 - our own server
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--port", type=int, default=45731)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    run = BenchRun("stated checksums (S3 on moto)", "drop", f"; {args.size_mib} MiB")
    proc = start_moto(args.port)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{args.port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S105 - moto's dummy key
        AWS_DEFAULT_REGION="us-east-1",
    )
    from jupyter_staging.clouds.s3 import s3_client, stated_checksums
    from jupyter_staging.engine.manager import StagingManager
    from jupyter_staging.engine.models import CreateJob

    root = WORK / "stated-checksums"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    client = s3_client()
    client.create_bucket(Bucket="bench")
    data = os.urandom(args.size_mib * benchlib.MiB)
    client.put_object(Bucket="bench", Key=KEYS["crc64nvme"], Body=data, ChecksumAlgorithm="CRC64NVME")
    client.put_object(Bucket="bench", Key=KEYS["md5"], Body=data)
    del data
    for key in KEYS.values():
        head = client.head_object(Bucket="bench", Key=key, ChecksumMode="ENABLED")
        print(f"  {key} states {sorted(stated_checksums(head))}")
    mgr = StagingManager(root / "root", db_url=f"sqlite:///{root / 'jobs.sqlite'}", sweep_interval=0)
    (root / "root").mkdir()
    mgr.start()
    cpu: dict[str, list[float]] = {}

    def job(verified: str) -> float:
        shutil.rmtree(root / "root" / "out", ignore_errors=True)
        run.cache.prepare()
        c0 = own_cpu()
        done = benchlib.run_job(
            mgr, CreateJob(source=f"s3://bench/{KEYS[verified]}", destination="out"), verified
        )
        cpu.setdefault(verified, []).append(own_cpu() - c0)
        return done.seconds

    try:
        times = benchlib.interleaved({name: lambda _rep, n=name: job(n) for name in KEYS}, args.reps)
    finally:
        mgr.stop()
        proc.terminate()
        proc.wait()
    results: dict[str, object] = {"size_mib": args.size_mib}
    for name in KEYS:
        seconds, cpu_s = times[name], cpu[name]
        figures = f"{med(seconds):.2f} s {spread(seconds)}, {med(cpu_s):.2f} CPU-s {spread(cpu_s)}"
        print(f"  verified by {name}: {figures}")
        results[name] = {"seconds": times[name], "cpu_s": cpu[name]}
    print(f"  CPU-s saved by the CRC64NVME: {med(cpu['md5']) - med(cpu['crc64nvme']):.2f}")
    run.finish(results, args.json)


if __name__ == "__main__":
    main()
