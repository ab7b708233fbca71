"""The API under generated input: mutated image files (RELIABILITY.md row 13) and
requests generated from the OpenAPI description by schemathesis (row 25).

Both run in-process through the WSGI app on the tiny real model, derandomised
and bounded so that CI sees the same inputs every time in well under a minute;
``PNEUMO_FUZZ_EXAMPLES`` raises the count for a deeper, randomised search.
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import uid

from dicom_factory import make_dicom, radiograph
from pneumo.web import create_app
from synthetic import encode, synthetic_xray
from test_api_openapi import upload, validate
from test_fuzz_imaging import mutated

#: Examples per file family, and schemathesis cases per generation mode.
EXAMPLES = int(os.environ.get("PNEUMO_FUZZ_EXAMPLES", "120"))
CASES = int(os.environ.get("PNEUMO_SCHEMA_EXAMPLES", "150"))
DEEP = "PNEUMO_FUZZ_EXAMPLES" in os.environ

FIGURES = "Generated inputs (rows 13 and 25)"


@functools.cache
def api_seeds(family: str) -> tuple[bytes, ...]:
    """Valid files big enough to pass the input gate's resolution check, so that
    mutations that still decode reach the network."""
    gray = synthetic_xray(11, (96, 80))
    if family == "PNG":
        rgba = np.dstack([gray, gray, gray, np.full_like(gray, 230)])
        return encode(gray), encode(gray.astype(np.uint16) * 257), encode(rgba)
    if family == "JPEG":
        return encode(gray, "JPEG", quality=90), encode(gray, "JPEG", progressive=True)
    twelve = radiograph(bits=12, size=(96, 80))
    return (make_dicom(twelve, bits_stored=12, WindowCenter=2000, WindowWidth=3000),
            make_dicom(twelve, uid.RLELossless, bits_stored=12, photometric="MONOCHROME1"),
            make_dicom(twelve, uid.JPEG2000Lossless, bits_stored=12))


@pytest.fixture(scope="module")
def app(tiny_predictor, tmp_path_factory):
    """The app as served (studies kept), in a data folder of its own: the hundreds of
    generated requests stay out of the session's shared one."""
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(tmp_path_factory.mktemp("fuzz-data")),
                       "PNEUMO_LOCAL_USER": True})


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/api/v1/openapi.json").get_json()


@pytest.fixture(scope="module")
def tally(reliability_figures):
    """Status codes seen, by family; written to the reliability report at the end."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    yield counts
    for family, seen in counts.items():
        total = sum(seen.values())
        errors = sum(n for status, n in seen.items() if status >= 500)
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(seen.items()))
        reliability_figures.add(FIGURES, f"{family}: requests (status: count)",
                                f"{total} ({shown})")
        reliability_figures.add(FIGURES, f"{family}: 5xx answers (crashes)", errors)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not DEEP,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def post_mutated(app, spec, tally, family: str, data: bytes) -> None:
    name = {"PNG": "x.png", "JPEG": "x.jpg", "DICOM": "x.dcm"}[family]
    response = upload(app.test_client(), "/api/v1/predict?heatmap=true", [(name, data)])
    tally[f"mutated {family} files to /api/v1/predict"][response.status_code] += 1
    assert response.status_code in (200, 413, 415, 422), response.get_data(as_text=True)[:300]
    validate(spec, response, "/api/v1/predict", "post")  # a documented answer, every time
    if response.status_code == 200:
        body = response.get_json()
        assert body["label"] in ("NORMAL", "PNEUMONIA") and 0 <= body["probability"] <= 1


@pytest.mark.slow
@pytest.mark.reliability(13)
@pytest.mark.parametrize("family", ["PNG", "JPEG", "DICOM"])
def test_row13_mutated_files_posted_to_the_api_get_2xx_or_4xx(app, spec, tally, family):
    for data in api_seeds(family):  # the unmutated seeds reach the model
        response = upload(app.test_client(), "/api/v1/predict", [("seed", data)])
        assert response.status_code == 200, response.get_json()

    @FUZZ
    @given(data=mutated(family, api_seeds))
    def run(data):
        post_mutated(app, spec, tally, family, data)

    run()


@pytest.mark.slow
@pytest.mark.reliability(25)
def test_row25_requests_generated_from_the_openapi_description_get_no_5xx(app, tally):
    """Positive (schema-valid) and negative (schema-violating) requests for every operation.

    The checks are all schemathesis's own: no 5xx, only documented status codes and
    content types, bodies that match the response schemas, schema-violating requests
    refused, and schema-valid ones accepted. 'Accepted' also allows the refusals the
    description documents for valid-looking input: 415/422 for bytes that are not a
    readable X-ray (the schema can only say 'binary'), 404 for a study id that does not
    exist, 401/403 for credentials. The limits (page range, 1-16 files) are in the
    schema, so a request past them is not schema-valid."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig

    # a schema-violating request may also be refused as too large: more files than a
    # batch takes is 413 too_many_files, as documented
    config = SchemathesisConfig.from_dict({"checks": {
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "403", "404", "415", "422"]},
        "negative_data_rejection": {
            "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415",
                                  "422", "428", "429"]}}})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/api/v1/predict"), ("POST", "/api/v1/predict/batch"),
        ("GET", "/api/v1/health"), ("GET", "/api/v1/model")}
    strategies = [op.as_strategy(generation_mode=mode) for op in operations
                  for mode in schemathesis.GenerationMode]

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=not DEEP,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def run(case):
        response = case.call_and_validate()
        tally["schemathesis cases"][response.status_code] += 1
        assert response.status_code < 500

    run()
    assert sum(tally["schemathesis cases"].values()) >= min(CASES, 50)
