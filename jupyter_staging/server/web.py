"""The JSON side of every tornado handler of jupyter_staging: the server extension's and the hub service's.

One place decides how a request body is read and how an answer or an error is written:

- :func:`parse_json_object` and :func:`validate` turn a body into a pydantic model, raising
  :class:`~jupyter_staging.errors.InvalidRequest` (400) with the stable codes ``invalid_json`` and
  ``invalid_request``; values are never echoed.
- :class:`StagingHTTPError` carries a :class:`~jupyter_staging.errors.StagingError`'s ``code`` (and the
  hub's ``operation_id``) through tornado.
- :class:`JSONHandlerMixin` writes answers (``write_json``) and errors (``write_error``) as JSON
  ``{"message", "reason", "code"}`` (plus ``operation_id`` when there is one), never with a traceback.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from tornado import web

from jupyter_staging.engine.database import database_reason
from jupyter_staging.engine.models import ERROR_CODES
from jupyter_staging.errors import DatabaseUnavailable, InvalidRequest, StagingError

M = TypeVar("M", bound=BaseModel)

#: ``code`` of an error answered by tornado or a framework (not a :class:`StagingError`), by status.
DEFAULT_CODES = {400: "invalid_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


class _DuplicateKey(Exception):  # noqa: N818 - a signal of parse_json_object, never raised out of it
    """A key given twice in one JSON object."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of :func:`json.loads` that raises :class:`_DuplicateKey` for a repeated key."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def parse_json_object(body: bytes | None, *, reject_duplicate_keys: bool = True) -> dict[str, Any]:
    """The request ``body`` (UTF-8 JSON) as a dict.

    With ``reject_duplicate_keys`` (the server extension), a key given twice in one object is refused
    instead of being silently collapsed; the hub service's ``api/stage`` accepts it (the last one wins).

    Raises :class:`InvalidRequest` (400, code ``invalid_json``) for an empty body, a body that is not
    JSON (or nests arrays and objects too deeply to parse), is not a JSON object, or repeats a key.
    """
    hook = _unique_keys if reject_duplicate_keys else None
    try:
        data = json.loads(body or b"null", object_pairs_hook=hook)
    except _DuplicateKey as dup:
        raise InvalidRequest(
            f"request body gives the key {dup.key[:130]!r} twice in one object", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    """``model.model_validate(data)``.

    Raises :class:`InvalidRequest` (400) naming the failing fields; their values are never echoed. Its
    ``code`` is the first staging code a validator gave (a ``PydanticCustomError`` type of
    :data:`~jupyter_staging.engine.models.ERROR_CODES`: ``invalid_ttl``, ``invalid_destination``,
    ``name_too_long``, ``invalid_source``), else ``invalid_request``.
    """
    try:
        return model.model_validate(data)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply", code="invalid_json") from None
    except ValidationError as err:
        errors = err.errors(include_input=False, include_url=False)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
        code = next((e["type"] for e in errors if e["type"] in ERROR_CODES), "invalid_request")
        raise InvalidRequest(f"invalid request: {problems}", code=code) from None


class StagingHTTPError(web.HTTPError):
    """An HTTP error with the staging ``code`` and, in the hub service, the recorded operation's id."""

    def __init__(self, status: int, message: str, *, code: str, operation_id: str | None = None) -> None:
        super().__init__(status)
        self.message = message
        self.code = code
        self.operation_id = operation_id

    @classmethod
    def from_error(cls, err: StagingError) -> StagingHTTPError:
        """``err`` with its status, message, code and ``operation_id`` attribute (when it has one)."""
        return cls(err.status, err.message, code=err.code, operation_id=getattr(err, "operation_id", None))

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.message} ({self.code})"


def database_down(what: str, exc: BaseException) -> DatabaseUnavailable:
    """The error (503 ``database_unavailable``) for a
    :data:`~jupyter_staging.engine.database.DATABASE_DOWN` error ``exc`` of ``what`` (``job database``,
    ``operations database``), naming the driver's reason."""
    return DatabaseUnavailable(f"the {what} cannot be reached now ({database_reason(exc)}); try again later")


class JSONHandlerMixin(web.RequestHandler):
    """JSON bodies in, JSON answers and errors out. List it before the framework's handler class
    (``class H(JSONHandlerMixin, APIHandler)``) so its ``write_error`` wins."""

    #: ``message`` of an unexpected error (its details go to the log, never to the client).
    internal_error_message = "internal error; see the server log"

    def parse_body(self, model: type[M], *, reject_duplicate_keys: bool = True) -> M:
        """The JSON body validated as ``model``; :class:`StagingHTTPError` 400 ``invalid_json`` or
        ``invalid_request`` otherwise (see :func:`parse_json_object`)."""
        try:
            data = parse_json_object(self.request.body, reject_duplicate_keys=reject_duplicate_keys)
            return validate(model, data)
        except StagingError as err:
            raise StagingHTTPError.from_error(err) from None

    def validate(self, model: type[M], data: dict[str, Any]) -> M:
        """:func:`validate`, failing with :class:`StagingHTTPError` 400 ``invalid_request``."""
        try:
            return validate(model, data)
        except StagingError as err:
            raise StagingHTTPError.from_error(err) from None

    def write_json(self, payload: Any, status: int = 200) -> None:
        """Finish with ``payload`` as JSON and ``status``."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON ``{"message", "reason", "code"}`` (and ``operation_id``); never a traceback."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_payload(status_code, exc)))

    def error_payload(self, status_code: int, exc: BaseException | None) -> dict[str, Any]:
        """The body :meth:`write_error` sends for ``exc`` (None when tornado sends an error itself)."""
        if isinstance(exc, StagingHTTPError):
            payload = {"message": exc.message, "reason": self._reason, "code": exc.code}
            if exc.operation_id:
                payload["operation_id"] = exc.operation_id
            return payload
        if isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            code = DEFAULT_CODES.get(status_code, "error")
            return {"message": message or self._reason, "reason": self._reason, "code": code}
        return {"message": self.internal_error_message, "reason": self._reason, "code": "internal_error"}
