"""Real servers on 127.0.0.1 for tests and manual checks.

``RangeHTTPServer`` serves a folder over HTTP/1.1 with HEAD, ranges, ``If-Range``, ETags and switches that
imitate a bad network (throttling, one dropped connection, 503 answers) or a misbehaving server (ignoring
``If-Range``, short or long bodies, right or wrong ``Repr-Digest`` / ``Digest`` / ``Content-MD5``).
``MotoS3Server`` runs moto's S3 endpoint as a subprocess, ``AzuriteServer`` Microsoft's Azure Blob Storage
emulator.

Manual use::

    python tests/servers.py http DIR --port 8123 --throttle 1000000
    python tests/servers.py s3 --port 5123
"""

from __future__ import annotations

import argparse
import base64
import calendar
import email.utils
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tests.helpers.net import free_port

HOST = "127.0.0.1"
WRITE_PIECE = 64 * 1024


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    #: The client's port: one per connection, so requests that share one share it.
    client_port: int = 0

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        if self.server.owner.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        owner._log(self)
        path = unquote(urlsplit(self.path).path)
        if owner._take_failure():
            self._simple(503, "busy", retry_after=owner.retry_after)
            return
        if owner.check_expiry and _signature_expired(self.path):
            self._simple(
                403, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            )
            return
        if self.command == "HEAD" and owner.head_status is not None:
            self._simple(owner.head_status, "no HEAD here")
            return
        if path in owner.redirects:
            self.send_response(302)
            self.send_header("Location", owner.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = owner.file_for(path)
        if file is None:
            self._simple(404, "not found")
            return
        self._serve_file(file, path, body)

    def _serve_file(self, file: Path, path: str, body: bool) -> None:
        owner = self.server.owner
        st = file.stat()
        size = st.st_size
        etag = f'{"W/" if owner.weak_etags else ""}"{size}-{st.st_mtime_ns}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range") if owner.ranges else None
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range in (etag, last_modified) or owner.ignore_if_range):
            parsed = _parse_range(wanted, size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        if self.command == "GET" and owner.truncate_get_to is not None:
            end = min(end, owner.truncate_get_to - 1)  # a GET body shorter than HEAD said, and consistent
        length = max(0, end - start + 1)
        self.send_response(status)
        if owner.extra_body_bytes and body:
            self.send_header("Connection", "close")  # no length: the body ends when the connection does
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        for name, value in owner.digests_of(file, status).items():
            self.send_header(name, value)
        self.send_header("Content-Type", owner.content_type)
        if owner.send_etag:
            self.send_header("ETag", etag)
        if owner.send_last_modified:
            self.send_header("Last-Modified", last_modified)
        if owner.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        disposition = owner.content_disposition.get(path.lstrip("/"))
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        if body and length:
            self._send_body(file, start, length)
            if owner.extra_body_bytes:
                self.wfile.write(b"x" * owner.extra_body_bytes)

    def _send_body(self, file: Path, start: int, length: int) -> None:
        owner = self.server.owner
        drop_at = owner._take_drop()
        stall_at = owner._take_stall()
        short_by = owner._take_short()
        if short_by:
            drop_at = max(0, length - short_by) if drop_at is None else drop_at
        sent = 0
        with open(file, "rb") as fh:
            fh.seek(start)
            while sent < length:
                piece = fh.read(min(WRITE_PIECE, length - sent))
                if not piece:
                    break
                if stall_at is not None and sent + len(piece) >= stall_at:
                    self._stall(piece[: max(0, stall_at - sent)])
                    return
                if drop_at is not None and sent + len(piece) >= drop_at:
                    piece = piece[: max(0, drop_at - sent)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    self.wfile.write(piece)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                sent += len(piece)
                if owner.throttle_bytes_per_s:
                    time.sleep(len(piece) / owner.throttle_bytes_per_s)

    def _stall(self, head: bytes) -> None:
        """Send ``head``, then nothing more for ``stall_seconds`` with the connection open; then close it."""
        self.wfile.write(head)
        self.wfile.flush()
        self.server.owner.stopping.wait(self.server.owner.stall_seconds)
        self.close_connection = True

    def _simple(self, status: int, text: str, *, retry_after: str | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _signature_expired(target: str) -> bool:
    """True when the request target is a SigV4-presigned URL (``X-Amz-Date`` + ``X-Amz-Expires``) whose
    validity has ended, as S3 judges it."""
    query = dict(parse_qsl(urlsplit(target).query))
    if "X-Amz-Date" not in query or "X-Amz-Expires" not in query:
        return False
    signed = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    return time.time() > signed + int(query["X-Amz-Expires"])


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-``, ``bytes=a-b`` or ``bytes=-n`` -> inclusive ``(start, end)``; None if unsatisfiable."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n and size else None
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: RangeHTTPServer


class RangeHTTPServer:
    """A threaded HTTP/1.1 file server on 127.0.0.1 with ranges and switches for failure tests.

    Parameters and attributes (all may be changed while it runs):

    ``root``: folder served. ``throttle_bytes_per_s``: sleep after each 64 KiB so the body flows at
    about this rate (0: full speed). ``drop_after_bytes``: close the connection once, after sending this
    many bytes of one body. ``fail_first_n``: answer this many requests with 503 first (with
    ``Retry-After: <retry_after>`` when that is set).
    ``head_status``: answer HEAD with this status instead (e.g. 405). ``ranges``: honour ``Range``.
    ``content_disposition``: file name -> ``Content-Disposition`` value. ``redirects``: path -> Location.
    ``requests``: every request received, as :class:`LoggedRequest`.

    Misbehaviours: ``ignore_if_range``: honour ``Range`` even when ``If-Range`` names another version
    (a ``206`` of the new file). ``short_body_by``: every body ends (the connection closes) this many
    bytes before its ``Content-Length``. ``truncate_get_to``: GETs serve only the first N bytes, with a
    matching ``Content-Length`` (HEAD still says the full size). ``extra_body_bytes``: no
    ``Content-Length`` on GETs (HEAD still says the size); this many junk bytes follow the body.
    ``stall_after_bytes``: once, after this many bytes of one body, send nothing more for
    ``stall_seconds`` while keeping the connection open (a server that hangs mid-body), then close it.
    ``digest_headers``: headers to send among ``Repr-Digest`` (RFC 9530), ``Digest`` (RFC 3230) and
    ``Content-MD5`` (RFC 1864, full answers only), computed from the file; ``wrong_digests``: computed
    from other bytes. ``short_bodies_left``: when set, only this many bodies are cut by
    ``short_body_by`` (None: every body). ``weak_etags``: ETags are weak (``W/"..."``), as from a
    server that may compress. ``send_etag`` / ``send_last_modified``: False leaves that validator out
    of every answer (a server stating no version of its files). ``check_expiry``: answer a
    SigV4-presigned URL whose ``X-Amz-Date`` + ``X-Amz-Expires`` have passed with S3's ``403``
    (``Request has expired``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        port: int = 0,
        throttle_bytes_per_s: int = 0,
        drop_after_bytes: int | None = None,
        fail_first_n: int = 0,
        verbose: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.throttle_bytes_per_s = throttle_bytes_per_s
        self.drop_after_bytes = drop_after_bytes
        self.stall_after_bytes: int | None = None
        self.stall_seconds = 30.0
        #: Set when the server stops, so stalled answers end at once.
        self.stopping = threading.Event()
        self.fail_first_n = fail_first_n
        self.retry_after: str | None = None
        self.head_status: int | None = None
        self.ranges = True
        self.content_type = "application/octet-stream"
        self.content_disposition: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[LoggedRequest] = []
        self.ignore_if_range = False
        self.short_body_by = 0
        self.short_bodies_left: int | None = None
        self.truncate_get_to: int | None = None
        self.extra_body_bytes = 0
        self.digest_headers: set[str] = set()
        self.wrong_digests = False
        self.weak_etags = False
        self.send_etag = True
        self.send_last_modified = True
        self.check_expiry = False
        self.verbose = verbose
        self._lock = threading.Lock()
        self._httpd = _Server((HOST, port), _Handler)
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    # what the handler asks -------------------------------------------------------------------------

    def _log(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(
                LoggedRequest(
                    handler.command, handler.path, dict(handler.headers.items()), handler.client_address[1]
                )
            )

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_first_n > 0:
                self.fail_first_n -= 1
                return True
            return False

    def _take_drop(self) -> int | None:
        with self._lock:
            drop, self.drop_after_bytes = self.drop_after_bytes, None
            return drop

    def _take_short(self) -> int:
        with self._lock:
            if not self.short_body_by or self.short_bodies_left is None:
                return self.short_body_by
            if self.short_bodies_left <= 0:
                return 0
            self.short_bodies_left -= 1
            return self.short_body_by

    def _take_stall(self) -> int | None:
        with self._lock:
            stall, self.stall_after_bytes = self.stall_after_bytes, None
            return stall

    def digests_of(self, file: Path, status: int) -> dict[str, str]:
        """The :attr:`digest_headers` for ``file`` (of other bytes with :attr:`wrong_digests`)."""
        if not self.digest_headers:
            return {}
        data = file.read_bytes() + (b"!" if self.wrong_digests else b"")
        sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - what the header holds
        every = {"Repr-Digest": f"sha-256=:{sha}:", "Digest": f"SHA-256={sha}, MD5={md5}", "Content-MD5": md5}
        skip = {"Content-MD5"} if status == 206 else set()
        return {name: every[name] for name in self.digest_headers - skip}

    def file_for(self, path: str) -> Path | None:
        """The served file for a URL path, or None (missing, a folder, or outside the root)."""
        candidate = (self.root / path.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None

    # use ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, name: str) -> str:
        """URL of ``name`` (a path relative to the root, percent-encoded here)."""
        return f"{self.base_url}/{quote(name)}"

    def requests_for(self, name: str, method: str | None = None) -> list[LoggedRequest]:
        """Logged requests for ``name`` (optionally only ``method``)."""
        path = "/" + quote(name)
        with self._lock:
            return [
                r
                for r in self.requests
                if urlsplit(r.path).path == path and (method is None or r.method == method)
            ]

    def start(self) -> RangeHTTPServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="range-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> RangeHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """Terminate ``proc`` if it still runs; kill it after ``timeout`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def moto_server_command(port: int) -> list[str]:
    """The command line starting moto's server on 127.0.0.1:``port`` with this interpreter's moto."""
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", HOST, "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", HOST, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


class MotoS3Server:
    """moto's S3 endpoint as a subprocess on 127.0.0.1 (``endpoint_url``), stopped by :meth:`stop`.

    :meth:`start_recording` / :meth:`recorded` expose the requests moto received (method, URL,
    headers), via moto's recorder.
    """

    def __init__(self, port: int | None = None, *, startup_timeout: float = 30.0) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self.startup_timeout = startup_timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="moto-"))
        self.recording_path = self._workdir / "recording.jsonl"
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """Environment variables pointing boto3 at this server with dummy credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def apply_env(self, monkeypatch: Any) -> None:
        """Set :meth:`env` with pytest's ``monkeypatch`` and hide any real AWS configuration."""
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(self._workdir / "no-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(self._workdir / "no-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def start(self) -> MotoS3Server:
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(self.recording_path)}
        self._proc = subprocess.Popen(
            moto_server_command(self.port),
            cwd=self._workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with status {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint_url}")

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _api(self, action: str) -> None:
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/recorder/{action}", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def start_recording(self) -> None:
        """Forget earlier requests and record the following ones."""
        self._api("reset-recording")
        self._api("start-recording")

    def stop_recording(self) -> None:
        self._api("stop-recording")

    def recorded(self) -> list[dict[str, Any]]:
        """Requests recorded since :meth:`start_recording`: dicts with ``method``, ``url``, ``headers``."""
        if not self.recording_path.exists():
            return []
        entries = []
        decoder = json.JSONDecoder()
        text = self.recording_path.read_text()
        at = 0
        # moto appends one JSON object per request; concurrent requests may leave two on one line.
        while at < len(text):
            if text[at].isspace():
                at += 1
                continue
            entry, at = decoder.raw_decode(text, at)
            entries.append({k: entry.get(k) for k in ("method", "url", "headers")})
        return entries

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Azurite's well-known development account and key (public, documented; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: Environment variables that configure Azure Blob Storage (cleared around Azurite tests).
AZURE_ENV = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_URL",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)
_AZURITE_REQUEST_RE = re.compile(r"RequestMethod=(\w+) RequestURL=(\S+) RequestHeaders:(\{.*?\}) ClientIP=")


def find_azurite() -> str | None:
    """``azurite-blob``: ``$AZURITE_BLOB``, then PATH, then ``.venv/azurite`` (scripts/ci-azure-deps.sh)."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get("AZURITE_BLOB"), shutil.which("azurite-blob")]
    candidates.append(str(repo / ".venv" / "azurite" / "node_modules" / ".bin" / "azurite-blob"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class AzuriteServer:
    """``azurite-blob`` as a subprocess on 127.0.0.1, with its debug log to read the requests it got."""

    def __init__(self, command: str, *, startup_timeout: float = 60.0) -> None:
        self.command = command
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.debug_log = self.workdir / "debug.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self) -> AzuriteServer:
        # Azurite writes its database files into --location; --silent drops the access log.
        self._proc = subprocess.Popen(
            [
                self.command,
                "--blobHost", HOST,
                "--blobPort", str(self.port),
                "--location", str(self.workdir / "data"),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--silent",
                "--debug", str(self.debug_log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"azurite-blob exited with status {self._proc.returncode}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"azurite-blob did not listen on {HOST}:{self.port}")

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def mark(self) -> int:
        """A position in the request log; :meth:`requests` reads what came after it."""
        return self.debug_log.stat().st_size if self.debug_log.exists() else 0

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Requests Azurite received after ``since``: dicts with ``method``, ``url``, ``headers``."""
        with open(self.debug_log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", "replace")
        return [
            {"method": m.group(1), "url": m.group(2), "headers": json.loads(m.group(3))}
            for m in _AZURITE_REQUEST_RE.finditer(text)
        ]

    def __enter__(self) -> AzuriteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http", help="serve a folder with ranges, ETags and optional throttling")
    http.add_argument("dir")
    http.add_argument("--port", type=int, default=0)
    http.add_argument("--throttle", type=int, default=0, metavar="BYTES_PER_S")
    http.add_argument("--drop-after", type=int, default=None, metavar="BYTES")
    http.add_argument("--fail-first", type=int, default=0, metavar="N")
    s3 = sub.add_parser("s3", help="run moto's S3 server")
    s3.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "http":
        server = RangeHTTPServer(
            args.dir,
            port=args.port,
            throttle_bytes_per_s=args.throttle,
            drop_after_bytes=args.drop_after,
            fail_first_n=args.fail_first,
            verbose=True,
        )
        print(f"serving {server.root} at {server.base_url}/", flush=True)
        try:
            server._httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server._httpd.server_close()
    else:
        with MotoS3Server(args.port or None) as moto:
            print(f"moto S3 at {moto.endpoint_url}", flush=True)
            for name, value in moto.env().items():
                print(f"export {name}={value}")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
