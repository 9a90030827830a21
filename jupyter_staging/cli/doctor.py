"""``jupyter staging doctor``: the report.

The doctor checks, and explains how to fix, what breaks staging on this machine:

========================  =====================================================================
check                     what it does
========================  =====================================================================
``extension``             the server extension imports and is enabled in Jupyter's configuration
``settings``              every ``StagingApp`` setting given has a value it can take (``concurrent_items``
                          at least 1, ...); each one refused fails, naming it
``database``              ``StagingApp.db_url`` opens; a probe row is written and deleted. A database
                          of an older schema is a warning, left as it is (the doctor upgrades nothing);
                          one of a later release's schema is a failure naming its revision
``staging folder``        ``<root_dir>/<staging_dir>`` (or its nearest existing parent) takes a
                          probe file, and its file system has free space
``scratch folder``        ``StagingApp.scratch_dir``, when set, the same; outside the root it must be
                          a folder no other account controls, as jobs check at their start
``source root``           each ``StagingApp.source_roots`` folder exists and can be listed
``s3``                    boto3 finds credentials and the endpoint answers a HEAD on a bucket
``azure``                 the ``azure`` extra is installed and the account (or a container) answers
``hub`` / ``hub service`` the JupyterHub API answers (and accepts ``JUPYTERHUB_API_TOKEN``); the
                          staging service answers at its URL
========================  =====================================================================

Each check ends ``ok``, ``warn``, ``fail`` or ``skip`` (not configured here), with a message and, unless
``ok``, a concrete fix. The exit status is 1 when any check fails, else 0. The checks live in the
``checks_*`` modules beside this one; how the settings are read is in :mod:`jupyter_staging.cli.main`.

Nothing printed holds a secret (:mod:`jupyter_staging.cli.redaction`): URLs go through
:func:`~jupyter_staging.safety.redact.redact_url`, database URLs lose their password, and the values of
secret environment variables (AWS secret keys and session tokens, ``JUPYTERHUB_API_TOKEN``, Azure keys,
SAS tokens and connection strings) are replaced by ``REDACTED`` wherever they would appear.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from jupyter_staging._version import __version__
from jupyter_staging.cli.checks_azure import check_azure
from jupyter_staging.cli.checks_database import check_database
from jupyter_staging.cli.checks_extension import check_extension, check_settings
from jupyter_staging.cli.checks_folders import check_scratch_folder, check_source_roots, check_staging_folder
from jupyter_staging.cli.checks_hub import check_hub, check_hub_service
from jupyter_staging.cli.checks_s3 import check_s3
from jupyter_staging.cli.model import FAIL, OK, SKIP, WARN, Check, DoctorSettings, first_line
from jupyter_staging.cli.redaction import db_password, scrub, secrets_in_environment

#: A check: settings in, one :class:`Check` (or one per item checked) out.
CheckFunction = Callable[[DoctorSettings], "Check | list[Check]"]

#: Every check, in the order they run and are reported.
CHECKS: tuple[CheckFunction, ...] = (
    check_extension,
    check_settings,
    check_database,
    check_staging_folder,
    check_scratch_folder,
    check_source_roots,
    check_s3,
    check_azure,
    check_hub,
    check_hub_service,
)


class Doctor:
    """Runs the checks on :class:`DoctorSettings`; :meth:`run` returns the :class:`Check` list.

    Blocking and synchronous (files, SQL, HTTP with ``settings.timeout``); changes nothing but a probe
    row (written and deleted in one transaction), a probe file (created and deleted) and, for SQLite,
    the database file and its tables when they did not exist yet, as the server would create them.
    """

    def __init__(self, settings: DoctorSettings, checks: tuple[CheckFunction, ...] = CHECKS) -> None:
        self.settings = settings
        self.checks = checks

    def run(self) -> list[Check]:
        """Every check, in a fixed order: extension, settings, database, staging folder, scratch folder,
        source roots, S3, Azure, hub, hub service. A check that raises unexpectedly is reported as
        ``fail``."""
        results: list[Check] = []
        for check in self.checks:
            name = check.__name__.removeprefix("check_").replace("_", " ")
            try:
                result = check(self.settings)
            except Exception as exc:  # a bug or an environment the checks did not foresee
                result = [
                    Check(
                        name,
                        FAIL,
                        f"the check itself failed: {type(exc).__name__}: {first_line(exc)}",
                        "run again with --debug and report it, with the output, to the maintainers",
                    )
                ]
            results.extend(result if isinstance(result, list) else [result])
        return results


def report(settings: DoctorSettings, config_files: list[str], as_json: bool = False) -> tuple[str, int]:
    """Run the checks on ``settings`` and return ``(report, exit status)``.

    ``config_files``: the Jupyter config files that were loaded (shown in the report). The report is
    text (:func:`render`) or, with ``as_json``, one JSON object; secrets are scrubbed from either. The
    exit status is 1 when any check failed, else 0.
    """
    checks = Doctor(settings).run()
    secrets = secrets_in_environment(db_password(settings.db_url))
    for check in checks:
        check.message = scrub(check.message, secrets)
        check.fix = scrub(check.fix, secrets) if check.fix else None
    failed = any(c.status == FAIL for c in checks)
    if as_json:
        document = {
            "ok": not failed,
            "version": __version__,
            "python": sys.executable,
            "root_dir": settings.root_dir,
            "config_files": config_files,
            "checks": [asdict(c) for c in checks],
        }
        text = scrub(json.dumps(document, indent=2), secrets)
    else:
        text = render(checks, settings, config_files)
    return text, 1 if failed else 0


def render(checks: list[Check], settings: DoctorSettings, config_files: list[str]) -> str:
    """The checks as text: a header, one block per check (``STATUS  name  message`` and, unless ``ok``,
    a ``fix:`` line), then a one-line tally."""
    lines = [
        f"jupyter staging doctor {__version__} (Python {sys.executable})",
        f"  root_dir: {settings.root_dir}",
        "  config files: " + (", ".join(config_files) or "none found"),
        "",
    ]
    width = max(len(c.name) for c in checks)
    for check in checks:
        lines.append(f"{check.status.upper():<4}  {check.name:<{width}}  {check.message}")
        if check.fix and check.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    tally = {s: sum(c.status == s for c in checks) for s in (FAIL, WARN, OK, SKIP)}
    lines += [
        "",
        f"{tally[FAIL]} failed, {tally[WARN]} warning(s), {tally[OK]} ok, {tally[SKIP]} skipped",
    ]
    return "\n".join(lines)
