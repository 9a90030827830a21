"""The body of ``POST api/stage`` (the SKAO staging call): what it may hold and how it is checked."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jupyter_staging.errors import InvalidRequest
from jupyter_staging.safety.paths import is_utf8
from jupyter_staging.server.web import parse_json_object, validate

#: Methods of ``POST api/stage``.
METHODS = ("local_copy", "hardlink", "symlink", "direct_download", "jupyter_copy")

#: Other names accepted for a method: ``symlink_copy`` is the seed SKAO service's name for ``hardlink``.
METHOD_ALIASES = {"symlink_copy": "hardlink"}

#: Body fields that would name a user: refused, the user is always the authenticated one.
USER_FIELDS = frozenset({"user", "username", "user_name"})


class StageRequest(BaseModel):
    """Body of ``POST api/stage`` (the SKAO staging call).

    ``local_path_on_storage`` is an absolute path on the shared storage (file only). ``relative_path``
    is where it goes, relative to the user's area: a file path, or a folder when it ends in ``/``
    (the file keeps its name); empty puts the file at the top of the area. There is no user field:
    the user is the authenticated one.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["local_copy", "hardlink", "symlink", "direct_download", "jupyter_copy", "symlink_copy"]
    local_path_on_storage: str = Field(min_length=1, max_length=4096)
    relative_path: str = Field(default="", max_length=4096)

    @property
    def canonical_method(self) -> str:
        """:attr:`method` with aliases resolved (one of :data:`METHODS`)."""
        return METHOD_ALIASES.get(self.method, self.method)


def parse_stage_request(body: bytes) -> StageRequest:
    """Parse and validate a ``POST api/stage`` body.

    Raises :class:`InvalidRequest` (400): code ``invalid_json`` for a body that is not a JSON object,
    ``user_in_body`` when it names a user (the user is never taken from the body), ``invalid_request``
    for missing or malformed fields (values are never echoed), ``name_not_utf8`` for a path holding an
    escaped lone surrogate (``"\\udce9"``: no UTF-8 text, so it could be neither used nor recorded).
    """
    data = parse_json_object(body, reject_duplicate_keys=False)
    if USER_FIELDS & set(data):
        raise InvalidRequest(
            "the user is the one you are logged in as, never a field of the body; "
            "admins act for another user with ?username=",
            code="user_in_body",
        )
    for field in ("local_path_on_storage", "relative_path"):
        value = data.get(field)
        if isinstance(value, str) and not is_utf8(value):
            raise InvalidRequest(
                f"{field} holds a lone surrogate escape (\\ud800-\\udfff), which is not UTF-8 text",
                code="name_not_utf8",
            )
    return validate(StageRequest, data)
