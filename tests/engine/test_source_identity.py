"""Which URLs name the same object: a presigned URL signed again does, a URL of another query does not.

Job identity left out of every URL the query parameters named like signing parameters of some scheme
(Azure SAS ``sr``, ``st``, ``sp``...; SigV2 / CloudFront ``Expires``, ``Signature``, ``Policy``), signed
or not: a Simple Cone Search of radius ``SR=1.0`` was the same request as one of ``SR=0.1``, and (since
presigned URLs are refreshed by a new submit) it replaced the URL of a paused or queued job of the other
radius, which then resumed its part file from the other answer. The short names are now signing
parameters only in a URL signed by their scheme.

Real parts: a Range HTTP server on 127.0.0.1, the SQLite job database.
"""

from __future__ import annotations

import pytest

from jupyter_staging.engine.freshness import locator_identity
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import DestinationExists

CONE = "https://vo.example.org/scs?RA=180.0&DEC=2.0&SR={}"


@pytest.mark.parametrize(
    "first, second",
    [
        (CONE.format("0.1"), CONE.format("1.0")),  # VO Simple Cone Search radius
        ("https://h/cut?pos=1&sp=2", "https://h/cut?pos=1&sp=3"),
        ("https://h/get?f=a&expires=1&policy=x", "https://h/get?f=a&expires=2&policy=y"),
        ("https://h/get?f=a&Signature=s&id=1", "https://h/get?f=a&Signature=t&id=2"),  # signed, other id
    ],
)
def test_urls_of_other_queries_are_other_objects(first: str, second: str):
    assert locator_identity(first) != locator_identity(second)


@pytest.mark.parametrize(
    "first, second",
    [
        (  # Azure SAS
            "https://a.blob.core.windows.net/c/b.fits?sv=2024-05-04&se=2026-12-06T10%3A00Z&sr=b&sp=r&sig=AAA",
            "https://a.blob.core.windows.net/c/b.fits?sv=2024-05-04&se=2026-12-07T10%3A00Z&sr=b&sp=r&sig=BBB",
        ),
        (  # S3 SigV2
            "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AK&Expires=100&Signature=AAA",
            "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AK&Expires=200&Signature=BBB",
        ),
        (  # CloudFront canned policy
            "https://d.cloudfront.net/k?Expires=100&Signature=AAA&Key-Pair-Id=K1",
            "https://d.cloudfront.net/k?Expires=200&Signature=BBB&Key-Pair-Id=K1",
        ),
        (  # S3 SigV4, with a version id that stays
            "https://b.s3.amazonaws.com/k?versionId=v1&X-Amz-Date=20261206T100000Z&X-Amz-Signature=AAA",
            "https://b.s3.amazonaws.com/k?versionId=v1&X-Amz-Date=20261207T100000Z&X-Amz-Signature=BBB",
        ),
    ],
)
def test_a_url_signed_again_is_the_same_object(first: str, second: str):
    assert locator_identity(first) == locator_identity(second)


def test_a_cone_search_of_another_radius_does_not_take_over_a_paused_job(
    manager: StagingManager, range_server
):
    (range_server.root / "scs").write_bytes(b"<VOTABLE/>" * 500)
    url = range_server.url("scs") + "?RA=180.0&DEC=2.0&SR={}"
    held, _ = manager.create(CreateJob(source=url.format("0.1"), destination="cone"), start=False)
    manager.pause(held.id)
    with pytest.raises(DestinationExists):  # another object into the folder a paused job holds
        manager.create(CreateJob(source=url.format("1.0"), destination="cone"))
    rec = manager.store.get_job(held.id)
    assert rec is not None and rec.state == "paused"
    assert manager.secrets.open(rec.sealed) == {"source": url.format("0.1")}, "its URL is its own"
