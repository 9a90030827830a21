"""The ``extension`` check: the server extension imports and Jupyter's configuration enables it. The
``settings`` check: every ``StagingApp`` setting of the config files and the command line has a value it can
take (``<text>`` is traitlets' message naming the setting and its rule, e.g. ``concurrent_items`` at least 1).

The enabled server extensions are merged from the config files and their ``jupyter_server_config.d/*.json``
exactly as ``ServerApp.find_server_extensions`` does.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

from jupyter_core.paths import ENV_CONFIG_PATH, SYSTEM_CONFIG_PATH, jupyter_config_dir
from jupyter_server.extension.config import ExtensionConfigManager
from jupyter_server.extension.manager import ExtensionPackage

from jupyter_staging.cli.model import EXTENSION, FAIL, OK, Check, DoctorSettings, first_line


def check_settings(settings: DoctorSettings) -> Check | list[Check]:
    """Every ``StagingApp`` setting of the config files and the command line has a value it can take; one
    failure per setting refused (the server would serve no staging: ``staging_misconfigured``)."""
    if not settings.refused_settings:
        return Check("settings", OK, "every StagingApp setting given has a value it can take")
    return [
        Check(
            "settings",
            FAIL,
            text,
            "correct it in jupyter_server_config.py or on the command line and restart the server: until "
            "then every staging request answers 503 staging_misconfigured",
        )
        for text in settings.refused_settings
    ]


def check_extension(settings: DoctorSettings) -> Check:
    """The extension imports, validates (``_jupyter_server_extension_points``) and is enabled."""
    name = "extension"
    try:
        package = ExtensionPackage(name=EXTENSION, enabled=True)
        package.validate()
    except Exception as exc:
        return Check(
            name,
            FAIL,
            f"{EXTENSION} is installed in {sys.prefix} but does not load as a server extension: "
            f"{type(exc).__name__}: {first_line(exc)}",
            f'reinstall it in this environment: pip install --force-reinstall "{EXTENSION}"',
        )
    enabled, where = _enabled_where(settings)
    if enabled:
        return Check(
            name,
            OK,
            f"{EXTENSION} {package.version} is installed in {sys.prefix} and enabled ({where})",
        )
    if where:
        fix = f'set "{EXTENSION}": true in ServerApp.jpserver_extensions there (or delete that entry)'
        command = enable_command(where)
        if command:
            fix += f", e.g. with: {command}"
        return Check(name, FAIL, f"{EXTENSION} {package.version} is installed but disabled by {where}", fix)
    return Check(
        name,
        FAIL,
        f"{EXTENSION} {package.version} is installed in {sys.prefix} but no Jupyter config enables "
        "it (its jupyter_server_config.d/jupyter_staging.json was not installed with it)",
        f"jupyter server extension enable {EXTENSION}",
    )


def _enabled_where(settings: DoctorSettings) -> tuple[bool, str]:
    """Whether the configuration enables the extension, and the file(s) that decide it (``""``: none)."""
    explicit = settings.jpserver_extensions
    if EXTENSION in explicit:
        files = settings.extension_config_files
        return bool(explicit[EXTENSION]), "ServerApp.jpserver_extensions in " + (
            " or ".join(files) or "a config file"
        )
    paths = settings.config_paths
    merged = ExtensionConfigManager(read_config_path=paths).get_jpserver_extensions()
    setters = files_setting_extension(paths)
    return bool(merged.get(EXTENSION, False)), setters[0][0] if setters else ""


def files_setting_extension(paths: list[str]) -> list[tuple[str, bool]]:
    """``(file, enabled)`` for each JSON config file that names the extension, highest priority first
    (the order :class:`~jupyter_server.extension.config.ExtensionConfigManager` merges them in)."""
    found = []
    for folder in paths:
        names = [os.path.join(folder, "jupyter_server_config.json")]
        names += sorted(glob.glob(os.path.join(folder, "jupyter_server_config.d", "*.json")), reverse=True)
        for name in names:
            try:
                with open(name, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            extensions = data.get("ServerApp", {}).get("jpserver_extensions", {})
            if isinstance(extensions, dict) and EXTENSION in extensions:
                found.append((name, bool(extensions[EXTENSION])))
    return found


def enable_command(disabling_file: str) -> str | None:
    """The ``jupyter server extension enable`` command that rewrites ``disabling_file``, when it is the
    file that command writes (``<config dir>/jupyter_server_config.d/jupyter_staging.json``)."""
    path = Path(disabling_file)
    if path.name != f"{EXTENSION}.json" or path.parent.name != "jupyter_server_config.d":
        return None
    folder = path.parent.parent
    for flag, candidates in (
        ("--user", [jupyter_config_dir()]),
        ("--sys-prefix", ENV_CONFIG_PATH[:1]),
        ("--system", SYSTEM_CONFIG_PATH[:1]),
    ):
        if any(folder == Path(c) for c in candidates):
            return f"jupyter server extension enable {flag} {EXTENSION}"
    return None


def files_naming_extension(files: list[str]) -> list[str]:
    """The config files among ``files`` that set ``jpserver_extensions`` for the extension (a JSON file
    that does; a Python file that names both)."""
    found = []
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError:
            continue
        if name.endswith(".json"):
            try:
                extensions = json.loads(text).get("ServerApp", {}).get("jpserver_extensions", {})
            except (ValueError, AttributeError):
                continue
            if isinstance(extensions, dict) and EXTENSION in extensions:
                found.append(name)
        elif "jpserver_extensions" in text and EXTENSION in text:
            found.append(name)
    return found
