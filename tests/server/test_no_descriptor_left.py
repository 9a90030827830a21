"""A real Jupyter server out of file descriptors (its soft ``RLIMIT_NOFILE`` reached for real, in this test's
process, where pytest-jupyter runs the server): a request whose work meets ``EMFILE`` is answered 503
``too_many_open_files``, naming the limit, never a 500; and nothing already staged is lost."""

from __future__ import annotations

import json
import os

from tornado.httpclient import HTTPClientError

from tests.helpers.api import post_job, wait_for
from tests.helpers.descriptors import descriptors_to_spare

#: Folders nested below the source: the job and the fingerprint check of a request open them.
DEPTH = 40


async def test_a_request_that_meets_no_descriptor_left_is_503_too_many_open_files(
    jp_fetch, jp_root_dir, tmp_path
):
    """The same job asked again, with fewer and fewer descriptors to spare: its sources are re-listed in the
    request (to compare their fingerprints), which needs descriptors the request's own sockets leave or
    not. Each answer is the job up to date (200), 503 ``too_many_open_files``, or no answer at all (no
    descriptor for a socket); never a 500. A 503 is met on the way, and the first job's
    output is kept."""
    src = tmp_path / "tree"
    deepest = src.joinpath(*(f"d{i}" for i in range(DEPTH)))
    deepest.mkdir(parents=True)
    (deepest / "lc.fits").write_bytes(os.urandom(2880))
    body = {"source": str(src), "destination": "tree"}
    job = json.loads((await post_job(jp_fetch, body)).body)
    assert (await wait_for(jp_fetch, job["id"]))["state"] == "succeeded"
    answers = []
    for spare in range(2, 10):  # 0: the client cannot make its socket; 1: the server cannot accept it
        with descriptors_to_spare(spare):
            try:
                response = await post_job(jp_fetch, body, request_timeout=5)
                answers.append((spare, response.code, json.loads(response.body).get("up_to_date")))
            except HTTPClientError as err:
                if err.code == 599:  # no answer: the server found no descriptor to accept the connection
                    answers.append((spare, None, str(err)))
                    continue
                assert err.response is not None and err.code == 503, (spare, err)
                answer = json.loads(err.response.body)
                assert answer["code"] == "too_many_open_files", answer
                assert "RLIMIT_NOFILE" in answer["message"] and str(tmp_path) not in answer["message"]
                answers.append((spare, 503, answer["code"]))
            except OSError as err:  # the client found no descriptor for its socket
                answers.append((spare, None, type(err).__name__))
    assert any(code == 503 for _, code, _ in answers), answers
    assert answers[-1][1:] == (200, True), answers
    assert (jp_root_dir / "tree").joinpath(*(f"d{i}" for i in range(DEPTH)), "lc.fits").is_file()
