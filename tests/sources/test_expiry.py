"""A presigned URL that expired (a job paused past the URL's lifetime, then resumed) used to fail with
``source_forbidden``, "access was refused", as for a URL never allowed: now ``source_expired`` says when it
expired and to presign it again; the message holds no signature, and the part file is kept. Real Range
HTTP server on 127.0.0.1 judging SigV4 expiry as S3 does."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from jupyter_staging.clouds.http_client import presigned_expiry
from jupyter_staging.errors import JobInterrupted, SourceNotFound
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.http import HTTPSource

SIGNATURE = "f" * 64


def signed(url: str, *, lifetime: int, signed_at: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if signed_at is None else signed_at))
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261206%2Fus-east-1%2Fs3"
        f"&X-Amz-Date={stamp}&X-Amz-Expires={lifetime}&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
    )


def test_expiry_is_read_from_s3_gcs_sigv2_and_azure_sas_urls():
    assert presigned_expiry("https://b.s3.amazonaws.com/k?X-Amz-Date=20261206T100000Z&X-Amz-Expires=60") == (
        datetime(2026, 12, 6, 10, 1, tzinfo=timezone.utc)
    )
    gcs = "https://storage.googleapis.com/b/k?X-Goog-Date=20261206T100000Z&X-Goog-Expires=3600"
    assert presigned_expiry(gcs) == datetime(2026, 12, 6, 11, tzinfo=timezone.utc)
    assert presigned_expiry("https://b.s3.amazonaws.com/k?Expires=1796551200&Signature=x") == datetime(
        2026, 12, 6, 10, tzinfo=timezone.utc
    )
    sas = "https://a.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-12-06T10%3A00%3A00Z&sig=x"
    assert presigned_expiry(sas) == datetime(2026, 12, 6, 10, tzinfo=timezone.utc)
    for plain in (
        "https://example.org/k.fits",
        "https://x/k?X-Amz-Date=bad&X-Amz-Expires=5",
        "https://x/k?se=no",
        # another service's own parameters, in a URL no scheme signed: no expiry, a 403 stays forbidden
        "https://example.org/data?file=a&expires=1700000000",
        "https://example.org/data?se=2023-11-14T00%3A00%3A00Z&sp=r",
    ):
        assert presigned_expiry(plain) is None


def test_a_download_resumed_after_its_url_expired_fails_source_expired(range_server, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    (range_server.root / "k.bin").write_bytes(data)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 256 * 1024
    source = HTTPSource(signed(range_server.url("k.bin"), lifetime=2))
    [item] = source.list_items()
    out = PartFile(tmp_path / item.name)
    control = JobControl(on_bytes=lambda n: control.interrupt("paused") if out.offset > 100_000 else None)
    with pytest.raises(JobInterrupted):
        source.fetch(item, out, control)
    out.close()
    kept = (tmp_path / (item.name + ".part")).read_bytes()
    assert kept and data.startswith(kept)

    time.sleep(3.5)  # the URL's two seconds are over
    again = PartFile(tmp_path / item.name, resume=True)
    with pytest.raises(SourceNotFound) as expired:
        source.fetch(item, again, JobControl())
    again.close()
    assert expired.value.code == "source_expired"
    message = str(expired.value)
    assert "expired at" in message and "presign it again" in message
    assert SIGNATURE not in message
    assert (tmp_path / (item.name + ".part")).read_bytes() == kept  # nothing lost for a later attempt
