"""A ``StagingApp`` setting refused by traitlets: which one (:func:`setting_name`), traitlets' message with
the app named plainly (:func:`setting_message`), and the error staging answers meanwhile
(:func:`misconfigured`, 503 ``staging_misconfigured``)."""

from __future__ import annotations

import re

from traitlets import TraitError

from jupyter_staging.errors import StagingMisconfigured
from jupyter_staging.safety.redact import redact_text

#: How traitlets names the app in a message: ``a StagingApp``, or its repr
#: (``<jupyter_staging.server.app.StagingApp object at 0x7f...>``) for a class it cannot import.
_APP_REPR = re.compile(r"<(?:\w+\.)*StagingApp object at 0x[0-9a-fA-F]+>")
_TRAIT_OF_APP = re.compile(r"'(\w+)' trait of (?:an? |<(?:\w+\.)*)StagingApp\b")
_VALIDATOR = re.compile(r"\bStagingApp\.(\w+)")


def setting_name(exc: TraitError) -> str | None:
    """The ``StagingApp`` setting a :class:`~traitlets.TraitError` of traitlets (in any of its wordings) or of
    the app's validators (``StagingApp.<name> ...``) names (``"concurrent_items"``), or None when its message
    names none."""
    text = str(exc)
    found = _TRAIT_OF_APP.search(text) or _VALIDATOR.search(text)
    return found.group(1) if found else None


def setting_message(exc: TraitError) -> str:
    """traitlets' message of ``exc`` (the setting, its rule and the value given), the app named ``a
    StagingApp`` rather than by a repr with a memory address, and any URL's secrets or credential of the
    value redacted (``https://alice:hunter2@...`` given where a dict belongs)."""
    return redact_text(_APP_REPR.sub("a StagingApp", str(exc)))


def misconfigured(exc: TraitError) -> StagingMisconfigured:
    """The error every staging request answers while a setting is refused: it names the setting and where
    to fix it, never its value (which may hold a secret); the server's log has traitlets' whole message."""
    name = setting_name(exc)
    what = f"the setting StagingApp.{name}" if name else "a StagingApp setting"
    return StagingMisconfigured(
        f"{what} has a value it cannot take, so staging is off (the server's log says why; "
        "`jupyter staging doctor` checks it): fix it in jupyter_server_config.py or on the command line "
        "and restart the server"
    )
