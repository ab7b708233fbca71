"""A kept study as a FHIR R4 ``DiagnosticReport`` with its ``Observation``: the result in
the form a hospital's record systems read.

One resource, the report, with its parts contained in it rather than a ``Bundle``: the
Observation (the finding, the calibrated probability, the threshold, the inconclusive
flag, the input gate's status and the reader's feedback) and the Device (the model, by
name and version) have no identity of their own on this server, which serves no
``/Observation`` or ``/Device``; they are read, stored and replaced with the report, and a
FHIR server takes the whole of it in one ``POST``. A Bundle would need a ``fullUrl`` that
resolves for each entry.

There is no ``subject``: the study store keeps no patient identifier (``studies.py``),
so the report cannot name a patient. The system that sent the image knows whose it
was and links the report (to its order, its ImagingStudy, its patient) when it files it.

Built and validated with ``fhir.resources``' R4B models: its default models are R5, whose
DiagnosticReport, Observation and Device differ from R4's (R5 renamed Device's
``deviceName``, added ``DiagnosticReport.note``...), and it ships no R4 models. R4B
(4.3.0) is R4 (4.0.1) with changes limited to medicinal-product definitions, evidence and
subscriptions; in the three resources used here its only difference is more allowed
types for ``DiagnosticReport.subject``, which this report does not have. Only elements
that exist in R4 are written (the tests hold the output to R4's element lists), so the
JSON is R4 and is sent as ``application/fhir+json; fhirVersion=4.0``.

Everything about the result comes from the study as kept; nothing is recomputed.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from .screening import DISCLAIMER
from .studies import Study

if TYPE_CHECKING:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

#: The media type of the answer: FHIR JSON, R4 (the ``fhirVersion`` parameter of FHIR R4's
#: http page, so a client need not guess from R4B's models which release this is).
MEDIA_TYPE = "application/fhir+json; fhirVersion=4.0"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

#: The namespace of pneumo's study ids (``Identifier.system``). An OID under 2.25, made once
#: from a random UUID (ITU-T X.667, as DICOM UIDs are made): globally unique without
#: registering a name. Study ids are random UUIDs, so the ids of every pneumo server fit
#: in this one namespace. Never change it: it is how a record system finds the report
#: again.
STUDY_ID_SYSTEM = "urn:oid:2.25.127146121282501692037403884826419278469"

#: pneumo's own codes, for what no standard terminology names (the calibrated
#: probability, the operating threshold, the inconclusive flag, the input gate, the
#: reader's verdict); made the same way as ``STUDY_ID_SYSTEM``. Never change it.
CODE_SYSTEM = "urn:oid:2.25.28331906190828276455028525117022036244"

#: What was done: one frontal chest radiograph read. LOINC 36554-4 "XR Chest Single
#: view" (not 36643-5, "XR Chest 2 Views": the model reads one image; nor 30745-4 "XR
#: Chest Views", which says nothing of how many).
REPORT_CODE = {"system": LOINC, "code": "36554-4", "display": "XR Chest Single view"}
RADIOLOGY = {"system": V2_0074, "code": "RAD", "display": "Radiology"}
IMAGING = {"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}

#: The finding the Observation is about (SNOMED CT 233604007 |Pneumonia (disorder)|),
#: and whether the screen found it: 52101004 |Present| or 2667000 |Absent|.
PNEUMONIA = {"system": SNOMED, "code": "233604007", "display": "Pneumonia"}
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent"}

#: The report's coded conclusion for a NORMAL result. The model answers one question,
#: pneumonia or not, so NORMAL is "pneumonia absent", never "normal chest X-ray"
#: (168731009): it looks for no other finding. SNOMED CT has no pre-coordinated concept
#: for it, so it is the expression |Pneumonia|: |Finding context| = |Known absent|, which
#: R4 allows as a SNOMED CT code (terminologies page, "SNOMED CT Expressions").
PNEUMONIA_ABSENT = {"system": SNOMED, "code": "233604007:408729009=410516002",
                    "display": "Pneumonia known absent"}

POSITIVE = {"system": INTERPRETATION, "code": "POS", "display": "Positive"}
NEGATIVE = {"system": INTERPRETATION, "code": "NEG", "display": "Negative"}

#: pneumo's codes: the Observation's components, and the values of two of them (the input
#: gate's status and the reader's verdict, as the JSON API writes them).
CODES = {
    "probability": "Calibrated probability of pneumonia",
    "threshold": "Operating threshold on the calibrated probability",
    "inconclusive": "In the model's inconclusive band",
    "input-check": "Input gate",
    "reader-verdict": "Reader's verdict",
    "ok": "The image passed the input gate",
    "warning": "The image passed the input gate with a warning: read the result with care",
    "agree": "The reader agreed with the result",
    "NORMAL": "The reader corrected the result to NORMAL",
    "PNEUMONIA": "The reader corrected the result to PNEUMONIA",
}

#: Ids of the contained resources, referred to as ``#finding`` and ``#model``.
FINDING_ID = "finding"
MODEL_ID = "model"


def _code(code: str) -> dict:
    """A CodeableConcept with one of pneumo's own ``CODES``."""
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": CODES[code]}],
            "text": CODES[code]}


def _fraction(value: float) -> dict:
    """A probability as a Quantity: a fraction from 0 to 1, UCUM unit ``1``, exactly
    the number the JSON API gives."""
    return {"value": value, "unit": "1", "system": UCUM, "code": "1"}


def conclusion(study: Study) -> str:
    """The report's conclusion in words: the result, its numbers, its caveats, the model,
    and the "second opinion, not a diagnosis" statement."""
    found = ("pneumonia flagged" if study.label == "PNEUMONIA" else "no pneumonia flagged")
    parts = [f"AI screening result: {study.label} ({found}). Calibrated probability of "
             f"pneumonia {study.probability * 100:.1f}%, operating threshold "
             f"{study.threshold * 100:.1f}%."]
    if study.inconclusive:
        parts.append("Inconclusive: the model was clearly less often right at probabilities "
                     "this close to the threshold; read this result as not sure.")
    if study.input_status == "warning":
        parts.append("Input check: warning: the image is unlike the X-rays the model was "
                     "trained on; read the result with care.")
    parts.append(f"Model: {study.model_name} {study.model_version}.")
    parts.append(DISCLAIMER)
    return " ".join(parts)


def _finding(study: Study) -> dict:
    """The contained Observation: the finding and everything it rests on."""
    positive = study.label == "PNEUMONIA"
    components = [
        {"code": _code("probability"), "valueQuantity": _fraction(study.probability)},
        {"code": _code("threshold"), "valueQuantity": _fraction(study.threshold)},
        {"code": _code("inconclusive"), "valueBoolean": bool(study.inconclusive)},
        {"code": _code("input-check"), "valueCodeableConcept": _code(study.input_status)},
    ]
    observation = {
        "resourceType": "Observation",
        "id": FINDING_ID,
        "status": "final",
        "category": [{"coding": [IMAGING]}],
        "code": {"coding": [PNEUMONIA], "text": "Pneumonia (AI screening, second opinion)"},
        "effectiveDateTime": study.created,
        "issued": study.created,
        "valueCodeableConcept": {"coding": [PRESENT if positive else ABSENT],
                                 "text": study.label},
        "interpretation": [{"coding": [POSITIVE if positive else NEGATIVE]}],
        "device": {"reference": f"#{MODEL_ID}",
                   "display": f"{study.model_name} {study.model_version}"},
        "component": components,
    }
    if study.verdict is not None:
        components.append({"code": _code("reader-verdict"),
                           "valueCodeableConcept": _code(study.verdict)})
        note = CODES[study.verdict] + "."
        if study.comment:
            note += f" Comment: {study.comment}"
        observation["note"] = [{"time": study.feedback_updated, "text": note}]
    return observation


def _model(study: Study) -> dict:
    """The contained Device: the model that made the result, by name and version."""
    return {
        "resourceType": "Device",
        "id": MODEL_ID,
        "deviceName": [{"name": study.model_name, "type": "model-name"}],
        "version": [{"value": study.model_version}],
        "type": {"text": "AI software: pneumonia screening of frontal chest radiographs "
                         "(a second opinion, not a diagnosis)"},
    }


def diagnostic_report(study: Study) -> DiagnosticReport:
    """The study as a FHIR R4 DiagnosticReport, validated by ``fhir.resources`` (a
    ``pydantic.ValidationError`` if anything in it is not FHIR)."""
    # imported here: the app and the OpenAPI description use this module's codes, and
    # should not load FHIR's models until a report is asked for
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    positive = study.label == "PNEUMONIA"
    text = conclusion(study)
    return DiagnosticReport.model_validate({
        "resourceType": "DiagnosticReport",
        "id": study.id,
        "text": {"status": "generated",
                 "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}'
                        "</p></div>"},
        "contained": [_finding(study), _model(study)],
        "identifier": [{"use": "official", "system": STUDY_ID_SYSTEM, "value": study.id}],
        "status": "final",
        "category": [{"coding": [RADIOLOGY]}],
        "code": {"coding": [REPORT_CODE], "text": "Chest X-ray, AI pneumonia screening"},
        "effectiveDateTime": study.created,
        "issued": study.created,
        "result": [{"reference": f"#{FINDING_ID}", "display": "Pneumonia screening finding"}],
        "conclusion": text,
        "conclusionCode": [{"coding": [PNEUMONIA if positive else PNEUMONIA_ABSENT]}],
    })


def report_json(study: Study) -> str:
    """The study's DiagnosticReport as FHIR JSON."""
    return diagnostic_report(study).model_dump_json()
