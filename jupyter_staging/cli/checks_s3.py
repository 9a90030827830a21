"""The ``s3`` check: boto3 finds credentials and the endpoint answers a HEAD on a bucket (or, with no bucket
named, a bucket listing)."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
)

from jupyter_staging.cli.model import ENV_BUCKET, FAIL, OK, SKIP, WARN, Check, DoctorSettings, first_line
from jupyter_staging.clouds.http import describe_error
from jupyter_staging.clouds.s3 import error_code
from jupyter_staging.safety.redact import redact_text, redact_url

NAME = "s3"
#: Error codes of a key the endpoint does not know, or a secret that does not match it.
BAD_KEY_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch")
UNREACHABLE_FIX = (
    "check AWS_ENDPOINT_URL (host and port) and that the S3 service is running and reachable "
    "from this machine"
)
NAME_A_BUCKET = f"name a bucket staging uses: --s3-bucket BUCKET or {ENV_BUCKET}=BUCKET"


def check_s3(settings: DoctorSettings) -> Check:
    """boto3 finds credentials; a HEAD on the named bucket (or a bucket listing) answers."""
    bucket = settings.s3_bucket
    endpoint_env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    built = _client(settings.timeout, profile)
    if isinstance(built, Check):
        return built
    credentials, client = built
    if credentials is None and not (bucket or endpoint_env or profile):
        return Check(
            NAME,
            SKIP,
            "S3 is not configured here (no AWS credentials, profile or AWS_ENDPOINT_URL): "
            "s3:// sources and destinations would fail",
            "to use S3, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), plus "
            "AWS_ENDPOINT_URL for MinIO / Ceph",
        )
    endpoint = redact_url(client.meta.endpoint_url)
    if credentials is None:
        return Check(
            NAME,
            FAIL,
            f"no AWS credentials found for the S3 endpoint {endpoint} (NoCredentials)",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile "
            "in ~/.aws/credentials",
        )
    if not bucket:
        return check_endpoint(client, endpoint, credentials.method)
    return check_bucket(client, bucket, endpoint, credentials.method)


def _client(timeout: float, profile: str | None) -> tuple[Any, Any] | Check:
    """``(credentials or None, S3 client)`` as boto3 builds them from the environment, or the failed
    :class:`Check` when it cannot."""
    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
        client = session.client(
            "s3",
            config=BotoConfig(
                signature_version="s3v4",
                retries={"mode": "standard", "max_attempts": 1},
                connect_timeout=timeout,
                read_timeout=timeout,
            ),
        )
    except ProfileNotFound:
        return Check(
            NAME,
            FAIL,
            f"AWS_PROFILE names the profile {profile!r}, which is in no AWS config file",
            f"create it (aws configure --profile {profile}) or unset AWS_PROFILE",
        )
    except (BotoCoreError, ValueError) as exc:
        return Check(
            NAME,
            FAIL,
            f"boto3 cannot build an S3 client from this configuration: {redact_text(first_line(exc))}",
            "check AWS_ENDPOINT_URL (a full URL such as http://127.0.0.1:9000) and AWS_DEFAULT_REGION",
        )
    return credentials, client


def check_endpoint(client: Any, endpoint: str, source: str) -> Check:
    """No bucket named: the endpoint lists buckets with the credentials from ``source`` (a warning at
    best, since no bucket staging uses was checked)."""
    try:
        count = len(client.list_buckets().get("Buckets", []))
    except (NoCredentialsError, EndpointConnectionError, BotoCoreError) as exc:
        return _unreachable(endpoint, exc)
    except ClientError as exc:
        code = error_code(exc)
        if code in BAD_KEY_CODES:
            return bad_key(code, endpoint, source)
        return Check(
            NAME,
            WARN,
            f"the S3 endpoint {endpoint} answers (credentials from {source}) but may not list "
            f"buckets ({code}); no bucket was named to check",
            NAME_A_BUCKET,
        )
    return Check(
        NAME,
        WARN,
        f"the S3 endpoint {endpoint} accepts the credentials from {source} ({count} bucket(s) "
        "visible); no bucket was named to check",
        NAME_A_BUCKET,
    )


def check_bucket(client: Any, bucket: str, endpoint: str, source: str) -> Check:
    """A HEAD on ``bucket`` answers with the credentials from ``source``."""
    try:
        client.head_bucket(Bucket=bucket)
    except (EndpointConnectionError, BotoCoreError) as exc:
        return _unreachable(endpoint, exc)
    except ClientError as exc:
        return _bucket_refused(client, bucket, endpoint, source, exc)
    return Check(
        NAME,
        OK,
        f"the bucket {bucket!r} at {endpoint} is reachable with the credentials from {source}",
    )


def _bucket_refused(client: Any, bucket: str, endpoint: str, source: str, exc: ClientError) -> Check:
    """What the error answer ``exc`` to a HEAD on ``bucket`` means, and its fix."""
    code = error_code(exc)
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    if code in ("404", "NoSuchBucket", "NotFound"):
        return Check(
            NAME,
            FAIL,
            f"the bucket {bucket!r} does not exist at {endpoint} (404)",
            f"create it (aws s3 mb s3://{bucket}) or name an existing bucket with --s3-bucket / {ENV_BUCKET}",
        )
    if code in ("403", "AccessDenied", "Forbidden"):
        code = refusal_code(client, bucket) or code
        if code in BAD_KEY_CODES:
            return bad_key(code, endpoint, source)
        return Check(
            NAME,
            FAIL,
            f"access to the bucket {bucket!r} at {endpoint} was refused (403 {code}): the "
            f"credentials from {source} may not read it",
            f"grant them s3:ListBucket and s3:GetObject (s3:PutObject for destinations) on "
            f"{bucket}, or use credentials that have them",
        )
    region = headers.get("x-amz-bucket-region")
    if code in ("301", "PermanentRedirect", "400", "AuthorizationHeaderMalformed") and region:
        return Check(
            NAME,
            FAIL,
            f"the bucket {bucket!r} is in the region {region}, not {client.meta.region_name}",
            f"set AWS_DEFAULT_REGION={region}",
        )
    return Check(
        NAME,
        FAIL,
        f"the S3 endpoint {endpoint} answered {code} to a HEAD on the bucket {bucket!r}",
        "check the endpoint, the region (AWS_DEFAULT_REGION) and the bucket name",
    )


def _unreachable(endpoint: str, exc: BaseException) -> Check:
    return Check(
        NAME, FAIL, f"cannot reach the S3 endpoint {endpoint}: {describe_error(exc)}", UNREACHABLE_FIX
    )


def refusal_code(client: Any, bucket: str) -> str | None:
    """A HEAD answer has no body: ask again with a listing to learn why the bucket was refused."""
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:
        return error_code(exc)
    except BotoCoreError:
        return None
    return None


def bad_key(code: str, endpoint: str, source: str) -> Check:
    """The check failed by an unknown access key id or a refused secret key (``code``)."""
    what = "access key id is unknown to" if code == "InvalidAccessKeyId" else "secret key is refused by"
    return Check(
        NAME,
        FAIL,
        f"the AWS {what} the S3 endpoint {endpoint} ({code}; credentials from {source})",
        "fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile's keys) for this endpoint",
    )
