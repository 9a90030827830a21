"""What a user reads when something goes wrong or needs saying: one line, said once, naming the flag or
option typed, with "did you mean"; hints that name what exists; a notice when a conversion did not apply
(issue 13). Real IPython shells, a local engine, a closed port on 127.0.0.1, the shipped mission data."""

from __future__ import annotations

import shutil

import pytest
import requests
from IPython.core.error import UsageError

import jupyter_staging
from jupyter_staging.clouds.http import describe_error, error_detail
from tests.helpers.data import KEPLER, SHARED_DATA
from tests.helpers.net import free_port

ROSAT = SHARED_DATA / "allsky_rosat.fits"  # an image, no table


def test_unreachable_url_is_one_clean_line_said_once(shell, capfd):
    url = f"https://127.0.0.1:{free_port()}/x"  # nothing listens there
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("stage", f"{url} --wait")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("staging error [transfer_failed]: cannot reach")
    assert "connection refused" in message
    for internal in ("NewConnectionError", "HTTPSConnection", "urllib3", "Errno", "object at 0x"):
        assert internal not in message
    out, err = capfd.readouterr()
    assert "connection refused" not in out + err.lower(), "the error was printed besides the UsageError"
    # The library's own words are kept, in the job's log only.
    [job] = [j for j in jupyter_staging.list_jobs() if j.state == "failed"][-1:]
    causes = [line["message"] for line in job.log() if line["message"].startswith("cause: ")]
    assert causes and "NewConnectionError" in causes[0] and "Connection refused" in causes[0]


def test_describe_error_summarises_and_error_detail_keeps_the_cause():
    try:
        requests.get(f"http://127.0.0.1:{free_port()}/x?X-Amz-Signature=secret123", timeout=5)
    except requests.RequestException as exc:
        assert describe_error(exc) == "connection refused"
        detail = error_detail(exc)
        assert detail.startswith("NewConnectionError: ") and "Connection refused" in detail
        assert "secret123" not in detail and "HTTPConnection(" not in detail
    else:
        pytest.fail("a closed port answered")


def test_conversion_options_without_to_parquet_name_the_flags(shell):
    with pytest.raises(UsageError, match=r"^--chunk-rows apply to conversions; add --to-parquet$"):
        shell.run_line_magic("stage", f"{KEPLER} --chunk-rows 100")
    with pytest.raises(UsageError, match=r"^--chunk-rows and --hdu apply to conversions; add --to-parquet$"):
        shell.run_line_magic("stage", f"{KEPLER} --chunk-rows 100 --hdu 1")
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("stage", "out --hdu 1", "a: /x\n")
    assert "--hdu" in str(info.value) and "to_parquet=True" not in str(info.value)


def test_a_mistyped_option_gets_did_you_mean(shell):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("stage", f"{KEPLER} --to-parqet --wait")
    assert str(info.value) == (
        "unrecognized arguments: --to-parqet (--to-parqet: did you mean --to-parquet?)"
    )
    with pytest.raises(UsageError, match="did you mean --chunk-rows"):
        shell.run_cell_magic("stage", "out --to-parquet --chunks-rows=5000", "a: /x\n")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("stage", f"{KEPLER} --zzzzzz")
    assert "did you mean" not in str(info.value) and "--zzzzzz" in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_paths_and_names_with_spaces_are_quoted_as_in_a_shell(shell, tmp_path):
    """Quotes keep a path with spaces one argument and leave it without its quotes, a variable expanded
    inside quotes too. (Quotes stayed in the path.) An apostrophe in a name (no pairing quote) and a
    backslash are characters, as before; an empty source is refused, not the notebook's whole folder."""
    folder = tmp_path / "my data"
    folder.mkdir()
    source = folder / "kepler light curve.fits"
    source.write_bytes(KEPLER.read_bytes())
    (tmp_path / "O'Brien.fits").write_bytes(KEPLER.read_bytes())
    shell.user_ns["src"] = str(source)
    calls = {
        "'my data/kepler light curve.fits' 'out dir' --name 'a b' --wait": "out dir/kepler light curve.fits",
        '"$src" "out dir3" --wait': "out dir3/kepler light curve.fits",
        "O'Brien.fits obrien --wait": "obrien/O'Brien.fits",
    }
    for line, staged in calls.items():
        shell.run_line_magic("stage", line)
        assert (tmp_path / staged).read_bytes() == source.read_bytes(), line
    assert [j.name for j in jupyter_staging.list_jobs() if j.name == "a b"] == ["a b"]
    with pytest.raises(UsageError) as info:  # the backslashes kept: one name, as typed
        shell.run_line_magic("stage", r"C:\data\kepler.fits win")
    assert "source_not_found" in str(info.value) and repr(r"C:\data\kepler.fits")[1:-1] in str(info.value)
    shell.user_ns["empty"] = ""
    for line in ('"$empty" everything', '"" everything'):
        with pytest.raises(UsageError, match=r"^staging error \[invalid_source\]: the source is empty"):
            shell.run_line_magic("stage", line)
    assert not (tmp_path / "everything").exists()


def test_partial_failure_hint_names_a_call_that_works(shell, tmp_path):
    cell = f"good: {ROSAT}\nbad: {tmp_path / 'missing.fits'}\n"
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("stage", "inputs --wait", cell)
    message = str(info.value)
    assert "[partial]" in message and "\n" not in message
    hint = message.split("the staged entries: ", 1)[1]
    assert hint.startswith("jupyter_staging.get_job(")
    paths = eval(hint, {"jupyter_staging": jupyter_staging})  # noqa: S307 - the hint, run as a user would
    assert list(paths) == ["good"] and paths["good"].name == ROSAT.name


def test_get_job_is_public_and_returns_the_job(shell):
    job = shell.run_line_magic("stage", f"{ROSAT} --wait")
    again = jupyter_staging.get_job(job.id)
    assert isinstance(again, jupyter_staging.Job) and again.id == job.id and again.state == "succeeded"
    assert "get_job" in jupyter_staging.__all__


def test_to_parquet_on_an_image_succeeds_with_a_notice(shell, capsys):
    job = shell.run_line_magic("stage", f"{ROSAT} --to-parquet --wait")
    assert job.state == "succeeded"
    expected = f"{ROSAT.name}: not a table: staged as it is"
    assert job.notices == [expected]
    assert f"note: {expected}" in capsys.readouterr().out.splitlines()
    assert [p.name for p in job.paths] == [ROSAT.name]


def test_a_table_converts_without_a_notice(shell, capsys):
    job = shell.run_line_magic("stage", f"{KEPLER} --to-parquet --chunk-rows 5000 --wait")
    assert job.notices == [] and "note:" not in capsys.readouterr().out
    assert job.progress["output_bytes"] > 0 and job.progress["rows_done"] == 14_280


def test_an_unquoted_path_with_spaces_gets_a_hint_to_quote_it(shell, tmp_path):
    """Before: ``unrecognized arguments: lc.fits out`` and nothing more: the user had to guess the quotes."""
    folder = tmp_path / "my data"
    folder.mkdir()
    shutil.copyfile(KEPLER, folder / "kepler lc.fits")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("stage", "my data/kepler lc.fits out")
    assert str(info.value) == (
        "unrecognized arguments: lc.fits out (a path with spaces goes in quotes: 'my data/kepler lc.fits')"
    )
    job = shell.run_line_magic("stage", "'my data/kepler lc.fits' out --wait")
    assert job.state == "succeeded" and (tmp_path / "out" / "kepler lc.fits").is_file()


def test_a_control_command_without_a_job_id_says_what_it_needs(shell):
    """Before: ``%stage cancel`` staged a file named ``cancel`` and failed ``source_not_found``."""
    for command in ("pause", "resume", "cancel"):
        with pytest.raises(UsageError, match=rf"^%stage {command} needs a job id: %stage {command} JOB_ID"):
            shell.run_line_magic("stage", command)


def test_stage_list_says_that_stage_jobs_lists_the_jobs(shell, tmp_path):
    """Before: ``%stage list`` staged a file named ``list`` and failed ``source_not_found`` (a path the
    user never meant). A file of that name is still staged."""
    for word in ("list", "ls"):
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("stage", word)
        assert str(info.value) == (
            f"%stage {word}: no file or folder {word!r} here to stage; %stage jobs lists the staging jobs"
        )
    (tmp_path / "list").write_text("a file named list\n")
    job = shell.run_line_magic("stage", "list out --wait")
    assert job.state == "succeeded" and (tmp_path / "out" / "list").read_text() == "a file named list\n"


@pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf"])
def test_a_timeout_that_is_no_duration_is_refused(shell, seconds):
    """Before, ``--timeout -1`` printed 'still running after -1.0 s' and ``--timeout nan`` waited for ever."""
    with pytest.raises(UsageError, match="--timeout: .*positive"):
        shell.run_line_magic("stage", f"{KEPLER} out --wait --timeout {seconds}")
    with pytest.raises(UsageError, match="--timeout: .*positive"):
        shell.run_cell_magic("stage", f"out --wait --timeout {seconds}", f"a: {KEPLER}\n")
