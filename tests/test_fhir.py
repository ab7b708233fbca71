"""A kept study as a FHIR R4 DiagnosticReport: validated by fhir.resources (parsed back,
byte for byte), every field held against the study it comes from, R4's elements only."""

from __future__ import annotations

import datetime as dt
import json

import pydantic
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from pneumo import fhir
from pneumo.screening import DISCLAIMER
from pneumo.studies import Study

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
