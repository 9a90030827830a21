"""Redaction (issue 11, "Redaction misses"): every query value, path parameter value, the user-info and
the fragment of a URL are hidden, wherever the URL appears (alone, in a log line, nested in another URL,
percent-encoded), and bare credentials in free text too; parameter names stay readable."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from jupyter_staging.safety.redact import (
    REDACTED,
    SECRET_PARAMS,
    RedactingFilter,
    install_log_filters,
    redact_text,
    redact_url,
)

SECRET = "s3cr3tV4lue0123456789"
SIGNED = (
    "https://bucket.s3.amazonaws.com/data/x.fits?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1&X-Amz-Signature={SECRET}"
)

#: Every leak of the issue's bullet, as a URL holding ``SECRET``.
LEAKING_URLS = {
    "backblaze Authorization": f"https://f000.backblazeb2.com/file/b/x.fits?Authorization={SECRET}",
    "google key": f"https://storage.googleapis.com/b/x.fits?key={SECRET}&alt=media",
    "password": f"https://host/x.fits?user=me&password={SECRET}",
    "secret": f"https://host/x.fits?secret={SECRET}",
    "client_secret": f"https://host/token?client_id=app&client_secret={SECRET}",
    "code": f"https://host/callback?code={SECRET}&state=xyz",
    "auth": f"https://host/x.fits?auth={SECRET}",
    "unknown name": f"https://host/x.fits?whatever={SECRET}",
    "nested signed URL": f"https://proxy/fetch?next=1&url={SIGNED}",
    "nested percent-encoded": f"https://proxy/fetch?url={quote(SIGNED, safe='')}",
    "nested twice encoded": f"https://proxy/fetch?url={quote(quote(SIGNED, safe=''), safe='')}",
    "encoded URL in the path": f"https://proxy/get/{quote(SIGNED, safe='')}",
    "fragment": f"https://acct.blob.core.windows.net/c/x.fits#sig={SECRET}",
    "bare fragment": f"https://host/x.fits#{SECRET}",
    "semicolon query": f"https://host/x.fits?a=1;sig={SECRET};b=2",
    "path parameter": f"https://host/x.fits;jsessionid={SECRET}",
    "userinfo password": f"https://me:{SECRET}@host/x.fits",
    "userinfo token": f"https://{SECRET}@host/x.fits",
    "bare query": f"https://host/x.fits?{SECRET}",
    "s3 scheme": f"s3://bucket/x.fits?versionId={SECRET}",
    "az scheme": f"az://acct/c/x.fits?sv=2022&sig={SECRET}",
    "azure scheme": f"azure://acct/c/x.fits?sig={SECRET}",
    "http scheme": f"http://host/x.fits?token={SECRET}",
}


@pytest.mark.parametrize("url", LEAKING_URLS.values(), ids=LEAKING_URLS.keys())
def test_no_secret_survives_in_a_url_alone_or_in_a_text(url):
    assert SECRET not in redact_url(url)
    assert REDACTED in redact_url(url)
    for text in (
        f"request to {url} failed: HTTP 403",
        f"TransferFailed('cannot reach {url}')",
        f'{{"source": "{url}"}}',
        f"(see {url}).",
        f"fetching <{url}>",
        f"url={url}",
    ):
        assert SECRET not in redact_text(text), text


@pytest.mark.parametrize("url", LEAKING_URLS.values(), ids=LEAKING_URLS.keys())
def test_redacting_twice_changes_nothing(url):
    once = redact_url(url)
    assert redact_url(once) == once
    text = f"request to {url} failed, GET /k?sig={SECRET} HTTP/1.1, password={SECRET}"
    assert redact_text(redact_text(text)) == redact_text(text)


def test_every_query_value_is_replaced_and_names_are_kept():
    assert redact_url(SIGNED) == (
        "https://bucket.s3.amazonaws.com/data/x.fits?X-Amz-Algorithm=REDACTED"
        "&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
    )


def test_user_info_path_parameters_semicolons_and_fragment():
    url = f"https://me:{SECRET}@host/k;jsessionid=1?X-Amz-Signature=abc;part=2&flag#sig=x&se=2020"
    assert redact_url(url) == (
        "https://REDACTED@host/k;jsessionid=REDACTED?X-Amz-Signature=REDACTED;part=REDACTED&REDACTED"
        "#sig=REDACTED&se=REDACTED"
    )
    assert redact_url("https://host/docs#section-2") == "https://host/docs#REDACTED"


def test_a_password_holding_an_at_sign_is_hidden_whole():
    assert redact_url("https://me:p@ss@host/x") == "https://REDACTED@host/x"


def test_percent_encoded_nested_url_keeps_its_names():
    nested = quote("https://b/k?X-Amz-Signature=abc&X-Amz-Credential=xy", safe="")
    assert redact_url(f"https://proxy/get/{nested}") == (
        "https://proxy/get/https%3A%2F%2Fb%2Fk%3FX-Amz-Signature%3DREDACTED%26X-Amz-Credential%3DREDACTED"
    )
    assert redact_text(f"see {nested} there") == (
        "see https%3A%2F%2Fb%2Fk%3FX-Amz-Signature%3DREDACTED%26X-Amz-Credential%3DREDACTED there"
    )


def test_urls_without_secrets_and_other_locators_are_unchanged():
    for url in (
        "https://host/data/x.fits",
        "https://host/a?",
        "s3://bucket/prefix/",
        "/home/user/data/x.fits",
        "manifest:4 entries",
        "https://[::1",
        "",
    ):
        assert redact_url(url) == url


@pytest.mark.parametrize(
    "text",
    [
        "staging job 3f2a: item 12 of 400 copied, 1048576 bytes in 0.12 s (8.3 MB/s) to /data/x.fits",
        "no such key: data/x.fits",
        "ValueError: expected 3 columns, found 4 (row 17)",
        'Traceback (most recent call last):\n  File "/x/y.py", line 3, in <module>\n    a = b[1]\n',
        "the code is fine; the ratio is 50% = 1/2? yes.",
        "100%|##########| 4/4 [00:01<00:00, 3.1 it/s]",
        "",
    ],
)
def test_plain_text_without_urls_is_unchanged(text):
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"password={SECRET} next", "password=REDACTED next"),
        (f"client_secret={SECRET}&code=abc&auth=def", "client_secret=REDACTED&code=REDACTED&auth=REDACTED"),
        (f"Authorization={SECRET}", "Authorization=REDACTED"),
        (f"key={SECRET}", "key=REDACTED"),
        (f"secret={SECRET}", "secret=REDACTED"),
        (f"password: {SECRET}", "password: REDACTED"),
        (f'{{"db_password": "{SECRET}", "n": 1}}', '{"db_password": "REDACTED", "n": 1}'),
        (f"{{'aws_session_token': '{SECRET}'}}", "{'aws_session_token': 'REDACTED'}"),
        (f"Authorization: Bearer {SECRET}", "Authorization: Bearer REDACTED"),
        (
            f"{{'Authorization': 'Basic {SECRET}', 'Host': 'h'}}",
            "{'Authorization': 'Basic REDACTED', 'Host': 'h'}",
        ),
        (
            f"Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, Signature={SECRET}",
            "Authorization: AWS4-HMAC-SHA256 REDACTED",
        ),
        (f"authorization: {SECRET}", "authorization: REDACTED"),
        (
            f"GET /bucket/x.fits?X-Amz-Date=1&X-Amz-Signature={SECRET} HTTP/1.1",
            "GET /bucket/x.fits?X-Amz-Date=REDACTED&X-Amz-Signature=REDACTED HTTP/1.1",
        ),
    ],
)
def test_bare_credentials_outside_urls(text, expected):
    assert redact_text(text) == expected
    assert redact_text(expected) == expected


@pytest.mark.parametrize("name", sorted(SECRET_PARAMS))
def test_every_secret_name_is_hidden_as_a_bare_pair(name):
    assert redact_text(f"failed with {name}={SECRET}") == f"failed with {name}={REDACTED}"


def test_text_around_a_url_is_kept():
    text = f"request to {SIGNED} failed (HTTP 403)."
    assert redact_text(text) == f"request to {redact_url(SIGNED)} failed (HTTP 403)."


def test_log_filter_redacts_messages_and_arguments():
    record = logging.LogRecord(
        "urllib3.connectionpool", logging.DEBUG, __file__, 1, "GET %s", (SIGNED,), None
    )
    assert RedactingFilter().filter(record)
    assert SECRET not in record.getMessage() and "X-Amz-Signature=REDACTED" in record.getMessage()


def test_log_filter_drops_botocore_signatures_and_is_installed_once():
    record = logging.LogRecord("botocore.auth", logging.DEBUG, __file__, 1, "Signature:\n%s", (SECRET,), None)
    assert not RedactingFilter().filter(record)
    install_log_filters()
    install_log_filters()
    assert (
        len(
            [f for f in logging.getLogger("urllib3.connectionpool").filters if isinstance(f, RedactingFilter)]
        )
        == 1
    )


def test_the_sentence_after_a_redacted_url_keeps_its_punctuation():
    """``cannot reach <url>: connection refused``: the URL's signature redacted, the bare-secret pass then
    took ``REDACTED:`` for a value and ate the colon, so the message read ``... REDACTED connection
    refused``. A secret's own last characters are still hidden with it."""
    text = "cannot reach https://u:s@127.0.0.1:1/x.fits?X-Amz-Signature=abc: connection refused"
    assert redact_text(text) == (
        "cannot reach https://REDACTED@127.0.0.1:1/x.fits?X-Amz-Signature=REDACTED: connection refused"
    )
    assert redact_text("password=hunter2! rest") == "password=REDACTED rest"
    assert redact_text("sig=REDACTEDxyz: then") == "sig=REDACTED then"
