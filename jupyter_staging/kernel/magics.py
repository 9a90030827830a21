"""The ``%stage`` line magic and the ``%%stage`` cell magic: ``%load_ext jupyter_staging``, then::

    job = %stage /archive/kepler/kplr010666592-2009131110544_slc.fits kepler --to-parquet --wait
    %stage jobs
    %stage pause|resume|cancel JOB_ID

and for a manifest of named sources (YAML or JSON in the cell)::

    %%stage inputs --wait
    reference: https://example.org/GRCh38.fa.gz
    reads: {source: s3://bucket/run42/reads.fastq, checksum: "sha256:9f86d0..."}

which returns ``{"reference": Path(".../inputs/reference/GRCh38.fa.gz"), ...}`` once staged (see
:func:`jupyter_staging.resolve`). Re-running either on unchanged sources answers at once with the earlier job
(``up to date: <destination> (no bytes moved)``); ``--refresh`` stages again, ``--if-exists error`` refuses.

It calls :mod:`jupyter_staging.kernel.api`, so it goes through the Jupyter server that started the kernel when
there is one, and runs in-process otherwise. Staging errors are shown as one line
(``UsageError: staging error [code]: message``), never as a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import shlex
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split

from jupyter_staging.engine.models import check_checksum
from jupyter_staging.errors import StagingError
from jupyter_staging.kernel import api
from jupyter_staging.kernel.frontend import has_widget_frontend
from jupyter_staging.kernel.job import Job, JobFailed
from jupyter_staging.kernel.widgets import JobsTable

#: First words of ``%stage`` that are commands rather than a source (stage ``./jobs`` for a file so named).
CONTROL_COMMANDS = ("pause", "resume", "cancel")
#: Words a user may type for ``%stage jobs``: when no such file is there, the error says ``%stage jobs``.
LIST_WORDS = ("list", "ls")

#: The options ``%stage`` and ``%%stage`` share, in the order their help lists them.
_JOB_OPTIONS = (
    argument(
        "--to-parquet", action="store_true", help="Convert tables (FITS, VOTable, CSV, ECSV) to Parquet."
    ),
    argument("--chunk-rows", type=int, default=None, metavar="N", help="Rows per Parquet part file."),
    argument("--compression", default="zstd", metavar="C", help="Parquet codec (default zstd)."),
    argument("--hdu", default=None, metavar="H", help="FITS HDU holding the table (index or name)."),
    argument(
        "--encoding",
        default=None,
        metavar="E",
        help="Text encoding of a CSV/TSV file that is not UTF-8 (latin-1, cp1252).",
    ),
    argument(
        "--method", default=None, choices=["copy", "hardlink", "symlink", "download"], help="How to stage."
    ),
    argument("--name", default=None, help="A name for the job."),
    argument(
        "--if-exists",
        default="reuse",
        choices=api.IF_EXISTS_CHOICES,
        help="""When DEST already holds this data: reuse it if the sources are unchanged (default), refresh
        (stage again) or error.""",
    ),
    argument("--refresh", action="store_true", help="Stage again even if DEST is up to date."),
    argument("--unpack", action="store_true", help="Extract .zip / .tar[.gz|.bz2|.xz] / .tgz archives."),
    argument("--decompress", action="store_true", help="Turn x.gz / x.bz2 / x.xz into x."),
)


def seconds_value(text: str) -> float:
    """``--timeout``'s value, checked: a positive, finite number of seconds (argparse names the flag in its
    one-line error otherwise: ``-1`` would not wait at all, ``nan`` for ever)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seconds: {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


#: ``--timeout``, which both magics take after their own ``--wait``.
_TIMEOUT_OPTION = argument(
    "--timeout", type=seconds_value, default=None, metavar="SECONDS", help="With --wait: wait at most this."
)

_F = TypeVar("_F", bound=Callable[..., Any])


def checksum_value(text: str) -> str:
    """``--checksum``'s value, checked: ``sha256:<64 hex>`` or ``md5:<32 hex>`` (argparse names the flag
    in its one-line error otherwise)."""
    try:
        return check_checksum(text) or text
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def job_options(func: _F) -> _F:
    """Add the shared conversion and naming options (``--to-parquet`` ... ``--name``) to a magic, listed in
    the order of :data:`_JOB_OPTIONS` (argument decorators apply bottom-up, so they go in reversed)."""
    for option in reversed(_JOB_OPTIONS):
        func = option(func)
    return func


@magics_class
class StagingMagics(Magics):
    """Magics of ``jupyter_staging``; registered by ``%load_ext jupyter_staging``."""

    @magic_arguments()
    @argument(
        "source",
        help="""File, folder, http(s):// URL or s3:// URI to stage (relative paths are relative to the
        notebook's folder); or the command 'jobs', 'pause', 'resume' or 'cancel'.""",
    )
    @argument(
        "dest",
        nargs="?",
        default=None,
        help="""Destination folder, relative to the notebook's folder, or s3://bucket/prefix/ (default: a
        new folder under the server's staging folder); for pause/resume/cancel, the job id.""",
    )
    @job_options
    @argument(
        "--checksum",
        type=checksum_value,
        default=None,
        metavar="ALG:HEX",
        help="The bytes the source must have: sha256:<hex> or md5:<hex>.",
    )
    @argument("--wait", action="store_true", help="Block until the job ends.")
    @_TIMEOUT_OPTION
    @argument("--state", default=None, help="With 'jobs': only jobs in this state.")
    @line_cell_magic
    def stage(self, line: str, cell: str | None = None) -> Any:
        """Stage data as a tracked job and return the :class:`~jupyter_staging.kernel.job.Job`.

        ``%stage SOURCE [DEST] [--to-parquet] [--chunk-rows N] [--method M] [--refresh] [--checksum
        sha256:HEX] [--unpack] [--decompress] [--wait]`` submits a job (or, when DEST already holds this
        unchanged data, answers at once with the earlier job); ``%stage jobs`` lists the jobs;
        ``%stage pause|resume|cancel JOB_ID`` steers one.
        ``$name`` and ``{expression}`` are expanded from the notebook's variables.

        As a cell magic, ``%%stage [DEST] [--to-parquet] [--chunk-rows N] [--method M] [--name NAME]
        [--refresh] [--wait] [--timeout SECONDS]`` stages the manifest in the cell — a YAML or JSON mapping
        of entry names to sources (or to ``{source: ..., checksum: sha256:...}``) — as one job into
        ``DEST/<name>/``. With ``--wait`` it returns the dict of entry name -> local path once every entry
        is staged (a staging error if some failed: the message names them and the job); without, the
        :class:`~jupyter_staging.kernel.job.Job`.
        """
        if cell is not None:
            return self._stage_manifest(line, cell)
        args = parse_options(self.stage, line)
        try:
            if args.source == "jobs" and args.dest is None:
                if has_widget_frontend():
                    return JobsTable(lambda: api.list_jobs(state=args.state))
                return api.list_jobs(state=args.state)
            if args.source in CONTROL_COMMANDS and args.dest is not None:
                job = api.get_job(args.dest)
                return getattr(job, args.source)()
            if args.source in CONTROL_COMMANDS and not os.path.exists(args.source):
                usage = f"%stage {args.source} JOB_ID (%stage jobs lists them)"
                raise UsageError(f"%stage {args.source} needs a job id: {usage}")
            if args.source in LIST_WORDS and args.dest is None and not os.path.exists(args.source):
                raise UsageError(
                    f"%stage {args.source}: no file or folder {args.source!r} here to stage; "
                    "%stage jobs lists the staging jobs"
                )
            job = api.stage(args.source, args.dest, **_stage_options(args))
            if args.wait:
                job = _wait(job, args.timeout)
                _print_notices(job)
            return job
        except JobFailed as err:
            raise UsageError(
                f"staging error [{err.code}]: {err.message} (job {err.job.id}; see job.log())"
            ) from None
        except StagingError as err:
            raise UsageError(f"staging error [{err.code}]: {err.message}") from None

    def _stage_manifest(self, line: str, cell: str) -> Any:
        args = parse_options(_cell_arguments, line)
        entries = parse_manifest(cell)
        try:
            job = api.stage(entries, args.dest, **_stage_options(args))
            if not args.wait:
                return job
            job = _wait(job, args.timeout)
            _print_notices(job)
            return job.paths if job.state == "succeeded" else job
        except JobFailed as err:
            hint = ""
            if err.code == "partial":
                hint = f"; the staged entries: jupyter_staging.get_job({err.job.id!r}).paths"
            raise UsageError(
                f"staging error [{err.code}]: {err.message} (job {err.job.id}; see job.log()){hint}"
            ) from None
        except StagingError as err:
            raise UsageError(f"staging error [{err.code}]: {err.message}") from None


@magic_arguments()
@argument(
    "dest",
    nargs="?",
    default=None,
    help="""Destination folder, relative to the notebook's folder, or s3://bucket/prefix/ (default: a new
    folder under the server's staging folder). Each entry lands in DEST/<name>/.""",
)
@job_options
@argument("--wait", action="store_true", help="Block until the job ends; return {name: local path}.")
@_TIMEOUT_OPTION
def _cell_arguments(line: str, cell: str) -> None:
    """%%stage [DEST] [options], then one `name: source` (or `name: {source: ..., checksum: sha256:...}`)
    per line (YAML) or a JSON object."""


def split_line(line: str) -> list[str]:
    """A magic's line as arguments: split at blanks, where quotes (``'my data/cat.xml'``, ``"$path"``) keep
    a path or name with spaces one argument and are removed, as a shell does; a backslash is a character
    (a Windows path IPython put in the line stays whole). A line whose quotes do not pair (an apostrophe
    in ``O'Brien.fits``) is split at blanks only, every character kept."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError:  # "No closing quotation": an apostrophe in a name, not a quote
        return list(arg_split(line, posix=False))


def parse_options(magic: Callable[..., Any], line: str) -> argparse.Namespace:
    """``line`` parsed by ``magic``'s arguments, split by :func:`split_line`. A mistyped option gets a
    "did you mean": ``unrecognized arguments: --to-parqet (did you mean --to-parquet?)``, one line, as a
    :class:`UsageError`."""
    argv = split_line(line)
    try:
        return magic.parser.parse_args(argv)  # type: ignore[attr-defined,no-any-return]
    except UsageError as err:
        message = str(err)
        if "unrecognized arguments" not in message:
            raise
        known = sorted(set(re.findall(r"--[a-z][a-z-]*", magic.parser.format_usage())))  # type: ignore[attr-defined]
        hints = [] if (quoted := _quoting_hint(argv)) is None else [quoted]
        for typed in re.findall(r"--?[A-Za-z][\w-]*", message.split(":", 1)[-1]):
            close = difflib.get_close_matches(typed.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append(f"{typed}: did you mean {close[0]}?")
        raise UsageError(f"{message} ({'; '.join(hints)})" if hints else message) from None


def _quoting_hint(argv: list[str]) -> str | None:
    """For a local path with spaces typed without quotes (``my data/kepler lc.fits out``, which argparse
    reports as ``unrecognized arguments: lc.fits out``): the path quoted, when the first words joined make
    an existing file or folder; else None."""
    words = [word for word in argv if not word.startswith("-")]
    for end in range(len(words), 1, -1):
        path = " ".join(words[:end])
        if os.path.exists(os.path.expanduser(path)) and " " in path:
            return f"a path with spaces goes in quotes: {shlex.quote(path)}"
    return None


def parse_manifest(text: str) -> dict[str, str | dict[str, str]]:
    """The entry name -> source mapping in a ``%%stage`` cell: a JSON object, or YAML (``name: source``
    lines). A source is text (a path, URL or URI), or a mapping ``{source: ..., checksum: sha256:<hex>}``
    (``md5:<hex>`` too); names are checked by the server.

    Raises :class:`UsageError` when the cell is neither, is not a mapping, maps to other values, or an
    entry's checksum is malformed.
    """
    stripped = text.strip()
    if not stripped:
        raise UsageError("%%stage needs a manifest in the cell: one 'name: source' per line (YAML) or JSON")
    try:
        data = json.loads(stripped)
    except ValueError:
        try:
            data = yaml.safe_load(stripped)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise UsageError(f"the %%stage cell is neither JSON nor YAML{line}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError("the %%stage cell must map entry names to sources, e.g. 'reference: https://...'")
    entries: dict[str, str | dict[str, str]] = {}
    for name, source in data.items():
        if not isinstance(name, (str, int)):
            raise UsageError(f"entry {name!r}: the source must be text (a path, URL or s3:// URI)")
        entries[str(name)] = source if isinstance(source, str) else _entry_object(str(name), source)
    return entries


def _entry_object(name: str, value: Any) -> dict[str, str]:
    """A ``%%stage`` entry given as ``{source: ..., checksum: ...}``, checked. Raises :class:`UsageError`
    for anything else (the message names the entry)."""
    if not isinstance(value, dict) or set(value) - {"source", "checksum"} or not value.get("source"):
        raise UsageError(
            f"entry {name!r}: the source must be text (a path, URL or s3:// URI) "
            "or {source: ..., checksum: sha256:...}"
        )
    source, checksum = value["source"], value.get("checksum")
    if not isinstance(source, str) or not (checksum is None or isinstance(checksum, str)):
        raise UsageError(f"entry {name!r}: source and checksum must be text")
    if checksum is None:
        return {"source": source}
    try:
        return {"source": source, "checksum": check_checksum(checksum) or checksum}
    except ValueError as exc:
        raise UsageError(f"entry {name!r}: {exc}") from None


def _stage_options(args: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`~jupyter_staging.kernel.api.stage` from parsed ``%stage`` /
    ``%%stage`` options."""
    hdu = int(args.hdu) if args.hdu is not None and args.hdu.lstrip("-").isdigit() else args.hdu
    if args.refresh and args.if_exists == "error":
        raise UsageError("--refresh contradicts --if-exists error; pass one of them")
    if not args.to_parquet:
        given = (("--chunk-rows", args.chunk_rows), ("--hdu", hdu), ("--encoding", args.encoding))
        typed = [flag for flag, value in given if value is not None]
        if args.compression != "zstd":
            typed.append("--compression")
        if typed:
            what = " and ".join(typed)
            raise UsageError(f"{what} apply to conversions; add --to-parquet")
    return {
        "method": args.method,
        "to_parquet": args.to_parquet,
        "chunk_rows": args.chunk_rows,
        "compression": args.compression,
        "hdu": hdu,
        "encoding": args.encoding,
        "name": args.name,
        "if_exists": args.if_exists,
        "refresh": args.refresh,
        "checksum": getattr(args, "checksum", None),
        "unpack": args.unpack,
        "decompress": args.decompress,
    }


def _print_notices(job: Job) -> None:
    """Print what the user should know about a finished job that is not an error (one line each)."""
    for notice in job.notices:
        print(f"note: {notice}")


def _wait(job: Job, timeout: float | None) -> Job:
    """Wait for ``job`` (a progress bar on stderr in a terminal; in a notebook, its widget shows it); on a
    timeout or an interrupt, say so and hand the still-running job back."""
    try:
        return job.wait(timeout=timeout)
    except TimeoutError:
        print(f"job {job.name!r} ({job.id}) is still {job.state} after {timeout} s; it keeps running")
    except KeyboardInterrupt:
        print(f"stopped waiting; job {job.name!r} ({job.id}) keeps running")
    return job


__all__ = ["StagingMagics", "parse_manifest", "parse_options"]
