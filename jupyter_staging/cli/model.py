"""What a doctor check is and what it checks: :class:`Check`, :class:`DoctorSettings`, the statuses and
the environment variables the checks read, plus two small helpers every check module shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Environment variables naming the bucket / container the doctor HEADs when no flag names one.
ENV_BUCKET = "JUPYTER_STAGING_DOCTOR_BUCKET"
ENV_AZURE_CONTAINER = "JUPYTER_STAGING_DOCTOR_AZURE_CONTAINER"
#: Environment variable giving the hub staging service's URL when ``--hub-service-url`` is not given.
ENV_HUB_SERVICE_URL = "JUPYTER_STAGING_HUB_SERVICE_URL"
#: The server extension's (and the package's) name.
EXTENSION = "jupyter_staging"
GIB = 1024**3

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    """The outcome of one check.

    ``name``: what was checked (``"database"``, ``"source root"``, ...). ``status``: ``"ok"``,
    ``"warn"``, ``"fail"`` or ``"skip"``. ``message``: what was found. ``fix``: what to do about it
    (None when ``ok``).
    """

    name: str
    status: str
    message: str
    fix: str | None = None


@dataclass
class DoctorSettings:
    """What the doctor checks, as the server would see it.

    ``root_dir``: the server's root (absolute). ``staging_dir``: default destination folder, relative to
    it. ``source_roots``: allowed local source folders (empty: any). ``db_url``: SQLAlchemy URL of the
    job database. ``jpserver_extensions``: the ``ServerApp.jpserver_extensions`` of the config files
    (without the ``.d`` folders) and ``extension_config_files`` the loaded files that may set it.
    ``config_paths``: the config folders, highest priority first.
    ``s3_bucket`` / ``azure_container``: what to HEAD (None: not named). ``hub_api_url`` /
    ``hub_service_url``: where the hub's API and the staging service are (None: not configured).
    ``scratch_dir``: ``StagingApp.scratch_dir`` as set (empty: the default below the staging folder).
    ``min_free_bytes``: free space below which the staging and scratch folders warn. ``timeout``: seconds per
    network request.
    """

    root_dir: str
    staging_dir: str
    source_roots: list[str]
    db_url: str
    jpserver_extensions: dict[str, bool]
    config_paths: list[str]
    extension_config_files: list[str] = field(default_factory=list)
    s3_bucket: str | None = None
    azure_container: str | None = None
    hub_api_url: str | None = None
    hub_service_url: str | None = None
    min_free_bytes: int = GIB
    scratch_dir: str = ""
    timeout: float = 10.0
    #: traitlets' message for each ``StagingApp`` setting refused (left out of the settings above).
    refused_settings: list[str] = field(default_factory=list)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its class name when it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest parent that exists (or is a symlink)."""
    current = path
    while not (current.exists() or current.is_symlink()) and current != current.parent:
        current = current.parent
    return current
