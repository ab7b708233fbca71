"""The OpenAPI description is served, well formed, complete, and true: real
responses of every documented operation, success and failure, validate against it."""

from __future__ import annotations

import io
import re

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from conftest import encode, synthetic_xray
from pneumo.imaging import ImageError
from pneumo.web import create_app
from pneumo.web.auth import MAX_FAILURES, make_token
from pneumo.web.errors import ERRORS, HTTP_CODES

SPEC_URI = "urn:pneumo:openapi"


@pytest.fixture
def app(tiny_predictor):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "MAX_CONTENT_LENGTH": 256 * 1024, "PNEUMO_MAX_BATCH_FILES": 3})


@pytest.fixture
def spec(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def upload(client, url, files):
    items = MultiDict([("file", FileStorage(io.BytesIO(data), filename=name))
                       for name, data in files])
    boundary, body = encode_multipart(items)
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validate(spec: dict, response, path: str, method: str) -> None:
    """Fail unless ``response`` is documented for ``method path`` and matches its schema
    (a file answer, e.g. a PDF, only by its media type; JSON, and JSON-based types such
    as FHIR's ``application/fhir+json``, by their schema)."""
    operation = spec["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], \
        f"{method.upper()} {path} answered {status}, which the description does not list"
    content = operation["responses"][status]["content"]
    assert response.mimetype in content, (path, status, response.mimetype)
    if response.mimetype != "application/json" and not response.mimetype.endswith("+json"):
        return
    schema = {"$ref": SPEC_URI + _pointer("paths", path, method, "responses", status, "content",
                                          response.mimetype, "schema")}
    registry = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012))
    Draft202012Validator(schema, registry=registry).validate(response.get_json())


def test_the_description_is_openapi_31_with_valid_schemas(spec):
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] and spec["info"]["version"]
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert response["description"], (path, method, status)


def test_every_api_route_is_described_and_nothing_else(app, spec):
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # Flask -> OpenAPI
            routes[path] = sorted(rule.methods - {"HEAD", "OPTIONS"})
    described = {path: sorted(m.upper() for m in ops) for path, ops in spec["paths"].items()}
    assert routes == described


def test_success_responses_match(client, spec, tiny_predictor):
    png = encode(synthetic_xray(2, (120, 90)))
    validate(spec, upload(client, "/api/v1/predict", [("a.png", png)]),
             "/api/v1/predict", "post")
    validate(spec, upload(client, "/api/v1/predict?heatmap=false&image=true", [("a.png", png)]),
             "/api/v1/predict", "post")
    batch = upload(client, "/api/v1/predict/batch",
                   [("a.png", png), ("b.png", b"text"), ("c.png", png[:60])])
    assert batch.get_json()["succeeded"] == 1
    validate(spec, batch, "/api/v1/predict/batch", "post")
    validate(spec, client.get("/api/v1/health"), "/api/v1/health", "get")
    validate(spec, client.get("/api/v1/model"), "/api/v1/model", "get")
    validate(spec, client.get("/api/v1/openapi.json"), "/api/v1/openapi.json", "get")


def test_error_responses_match(client, spec, app):
    png = encode(synthetic_xray(2, (120, 90)))
    cases = [
        (client.post("/api/v1/predict"), "/api/v1/predict", 400),
        (upload(client, "/api/v1/predict?heatmap=perhaps", [("a.png", png)]),
         "/api/v1/predict", 400),
        (client.post("/api/v1/predict", headers={"Origin": "https://elsewhere.example"}),
         "/api/v1/predict", 403),
        (client.get("/api/v1/predict"), "/api/v1/predict", 405),
        (upload(client, "/api/v1/predict", [("a.png", b"\0" * 300_000)]), "/api/v1/predict",
         413),
        (upload(client, "/api/v1/predict", [("a.svg", png)]), "/api/v1/predict", 415),
        (upload(client, "/api/v1/predict", [("a.png", png[:80])]), "/api/v1/predict", 422),
        (client.post("/api/v1/predict/batch"), "/api/v1/predict/batch", 400),
        (upload(client, "/api/v1/predict/batch", [("a.png", png)] * 4),
         "/api/v1/predict/batch", 413),
        (client.delete("/api/v1/health"), "/api/v1/health", 405),
    ]
    for response, path, status in cases:
        assert response.status_code == status, (path, status, response.get_json())
        method = "get" if path in ("/api/v1/health", "/api/v1/model") else "post"
        validate(spec, response, path, method)


def test_server_side_failures_match(tiny_predictor, spec, tmp_path, monkeypatch):
    png = encode(synthetic_xray(2, (120, 90)))
    loading = create_app({"TESTING": True, "PNEUMO_MODEL": str(tmp_path / "missing"),
                          "PNEUMO_MODEL_LOADING": "background"})
    loading.extensions["pneumo.model"].wait(60)
    client = loading.test_client()
    validate(spec, client.get("/api/v1/health"), "/api/v1/health", "get")
    validate(spec, client.get("/api/v1/model"), "/api/v1/model", "get")
    validate(spec, upload(client, "/api/v1/predict", [("a.png", png)]), "/api/v1/predict", "post")

    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_INFERENCE_TIMEOUT": 1e-4})
    client = app.test_client()
    timed_out = upload(client, "/api/v1/predict/batch", [("a.png", png)])
    assert timed_out.status_code == 504
    validate(spec, timed_out, "/api/v1/predict/batch", "post")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    app.config["PNEUMO_INFERENCE_TIMEOUT"] = 60
    monkeypatch.setattr(tiny_predictor, "predict_batch", broken)
    failed = upload(client, "/api/v1/predict", [("a.png", png)])
    assert failed.status_code == 500
    validate(spec, failed, "/api/v1/predict", "post")


def test_an_undocumented_field_would_be_caught(client, spec):
    """The check is not vacuous: a response with an extra field fails validation."""
    response = upload(client, "/api/v1/predict?heatmap=false",
                      [("a.png", encode(synthetic_xray(1, (64, 64))))])
    response.set_data(response.get_data(as_text=True).replace('"label"', '"extra":1,"label"'))
    with pytest.raises(Exception, match="extra"):
        validate(spec, response, "/api/v1/predict", "post")


def test_unknown_api_paths_answer_the_documented_error_shape(client, spec):
    response = client.get("/api/v1/unknown")
    assert response.status_code == 404
    registry = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012))
    Draft202012Validator({"$ref": SPEC_URI + "#/components/schemas/Error"},
                         registry=registry).validate(response.get_json())


# -- the error registry and the routes behind the token -------------------------------------

def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_code_is_registered_once_with_the_status_it_is_sent_with(spec):
    """The registry is the description's list of codes, and the decoder's errors are in it
    with the same status, so a code cannot be sent that a client was not told about."""
    enum = spec["components"]["schemas"]["ErrorObject"]["properties"]["code"]["enum"]
    assert enum == list(ERRORS)
    for cls in [ImageError, *_subclasses(ImageError)]:
        assert ERRORS[cls.code].status == cls.status, cls
    for status, kind in HTTP_CODES.items():
        assert kind.status == status
    documented = {int(status) for ops in spec["paths"].values() for op in ops.values()
                  for status in op["responses"]}
    assert {kind.status for kind in ERRORS.values()} - documented <= {ERRORS["http_error"].status}


def test_the_described_limits_are_the_enforced_ones(client, app, spec, tmp_path):
    """A page past MAX_PAGE, an empty or oversized batch: refused, and the description
    says so, so a client built from it is not surprised."""
    batch = spec["paths"]["/api/v1/predict/batch"]["post"]["requestBody"]["content"][
        "multipart/form-data"]
    files = batch["schema"]["properties"]["file"]
    assert files["minItems"] == 1
    assert files["maxItems"] == app.config["PNEUMO_MAX_BATCH_FILES"] == 3
    assert batch["encoding"]["file"]["contentType"]
    page = next(p for p in spec["paths"]["/api/v1/studies"]["get"]["parameters"]
                if p["name"] == "page")["schema"]
    assert page["minimum"] == 1
    store_app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": app.config["PNEUMO_PREDICTOR"],
                            "PNEUMO_LOCAL_USER": True, "PNEUMO_DATA_DIR": str(tmp_path)})
    local = store_app.test_client()
    ok = local.get(f"/api/v1/studies?page={page['maximum']}",
                   environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert ok.status_code == 200 and ok.get_json()["studies"] == []
    beyond = local.get(f"/api/v1/studies?page={page['maximum'] + 1}",
                       environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert beyond.status_code == 400


@pytest.fixture
def token_app(tiny_predictor, tmp_path):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_API_TOKEN": make_token(), "PNEUMO_DATA_DIR": str(tmp_path)})


def test_history_responses_match(token_app, spec):
    """Every studies route, success and failure, with the token and without."""
    client = token_app.test_client()
    bearer = {"Authorization": f"Bearer {token_app.config['PNEUMO_API_TOKEN']}"}
    png = encode(synthetic_xray(2, (120, 90)))
    items = MultiDict([("file", FileStorage(io.BytesIO(png), filename="a.png"))])
    boundary, body = encode_multipart(items)
    kept = client.post("/api/v1/predict?heatmap=false", data=body, headers=bearer,
                       content_type=f"multipart/form-data; boundary={boundary}")
    study_id = kept.get_json()["study_id"]
    assert study_id
    one, thumb = "/api/v1/studies/{study_id}", "/api/v1/studies/{study_id}/thumbnail.png"
    report, feedback = "/api/v1/studies/{study_id}/report.pdf", \
        "/api/v1/studies/{study_id}/feedback"
    as_fhir = "/api/v1/studies/{study_id}/fhir"
    cases = [
        ("get", "/api/v1/studies", "/api/v1/studies", {}, 200),
        ("get", "/api/v1/studies?page=0", "/api/v1/studies", {}, 400),
        ("get", "/api/v1/studies?since=yesterday", "/api/v1/studies", {}, 400),
        ("get", "/api/v1/studies?label=maybe", "/api/v1/studies", {}, 400),
        ("get", f"/api/v1/studies/{study_id}", one, {}, 200),
        ("get", "/api/v1/studies/nope", one, {}, 404),
        ("get", f"/api/v1/studies/{study_id}/thumbnail.png", thumb, {}, 200),
        ("get", "/api/v1/studies/nope/thumbnail.png", thumb, {}, 404),
        ("get", f"/api/v1/studies/{study_id}/fhir", as_fhir, {}, 200),
        ("get", "/api/v1/studies/nope/fhir", as_fhir, {}, 404),
        ("get", f"/api/v1/studies/{study_id}/report.pdf", report, {}, 200),
        ("get", f"/api/v1/studies/{study_id}/report.pdf?notes=x", report, {}, 400),
        ("post", f"/api/v1/studies/{study_id}/report.pdf", report, {"data": {"notes": "x" * 2001}},
         400),
        ("post", f"/api/v1/studies/{study_id}/feedback", feedback,
         {"json": {"verdict": "agree"}}, 200),
        ("post", f"/api/v1/studies/{study_id}/feedback", feedback,
         {"json": {"verdict": "perhaps"}}, 400),
        ("post", "/api/v1/studies/nope/feedback", feedback, {"json": {"verdict": "agree"}}, 404),
        ("delete", "/api/v1/studies", "/api/v1/studies", {}, 405),
    ]
    for method, url, path, kwargs, status in cases:
        response = getattr(client, method)(url, headers=bearer, **kwargs)
        assert response.status_code == status, (url, status, response.get_data()[:200])
        validate(spec, response, path, "get" if method == "delete" else method)
    for method, path in [("get", "/api/v1/studies"), ("get", one), ("get", thumb),
                         ("get", as_fhir), ("get", report), ("post", report),
                         ("post", feedback)]:
        response = getattr(client, method)(path.replace("{study_id}", study_id))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        validate(spec, response, path, method)
    wrong = {"Authorization": "Bearer " + "w" * 43}
    for _ in range(MAX_FAILURES - 1):
        assert client.get("/api/v1/studies", headers=wrong).status_code == 401
    throttled = client.get("/api/v1/studies", headers=wrong)  # the last allowed failure
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    validate(spec, throttled, "/api/v1/studies", "get")


def test_closed_and_absent_history_responses_match(tiny_predictor, spec):
    closed = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor})
    response = closed.test_client().get("/api/v1/studies")
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    validate(spec, response, "/api/v1/studies", "get")
    token = make_token()
    off = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_API_TOKEN": token, "PNEUMO_KEEP_STUDIES": False})
    response = off.test_client().get("/api/v1/studies/x",
                                     headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "history_off"
    validate(spec, response, "/api/v1/studies/{study_id}", "get")
