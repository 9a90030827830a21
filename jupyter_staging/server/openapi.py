"""The REST contract of the staging API as OpenAPI 3.1: ``openapi.yaml`` beside this module, and its handler.

The document's ``paths`` are written by hand; its ``components.schemas`` are generated from the pydantic
models of :mod:`jupyter_staging.engine.models` (requests in validation mode, answers in serialization
mode) and from the few answer shapes below that have no model of their own, so the two cannot drift:
:func:`schema_drift` names every difference (the tests require none) and
``python -m jupyter_staging.server.openapi`` rewrites the schemas from the models.

:class:`OpenAPIHandler` serves the document at ``<base_url>api/v1/staging/openapi.yaml``, behind the
same authentication and authorization as the rest of the API, with ``servers`` naming this server's
API root.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from tornado import web

from jupyter_staging.engine.models import (
    ChunkList,
    ChunksQuery,
    CreateJob,
    DescribeChunk,
    DescribeJob,
    JobError,
    ListJobsQuery,
    ListJobsResponse,
)
from jupyter_staging.server.web import JSONHandlerMixin

#: The document, shipped in the package.
SPEC_PATH = Path(__file__).with_name("openapi.yaml")
#: Where ``$ref`` s point inside the document.
REF_TEMPLATE = "#/components/schemas/{model}"
#: The API root under the server's ``base_url`` (as :mod:`jupyter_staging.server.handlers` routes it).
API_ROOT = "api/v1/staging"


class ErrorBody(BaseModel):
    """Every error answer: a ``message`` for people, the HTTP ``reason`` phrase and a stable ``code``
    (``invalid_json``, ``invalid_request``, ``job_not_found``, ``chunk_not_found``, ...)."""

    message: str
    reason: str
    code: str


class LogLine(BaseModel):
    """One line of a job's log: UTC ``time``, ``level`` (``info``, ``warning``, ``error``) and ``message``."""

    time: datetime
    level: str
    message: str


class JobLog(BaseModel):
    """Answer of ``GET /jobs/{job_id}/log``: the job's log lines, oldest first."""

    lines: list[LogLine]


class Manifest(BaseModel):
    """Answer of ``GET /jobs/{job_id}/manifest``: the ``manifest.json`` a job wrote beside its output.

    ``objects`` items have ``path`` (relative to the manifest), ``size`` (bytes), ``sha256`` (null for a link
    whose bytes a link job did not read), ``rows`` (int or null) and ``content_type``; in a local folder also
    ``mtime_ns`` (the file's modification time as the job left it, nanoseconds: a re-run stages a file
    edited since again), in object storage ``uri``, in a manifest job also ``entry``. ``entries`` (manifest
    jobs) lists every entry with its ``name``, redacted ``source``, output ``paths`` and ``error``. Further
    fields may be added.
    """

    model_config = ConfigDict(extra="allow")
    #: Fields beyond the listed ones (stated, so the type of the extras never depends on pydantic's own).
    __pydantic_extra__: dict[str, Any]

    manifest_version: int
    job_id: str
    name: str
    source: str
    method: str
    convert: dict[str, Any] | None = None
    created_at: datetime
    finished_at: datetime
    total_bytes: int
    total_rows: int | None = None
    objects: list[dict[str, Any]]
    entries: list[dict[str, Any]] | None = None


#: Models, each with the JSON Schema mode it is read in: validation for requests, serialization for answers.
SchemaModels = tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...]

#: The models whose schemas the document holds, each with the JSON Schema mode it is read in.
SCHEMA_MODELS: SchemaModels = (
    (CreateJob, "validation"),
    (ListJobsQuery, "validation"),
    (ChunksQuery, "validation"),
    (DescribeJob, "serialization"),
    (ListJobsResponse, "serialization"),
    (DescribeChunk, "serialization"),
    (JobError, "serialization"),
    (ChunkList, "serialization"),
    (JobLog, "serialization"),
    (Manifest, "serialization"),
    (ErrorBody, "serialization"),
)


def generated_schemas(models: SchemaModels = SCHEMA_MODELS) -> dict[str, Any]:
    """``components.schemas`` as ``models`` (pairs of a model and its JSON Schema mode) define them:
    ``{name: JSON Schema (2020-12) dict}``, every nested model and enum under its own name, referenced as
    ``#/components/schemas/<name>``."""
    _, top = models_json_schema(list(models), ref_template=REF_TEMPLATE)
    return dict(sorted(top.get("$defs", {}).items()))


def load_document(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The OpenAPI document at ``path`` as a dict. Raises OSError, yaml.YAMLError."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (docstrings) as literal blocks, so the file reads as written."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render_document(document: dict[str, Any]) -> str:
    """``document`` as the YAML text of ``openapi.yaml`` (keys in their given order)."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def schema_drift(
    document: dict[str, Any],
    models: SchemaModels = SCHEMA_MODELS,
    *,
    written_by_hand: frozenset[str] = frozenset(),
) -> list[str]:
    """The differences between ``document``'s ``components.schemas`` and :func:`generated_schemas` of
    ``models``, one sentence each (empty when they agree). Schemas named in ``written_by_hand`` are not
    compared."""
    given = {
        k: v for k, v in document.get("components", {}).get("schemas", {}).items() if k not in written_by_hand
    }
    wanted = generated_schemas(models)
    problems = [f"schema {name} is missing" for name in wanted if name not in given]
    problems += [f"schema {name} has no model" for name in given if name not in wanted]
    problems += [
        f"schema {name} differs from its model"
        for name in wanted
        if name in given and given[name] != wanted[name]
    ]
    return problems


def update_document(path: Path = SPEC_PATH) -> bool:
    """Rewrite the ``components.schemas`` of the document at ``path`` from the models; True when the
    file changed. Raises OSError, yaml.YAMLError."""
    document = load_document(path)
    document.setdefault("components", {})["schemas"] = generated_schemas()
    text = render_document(document)
    if text == path.read_text(encoding="utf-8"):
        return False
    path.write_text(text, encoding="utf-8")
    return True


class OpenAPIHandler(JSONHandlerMixin, APIHandler):
    """``GET /openapi.yaml``: this contract, with ``servers`` set to this server's API root."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self.document_text(), set_content_type="application/yaml; charset=utf-8")

    def document_text(self) -> str:
        """The served YAML (made once per server and cached in its settings)."""
        text = self.settings.get("staging_openapi_text")
        if text is None:
            document = load_document()
            document["servers"] = [{"url": url_path_join(self.base_url, API_ROOT)}]
            text = self.settings["staging_openapi_text"] = render_document(document)
        return text  # type: ignore[no-any-return]


#: Routes for ``ServerApp.extra_services`` (and for a route table that wants this one).
default_handlers = [(rf"/{API_ROOT}/openapi.yaml", OpenAPIHandler)]


def main() -> int:
    """``python -m jupyter_staging.server.openapi``: refresh the schemas of ``openapi.yaml``."""
    changed = update_document()
    print(f"{SPEC_PATH}: {'schemas updated' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
