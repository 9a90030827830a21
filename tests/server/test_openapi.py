"""The OpenAPI 3.1 descriptions of the REST APIs agree with the models and route tables, and are served."""

from __future__ import annotations

import re

import pytest
import yaml
from jupyter_server.utils import url_path_join
from tornado.httpclient import HTTPClientError

from jupyter_staging.engine.models import ListJobsQuery
from jupyter_staging.hub import handlers as hub_handlers
from jupyter_staging.hub.requests import StageRequest
from jupyter_staging.server import handlers, openapi
from tests.helpers.api import API, expect_error

HUB_SPEC = openapi.SPEC_PATH.parent.parent / "hub" / "openapi.yaml"
HTTP_VERBS = ("get", "post", "put", "patch", "delete")
#: Hub schemas with no pydantic model (``Operation.to_dict`` and the error body).
HUB_HAND_WRITTEN = frozenset({"Error", "Operation"})


def openapi_path(pattern: str, root: str) -> str:
    """A tornado route ``pattern`` under ``root`` as an OpenAPI path template: ``(?P<x>...)`` -> ``{x}``."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
    path = path.removesuffix("/?").removeprefix(root.rstrip("/"))
    return "/" + path.lstrip("/")


def verbs(handler: type) -> set[str]:
    """The HTTP verbs ``handler`` defines itself or inherits from a class other than tornado's."""
    return {v for v in HTTP_VERBS if getattr(handler, v) is not getattr(handler.__mro__[-2], v, None)}


def routes(table: list, root: str) -> dict[str, set[str]]:
    return {openapi_path(pattern, root): verbs(handler) for pattern, handler in table}


def documented(document: dict) -> dict[str, set[str]]:
    return {path: {v for v in item if v in HTTP_VERBS} for path, item in document["paths"].items()}


def all_refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in all_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_refs(value)]
    return []


def resolve(document: dict, ref: str) -> object:
    node: object = document
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


@pytest.fixture
def document() -> dict:
    return openapi.load_document()


@pytest.fixture
def hub_document() -> dict:
    return openapi.load_document(HUB_SPEC)


def test_schemas_are_generated_from_the_models(document):
    assert openapi.schema_drift(document) == [], "run: python -m jupyter_staging.server.openapi"
    assert set(document["components"]["schemas"]) >= {
        "CreateJob",
        "DescribeJob",
        "DescribeChunk",
        "ListJobsQuery",
        "ListJobsResponse",
        "JobError",
        "Progress",
        "ManifestEntry",
        "ConvertOptions",
        "JobState",
        "ChunkState",
        "ErrorBody",
    }


def test_drift_is_detected(document):
    document["components"]["schemas"]["CreateJob"]["properties"].pop("source")
    del document["components"]["schemas"]["Progress"]
    document["components"]["schemas"]["Extra"] = {"type": "object"}
    assert openapi.schema_drift(document) == [
        "schema Progress is missing",
        "schema Extra has no model",
        "schema CreateJob differs from its model",
    ]


def test_the_file_is_what_the_generator_writes(document):
    assert openapi.render_document(document) == openapi.SPEC_PATH.read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", [openapi.SPEC_PATH, HUB_SPEC], ids=["server", "hub"])
def test_documents_are_valid_openapi_3_1(spec):
    validator = pytest.importorskip("openapi_spec_validator")
    document = openapi.load_document(spec)
    assert document["openapi"].startswith("3.1.")
    validator.validate(document)
    for ref in all_refs(document):
        resolve(document, ref)


def test_every_route_is_documented_with_its_verbs(document):
    table = handlers.default_handlers + openapi.default_handlers
    assert documented(document) == routes(table, f"/{openapi.API_ROOT}")


def test_list_query_parameters_match_the_model(document):
    parameters = {p["name"]: p for p in document["paths"]["/jobs"]["get"]["parameters"]}
    assert set(parameters) == set(ListJobsQuery.model_fields)
    limit = ListJobsQuery.model_json_schema()["properties"]["limit"]
    assert {k: parameters["limit"]["schema"][k] for k in ("minimum", "maximum", "default")} == {
        k: limit[k] for k in ("minimum", "maximum", "default")
    }


def test_hub_document_names_every_hub_route(hub_document):
    prefix = "/services/staging/"
    assert documented(hub_document) == routes(hub_handlers.default_handlers(prefix), prefix)


def test_hub_stage_request_schema_matches_its_model(hub_document):
    models = ((StageRequest, "validation"),)
    assert openapi.schema_drift(hub_document, models, written_by_hand=HUB_HAND_WRITTEN) == []


@pytest.fixture
def openapi_route(jp_serverapp, jp_base_url):
    """The document's route, unless the server's route table already has it."""
    pattern = url_path_join(jp_base_url, openapi.API_ROOT, "openapi.yaml")
    if not any(h is openapi.OpenAPIHandler for _, h in handlers.default_handlers):
        jp_serverapp.web_app.add_handlers(".*$", [(pattern, openapi.OpenAPIHandler)])


async def test_served_behind_auth_with_this_servers_root(jp_fetch, jp_base_url, openapi_route):
    response = await jp_fetch(*API, "openapi.yaml")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/yaml")
    served = yaml.safe_load(response.body)
    assert served["servers"] == [{"url": url_path_join(jp_base_url, openapi.API_ROOT)}]
    assert served["paths"] == openapi.load_document()["paths"]
    assert openapi.schema_drift(served) == []

    await expect_error(jp_fetch(*API, "openapi.yaml", headers={"Authorization": ""}), 403, "forbidden")
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*API, "openapi.yaml", method="POST", body="{}")
    assert info.value.code == 405
