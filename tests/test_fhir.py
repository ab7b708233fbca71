"""A kept study as a FHIR R4 DiagnosticReport: validated by fhir.resources (parsed back,
byte for byte), every field held against the study it comes from, R4's elements only,
and the endpoint behind the same authentication as the other study routes, through the
real app and a real model."""

from __future__ import annotations

import datetime as dt
import io
import json

import pydantic
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from pneumo import fhir
from pneumo.screening import DISCLAIMER
from pneumo.studies import Study
from pneumo.web import create_app
from synthetic import encode, synthetic_xray

TOKEN = "fhir-test-token-Zq8v1Lr5Xw3Np7Kd2Hs6Jm4B"
STUDY_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

#: The elements of FHIR R4 (4.0.1) for the resources and types written, from R4's own
#: pages: whatever the R4B models would accept, the output must stay inside these.
R4_ELEMENTS = {
    "DiagnosticReport": {
        "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
        "extension", "modifierExtension", "identifier", "basedOn", "status", "category",
        "code", "subject", "encounter", "effectiveDateTime", "effectivePeriod", "issued",
        "performer", "resultsInterpreter", "specimen", "result", "imagingStudy", "media",
        "conclusion", "conclusionCode", "presentedForm"},
    "Observation": {
        "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
        "extension", "modifierExtension", "identifier", "basedOn", "partOf", "status",
        "category", "code", "subject", "focus", "encounter", "effectiveDateTime",
        "effectivePeriod", "effectiveTiming", "effectiveInstant", "issued", "performer",
        "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
        "valueInteger", "valueRange", "valueRatio", "valueSampledData", "valueTime",
        "valueDateTime", "valuePeriod", "dataAbsentReason", "interpretation", "note",
        "bodySite", "method", "specimen", "device", "referenceRange", "hasMember",
        "derivedFrom", "component"},
    "Observation.component": {
        "extension", "modifierExtension", "code", "valueQuantity", "valueCodeableConcept",
        "valueString", "valueBoolean", "valueInteger", "valueRange", "valueRatio",
        "valueSampledData", "valueTime", "valueDateTime", "valuePeriod",
        "dataAbsentReason", "interpretation", "referenceRange"},
    "Device": {
        "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
        "extension", "modifierExtension", "identifier", "definition", "udiCarrier",
        "status", "statusReason", "distinctIdentifier", "manufacturer", "manufactureDate",
        "expirationDate", "lotNumber", "serialNumber", "deviceName", "modelNumber",
        "partNumber", "type", "specialization", "version", "property", "patient", "owner",
        "contact", "location", "url", "note", "safety", "parent"},
    "Device.deviceName": {"extension", "modifierExtension", "name", "type"},
    "Device.version": {"extension", "modifierExtension", "type", "component", "value"},
    "Annotation": {"extension", "authorReference", "authorString", "time", "text"},
}


def study(**changes) -> Study:
    fields = dict(id=STUDY_ID, created="2026-12-02T09:15:42+00:00", label="PNEUMONIA",
                  probability=0.812345, threshold=0.641, inconclusive=False,
                  input_status="ok", model_name="pneumo-xception",
                  model_version="0.1.0+v2-head")
    return Study(**{**fields, **changes})


def parse(body: str | bytes) -> DiagnosticReport:
    """The answer parsed by fhir.resources, and written back to the same JSON."""
    report = DiagnosticReport.model_validate_json(body)
    assert json.loads(report.model_dump_json()) == json.loads(body)
    return report


def contained(report: dict) -> dict[str, dict]:
    return {resource["id"]: resource for resource in report["contained"]}


def components(observation: dict) -> dict[str, dict]:
    found = {}
    for component in observation["component"]:
        (coding,) = component["code"]["coding"]
        assert coding["system"] == fhir.CODE_SYSTEM
        found[coding["code"]] = component
    return found


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_against(report: dict, kept: Study) -> None:
    """Every field of the report, from the study it was made of."""
    positive = kept.label == "PNEUMONIA"
    assert report["resourceType"] == "DiagnosticReport" and report["id"] == kept.id
    assert report["identifier"] == [{"use": "official", "system": fhir.STUDY_ID_SYSTEM,
                                     "value": kept.id}]
    assert report["status"] == "final"
    assert report["category"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
        "display": "Radiology"}]}]
    assert report["code"]["coding"] == [{"system": "http://loinc.org", "code": "36554-4",
                                         "display": "XR Chest Single view"}]
    created = instant(kept.created)
    assert instant(report["effectiveDateTime"]) == created == instant(report["issued"])
    assert report["conclusion"].endswith(DISCLAIMER)
    for words in (kept.label, f"{kept.probability * 100:.1f}%", f"{kept.threshold * 100:.1f}%",
                  f"{kept.model_name} {kept.model_version}"):
        assert words in report["conclusion"], words
    assert ("Inconclusive" in report["conclusion"]) == kept.inconclusive
    assert ("Input check: warning" in report["conclusion"]) == (kept.input_status == "warning")
    (concluded,) = report["conclusionCode"][0]["coding"]
    assert concluded["system"] == "http://snomed.info/sct"
    assert concluded["code"] == ("233604007" if positive else "233604007:408729009=410516002")
    assert "subject" not in json.dumps(report)  # the store has no patient to name

    parts = contained(report)
    assert set(parts) == {"finding", "model"}
    assert report["result"] == [{"reference": "#finding",
                                 "display": "Pneumonia screening finding"}]
    finding, model = parts["finding"], parts["model"]
    assert finding["resourceType"] == "Observation" and finding["status"] == "final"
    assert finding["code"]["coding"] == [{"system": "http://snomed.info/sct",
                                          "code": "233604007", "display": "Pneumonia"}]
    assert finding["valueCodeableConcept"]["coding"][0]["code"] == (
        "52101004" if positive else "2667000")
    assert finding["valueCodeableConcept"]["text"] == kept.label
    assert finding["interpretation"][0]["coding"][0]["code"] == ("POS" if positive else "NEG")
    assert instant(finding["effectiveDateTime"]) == created == instant(finding["issued"])
    values = components(finding)
    for name, number in (("probability", kept.probability), ("threshold", kept.threshold)):
        assert values[name]["valueQuantity"] == {
            "value": number, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}
    assert values["inconclusive"]["valueBoolean"] is kept.inconclusive
    assert values["input-check"]["valueCodeableConcept"]["coding"][0]["code"] == \
        kept.input_status
    if kept.verdict is None:
        assert "reader-verdict" not in values and "note" not in finding
    else:
        assert values["reader-verdict"]["valueCodeableConcept"]["coding"][0]["code"] == \
            kept.verdict
        (note,) = finding["note"]
        assert instant(note["time"]) == instant(kept.feedback_updated)
        assert kept.comment in note["text"]
    assert finding["device"]["reference"] == "#model"
    assert model["resourceType"] == "Device"
    assert model["deviceName"] == [{"name": kept.model_name, "type": "model-name"}]
    assert model["version"] == [{"value": kept.model_version}]


# -- the resource -----------------------------------------------------------------------------

CASES = {
    "pneumonia": study(),
    "normal, inconclusive, input warning": study(label="NORMAL", probability=0.52,
                                                 inconclusive=True, input_status="warning"),
    "corrected by the reader": study(label="NORMAL", probability=0.1, verdict="PNEUMONIA",
                                     comment="RLL consolidation <on the lateral> & more",
                                     feedback_updated="2026-12-02T10:01:02+00:00"),
    "agreed": study(verdict="agree", feedback_updated="2026-12-03T00:00:00+00:00"),
}


@pytest.mark.parametrize("kept", CASES.values(), ids=CASES.keys())
def test_the_report_validates_and_carries_every_field_of_the_study(kept):
    body = fhir.report_json(kept)
    check_against(parse(body).model_dump(mode="json"), kept)
    check_against(json.loads(body), kept)


@pytest.mark.parametrize("kept", CASES.values(), ids=CASES.keys())
def test_only_elements_of_fhir_r4_are_written(kept):
    report = json.loads(fhir.report_json(kept))
    assert set(report) <= R4_ELEMENTS["DiagnosticReport"]
    parts = contained(report)
    finding, model = parts["finding"], parts["model"]
    assert set(finding) <= R4_ELEMENTS["Observation"]
    for component in finding["component"]:
        assert set(component) <= R4_ELEMENTS["Observation.component"]
    for note in finding.get("note", []):
        assert set(note) <= R4_ELEMENTS["Annotation"]
    assert set(model) <= R4_ELEMENTS["Device"]
    assert all(set(name) <= R4_ELEMENTS["Device.deviceName"] for name in model["deviceName"])
    assert all(set(version) <= R4_ELEMENTS["Device.version"] for version in model["version"])


def test_contained_resources_follow_r4s_rules():
    """dom-2: no contained resource contains others; dom-3: each is referred to from the
    report; dom-4: none has a version or last-updated time; and the report has the
    narrative (dom-6) its conclusion is, escaped."""
    report = json.loads(fhir.report_json(CASES["corrected by the reader"]))
    body = json.dumps(report)
    for resource in report["contained"]:
        assert "contained" not in resource and "meta" not in resource
        assert f'"reference": "#{resource["id"]}"' in body
    div = report["text"]["div"]
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert "<on the lateral>" not in div and "Comment" not in div


def test_the_validation_is_not_vacuous():
    """fhir.resources refuses what is not FHIR: a time that is no dateTime."""
    with pytest.raises(pydantic.ValidationError):
        fhir.diagnostic_report(study(created="yesterday at noon"))


# -- the endpoint -----------------------------------------------------------------------------

def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def app(tiny_predictor, tmp_path):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(tmp_path), "PNEUMO_API_TOKEN": TOKEN})


def predict(client, data: bytes | None = None, name: str = "a.png", headers=None) -> dict:
    data = data or encode(synthetic_xray(2, (300, 260)))
    response = client.post("/api/v1/predict?heatmap=false", headers=headers or bearer(),
                           data={"file": (io.BytesIO(data), name)})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_the_endpoint_answers_fhir_json_made_of_the_kept_study(app):
    client = app.test_client()
    answer = predict(client)
    url = f"/api/v1/studies/{answer['study_id']}/fhir"
    response = client.get(url, headers=bearer())
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0"
    assert response.mimetype == "application/fhir+json"
    assert response.headers["Cache-Control"] == "no-store"  # a result about a patient
    kept = app.extensions["pneumo.studies"].get(answer["study_id"])
    check_against(parse(response.data).model_dump(mode="json"), kept)
    # ... which is what the prediction said, and the JSON API says, of it
    assert (kept.label, kept.probability, kept.threshold, kept.inconclusive) == (
        answer["label"], answer["probability"], answer["threshold"], answer["inconclusive"])
    assert (kept.model_name, kept.model_version) == (answer["model"]["name"],
                                                     answer["model"]["version"])
    assert kept.to_dict() == client.get(f"/api/v1/studies/{kept.id}", headers=bearer()).get_json()
    # the reader's feedback, once given, is in it
    client.post(f"/api/v1/studies/{kept.id}/feedback", headers=bearer(),
                json={"verdict": "NORMAL", "comment": "clear lungs"})
    reviewed = app.extensions["pneumo.studies"].get(kept.id)
    report = json.loads(client.get(url, headers=bearer()).data)
    check_against(report, reviewed)
    assert components(contained(report)["finding"])["reader-verdict"][
        "valueCodeableConcept"]["coding"][0]["code"] == "NORMAL"


def test_a_dicom_studys_report_carries_no_identifiers(app):
    from dicom_factory import PHI, make_dicom, radiograph

    client = app.test_client()
    dicom = make_dicom(radiograph(12, (320, 280)), bits_stored=12)
    study_id = predict(client, dicom, "Doe_Jane.dcm")["study_id"]
    body = client.get(f"/api/v1/studies/{study_id}/fhir", headers=bearer()).get_data(as_text=True)
    for secret in [*PHI.values(), "Doe", "Jane", "1970"]:
        assert secret not in body


def _status(client, path: str, **kwargs) -> int:
    return client.get(path, **kwargs).status_code


def test_the_endpoint_is_guarded_as_the_other_study_routes(app, tiny_predictor, tmp_path):
    """Whoever may not read a study may not read its FHIR form, with the same answer."""
    client = app.test_client()
    study_id = predict(client)["study_id"]
    one, as_fhir = f"/api/v1/studies/{study_id}", f"/api/v1/studies/{study_id}/fhir"
    for headers in ({}, bearer("wrong-token-of-some-length-000000000"), bearer(TOKEN + "x"),
                    {"Authorization": f"Basic {TOKEN}"}):
        response = client.get(as_fhir, headers=headers)
        assert response.status_code == 401 == _status(client, one, headers=headers)
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.mimetype == "application/json"  # errors are the API's

    closed = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                         "PNEUMO_DATA_DIR": str(tmp_path / "closed")}).test_client()
    response = closed.get(as_fhir)
    assert response.status_code == 403 == _status(closed, one)
    assert response.get_json()["error"]["code"] == "forbidden"

    local = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                        "PNEUMO_DATA_DIR": str(tmp_path / "local"),
                        "PNEUMO_LOCAL_USER": True}).test_client()
    local_id = predict(local, headers={})["study_id"]
    mine, mine_fhir = f"/api/v1/studies/{local_id}", f"/api/v1/studies/{local_id}/fhir"
    assert _status(local, mine_fhir) == 200 == _status(local, mine)
    for headers, address in (({"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1"),
                             ({}, "192.0.2.10")):
        environ = {"REMOTE_ADDR": address}
        assert _status(local, mine_fhir, headers=headers, environ_base=environ) == 403 == \
            _status(local, mine, headers=headers, environ_base=environ)


def test_a_missing_study_and_a_server_without_history_get_the_apis_errors(app, tiny_predictor):
    client = app.test_client()
    missing = client.get("/api/v1/studies/nope/fhir", headers=bearer())
    assert missing.status_code == 404 and missing.mimetype == "application/json"
    assert missing.get_json()["error"]["code"] == "not_found"
    off = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_API_TOKEN": TOKEN, "PNEUMO_KEEP_STUDIES": False}).test_client()
    response = off.get(f"/api/v1/studies/{STUDY_ID}/fhir", headers=bearer())
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "history_off"
    assert client.post(f"/api/v1/studies/{STUDY_ID}/fhir", headers=bearer()).status_code == 405
