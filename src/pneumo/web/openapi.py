"""The OpenAPI 3.1 description served at ``/api/v1/openapi.json``.

OpenAPI 3.1 schemas are JSON Schema 2020-12, so the tests validate real
responses against this document with ``jsonschema`` and keep it true.
Objects are closed (``additionalProperties: false``) wherever the API promises
a shape, so a new field must be documented here before a test passes.
"""

from __future__ import annotations

from .. import __version__
from .. import fhir
from ..config import CLASS_NAMES
from ..studies import PAGE_SIZE, VERDICTS
from .errors import ERRORS, HTTP_ERROR
from .history import MAX_PAGE
from .uploads import ALLOWED_EXTENSIONS

#: The closed list of error codes: the registry's, so the two cannot drift apart.
_ERROR_CODES = list(ERRORS)

#: Media types a client may give the ``file`` part; the server decides by content.
_FILE_MEDIA_TYPES = "image/png, image/jpeg, application/dicom, application/octet-stream"

_MODEL = {
    "type": "object",
    "required": ["name", "version"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
}

_ERROR_OBJECT = {
    "type": "object",
    "required": ["code", "message"],
    "additionalProperties": False,
    "properties": {
        "code": {"type": "string", "enum": _ERROR_CODES,
                 "description": "Stable, machine-readable reason."},
        "message": {"type": "string", "description": "Plain-words explanation for a person."},
    },
}

def _input_check(statuses: list[str], description: str) -> dict:
    return {
        "type": "object",
        "required": ["status", "reasons", "feature_score"],
        "additionalProperties": False,
        "description": description,
        "properties": {
            "status": {"type": "string", "enum": statuses},
            "reasons": {"type": "array", "items": {"type": "string"},
                        "description": "Why the input is doubtful or refused, in plain words "
                                       "(empty when status is ok)."},
            "feature_score": {
                "type": ["number", "null"],
                "description": "Distance of the image's backbone features from the training "
                               "X-rays, in standard deviations of the training scores; the "
                               "cut-offs are the model card's `input_gate.warn_above` and "
                               "`input_gate.reject_above` (percentiles of the same score "
                               "on validation X-rays, given beside them). Null when the "
                               "image was refused before the network ran, or the model has "
                               "no feature gate."},
        },
    }

_INPUT_CHECK_PASSED = _input_check(
    ["ok", "warning"],
    "The input gate: does this look like a frontal chest X-ray the model can read? "
    "`warning`: the prediction is given, but read it with care for the reasons listed.")
_INPUT_CHECK_REJECTED = _input_check(
    ["rejected"], "Why the input was refused (with error code `not_a_chest_xray`).")

_PNG_DATA_URL = {"type": "string", "pattern": "^data:image/png;base64,[A-Za-z0-9+/]+=*$"}

_PREDICTION_FIELDS = {
    "label": {"type": "string", "enum": list(CLASS_NAMES),
              "description": "PNEUMONIA when probability >= threshold."},
    "probability": {"type": "number", "minimum": 0, "maximum": 1,
                    "description": "Calibrated probability of pneumonia (temperature scaling "
                                   "fitted on validation)."},
    "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                  "description": "The operating threshold from the model card, chosen on "
                                 "validation."},
    "inconclusive": {"type": "boolean",
                     "description": "True when the probability lies in the model card's "
                                    "inconclusive band: on validation, cases there were "
                                    "clearly less often right than the rest, so read the "
                                    "label as 'not sure'. `label` is still given (NORMAL or "
                                    "PNEUMONIA by the threshold), so clients that ignore "
                                    "this field keep working. Always false for a model "
                                    "whose card has no band."},
    "input_check": {"$ref": "#/components/schemas/InputCheck"},
    "input": {
        "type": "object",
        "required": ["format", "width", "height", "metadata"],
        "additionalProperties": False,
        "properties": {
            "format": {"type": "string", "enum": ["PNG", "JPEG", "DICOM"],
                       "description": "Format found from the file's content."},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
            "metadata": {"type": "object", "description": "Non-identifying DICOM fields "
                                                          "(empty for PNG and JPEG)."},
        },
    },
    "heatmap": {
        "oneOf": [_PNG_DATA_URL, {"type": "null"}],
        "description": "PNG with transparency (a 256-colour palette with alpha) as a data "
                       "URL, the image's aspect ratio, to be stretched "
                       "over the whole X-ray; alpha follows the evidence for `label`. Null "
                       "with ?heatmap=false.",
    },
    "heatmap_shows": {"type": ["string", "null"],
                      "description": "What the heatmap highlights, e.g. 'evidence for "
                                     "PNEUMONIA'."},
    "disclaimer": {"type": "string"},
}

_STUDY_ERROR = {"type": "string",
                "description": "Present only when this prediction was to be kept but writing "
                               "it to the history failed (e.g. a full disk): the result is "
                               "still given, and `study_id` is null."}

_PREDICTION = {
    "type": "object",
    "required": ["filename", "label", "probability", "threshold", "inconclusive", "input_check",
                 "input",
                 "heatmap", "heatmap_shows", "disclaimer", "model"],
    "additionalProperties": False,
    "properties": {
        "filename": {"type": "string", "description": "The uploaded file's name, without "
                                                      "folders or control characters."},
        **_PREDICTION_FIELDS,
        "image": {**_PNG_DATA_URL, "description": "With ?image=true: the decoded grayscale "
                                                  "image as the model saw it (before "
                                                  "resizing), orientation applied."},
        "model": {"$ref": "#/components/schemas/Model"},
        "study_id": {"type": ["string", "null"],
                     "description": "The id of the study this prediction was kept as "
                                    "(GET /api/v1/studies/{id}); null when the server keeps "
                                    "no studies or ?keep=false was given."},
        "study_error": _STUDY_ERROR,
    },
}

_STUDY = {
    "type": "object",
    "required": ["id", "created", "label", "probability", "threshold", "inconclusive",
                 "input_status", "model", "feedback"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "description": "Made by the server; no patient data."},
        "created": {"type": "string", "format": "date-time", "description": "UTC."},
        "label": {"type": "string", "enum": list(CLASS_NAMES)},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "inconclusive": {"type": "boolean"},
        "input_status": {"type": "string", "enum": ["ok", "warning"]},
        "model": {"$ref": "#/components/schemas/Model"},
        "feedback": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["verdict", "comment", "updated"],
            "additionalProperties": False,
            "properties": {"verdict": {"type": "string",
                                       "enum": list(VERDICTS)},
                           "comment": {"type": "string"},
                           "updated": {"type": "string", "format": "date-time"}}}]},
    },
}

#: The study as FHIR: the parts pneumo promises. The resource as a whole is FHIR R4's
#: DiagnosticReport (validated by fhir.resources before it is sent), so it stays open here.
_FHIR_REPORT = {
    "type": "object",
    "required": ["resourceType", "id", "contained", "identifier", "status", "category", "code",
                 "effectiveDateTime", "issued", "result", "conclusion", "conclusionCode"],
    "description": "A FHIR R4 DiagnosticReport (https://hl7.org/fhir/R4/diagnosticreport.html) "
                   "with its Observation and the model's Device contained in it (`#finding`, "
                   "`#model`). No `subject`: studies keep no patient identifier, so the "
                   "receiving system links the report to its patient. Codes: "
                   "docs/integration.md, FHIR.",
    "properties": {
        "resourceType": {"const": "DiagnosticReport"},
        "id": {"type": "string", "description": "The study id."},
        "contained": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "object", "required": ["resourceType", "id"],
            "properties": {"resourceType": {"enum": ["Observation", "Device"]},
                           "id": {"enum": [fhir.FINDING_ID, fhir.MODEL_ID]}}}},
        "identifier": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["system", "value"],
            "properties": {"system": {"const": fhir.STUDY_ID_SYSTEM},
                           "value": {"type": "string"}}}},
        "status": {"const": "final"},
        "effectiveDateTime": {"type": "string", "format": "date-time"},
        "issued": {"type": "string", "format": "date-time"},
        "conclusion": {"type": "string"},
    },
}

#: The studies need the token, or nothing for the local user of a server started for one.
_TOKEN = [{"token": []}, {}]

_DATE = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}

_STUDY_ID = {"name": "study_id", "in": "path", "required": True, "schema": {"type": "string"}}

_BATCH_OK = {
    "type": "object",
    "required": ["index", "filename", "ok", "status", "label", "probability", "threshold",
                 "inconclusive", "input_check", "input", "heatmap", "heatmap_shows", "disclaimer",
                 "study_id"],
    "additionalProperties": False,
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "filename": {"type": "string"},
        "ok": {"const": True},
        "status": {"const": 200},
        **_PREDICTION_FIELDS,
        "study_id": {"type": ["string", "null"],
                     "description": "The study this prediction was kept as, as for one "
                                    "file; null when no studies are kept."},
        "study_error": _STUDY_ERROR,
    },
}

_BATCH_ERROR = {
    "type": "object",
    "required": ["index", "filename", "ok", "status", "error"],
    "additionalProperties": False,
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "filename": {"type": ["string", "null"]},
        "ok": {"const": False},
        "status": {"type": "integer", "enum": [400, 413, 415, 422, 503],
                   "description": "The status this file alone would have been given; 503 "
                                  "`time_budget`: not decoded, the batch's decoding time "
                                  "was used up first (send the file again)."},
        "error": {"$ref": "#/components/schemas/ErrorObject"},
        "input_check": {"$ref": "#/components/schemas/InputCheckRejected"},
    },
}

def _json(schema_name: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}

def _file(media_type: str, description: str) -> dict:
    """A response whose body is a file (an image, a PDF)."""
    return {"description": description, "content": {media_type: {"schema": {
        "type": "string", "format": "binary"}}}}

def _errors(*statuses: int) -> dict:
    descriptions = {
        400: "Bad request: no file part, no file name, or a bad query parameter.",
        403: "A browser post from another site (`cross_origin`); for the studies, also a "
             "server with no API token that was not started for one local user, or a "
             "request that is not that user's (`forbidden`).",
        401: "This server has an API token and the request did not carry it "
             "(`Authorization: Bearer <token>`).",
        404: "No such study, or this server keeps no studies (`history_off`).",
        429: "Too many wrong tokens from this client address (`too_many_attempts`): "
             "tokens from it are not compared until `Retry-After` seconds have passed.",
        405: "Method not allowed.",
        413: "Body larger than the upload limit, too many parts or files.",
        415: "Not a PNG, JPEG or DICOM radiograph (by content), or a refused extension.",
        422: "A supported format that cannot be decoded (truncated, corrupt, empty: "
             "`unreadable_image`), or an image that does not look like a chest X-ray the "
             "model can read (`not_a_chest_xray`: a photograph, a blank, noise, very low "
             "resolution, or features unlike the training X-rays); the latter carries "
             "`input_check` with the reasons, and no label is given.",
        500: "Internal error; no details are disclosed.",
        503: "The model is loading or failed to load.",
        504: "The model did not answer in time; try again.",
    }
    return {str(s): _json("Error", descriptions[s] + " Codes: " + ", ".join(
        f"`{e.code}`" for e in ERRORS.values() if e.status == s and e is not HTTP_ERROR) + ".")
        for s in statuses}

_FILE = {"type": "string", "format": "binary",
         "description": "A frontal chest X-ray: PNG, JPEG or DICOM, decided by content. Bytes "
                        "that are no such image are answered 415 (`unsupported_type`) or "
                        "422 (`unreadable_image`); an image the input gate refuses (a 1x1 "
                        "PNG, a photograph, a blank) 422 (`not_a_chest_xray`)."}

_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {"file": _FILE}},
        "encoding": {"file": {"contentType": _FILE_MEDIA_TYPES}},
    }},
}

def spec(server_url: str = "", max_batch_files: int = 16) -> dict:
    """The OpenAPI document; ``server_url`` is this server's root URL, ``max_batch_files``
    the most files it takes in one batch (``PNEUMO_MAX_BATCH_FILES``)."""
    flag = {"type": "boolean"}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "pneumo API",
            "version": __version__,
            "summary": "Second-opinion pneumonia screening on chest X-rays (not a diagnosis).",
            "description": (
                "Upload a frontal chest X-ray (PNG, JPEG or DICOM; the format is decided "
                "by content; file names may end in "
                + ", ".join("." + e for e in ALLOWED_EXTENSIONS)
                + " or have no extension) and get the calibrated probability of pneumonia, "
                "the label at the model card's operating threshold and a heatmap.\n\n"
                "Every input passes an input gate first. Image checks (colour photograph, "
                "almost blank, random noise, resolution, shape) run before the network; "
                "the distance of the image's backbone features from the training X-rays "
                "comes with the prediction. A rejected input gets status 422 with error "
                "code `not_a_chest_xray`, the reasons in `input_check`, and no label or "
                "probability. A doubtful input gets its prediction with "
                "`input_check.status` = `warning` and the reasons: show them next to the "
                "result. Errors are always `{\"error\": {\"code\", \"message\"}}`, "
                "plus `input_check` for `not_a_chest_xray`."),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": server_url or "/"}],
        "paths": {
            "/api/v1/predict": {"post": {
                "operationId": "predict",
                "summary": "Predict one X-ray",
                "parameters": [
                    {"name": "heatmap", "in": "query", "schema": {**flag, "default": True},
                     "description": "Include the heatmap (false is faster)."},
                    {"name": "image", "in": "query", "schema": {**flag, "default": False},
                     "description": "Include the decoded image the model saw."},
                    {"name": "keep", "in": "query", "schema": {**flag, "default": True},
                     "description": "Keep the result as a study when the server keeps "
                                    "studies (false: do not)."},
                ],
                "requestBody": _UPLOAD_BODY,
                "responses": {"200": _json("Prediction", "The prediction."),
                              **_errors(400, 403, 405, 413, 415, 422, 500, 503, 504)},
            }},
            "/api/v1/predict/batch": {"post": {
                "operationId": "predictBatch",
                "summary": "Predict several X-rays in one request",
                "description": "Repeat the `file` field. Each file gets an entry, in order; "
                               "a file that cannot be used, or that the input gate refuses "
                               "(`not_a_chest_xray`, with `input_check`), gets an error "
                               "entry and the others are still predicted.",
                "parameters": [{"name": "heatmap", "in": "query",
                                "schema": {**flag, "default": True}},
                               {"name": "keep", "in": "query",
                                "schema": {**flag, "default": True},
                                "description": "Keep each prediction as a study when the "
                                               "server keeps studies (false: do not)."}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {
                        "file": {"type": "array", "items": _FILE, "minItems": 1,
                                 "maxItems": max_batch_files,
                                 "description": f"1 to {max_batch_files} files; more are "
                                                "refused whole (413 `too_many_files`)."}}},
                    "encoding": {"file": {"contentType": _FILE_MEDIA_TYPES}}}}},
                "responses": {"200": _json("BatchResult", "One entry per file."),
                              **_errors(400, 403, 405, 413, 500, 503, 504)},
            }},
            "/api/v1/health": {"get": {
                "operationId": "health",
                "summary": "Readiness: 200 once the model is loaded",
                "responses": {"200": _json("Health", "Ready."),
                              "503": _json("HealthUnavailable", "Loading, or failed."),
                              **_errors(405)},
            }},
            "/api/v1/model": {"get": {
                "operationId": "model",
                "summary": "The model card (validation metrics, threshold, intended use)",
                "description": "Without the token (or the local user), only its public part: "
                               "no training folders or commands, library versions or files.",
                "responses": {"200": _json("ModelCard", "The card of the loaded bundle."),
                              **_errors(405, 503)},
            }},
            "/api/v1/studies": {"get": {
                "operationId": "studies",
                "summary": f"Kept studies, newest first, {PAGE_SIZE} a page",
                "description": "Only when the server keeps studies (by default, with a token, "
                               "or for the one local user of `pneumo serve` on loopback); "
                               "otherwise 404 `history_off`.",
                "parameters": [
                    {"name": "since", "in": "query", "schema": _DATE,
                     "description": "First UTC day, YYYY-MM-DD."},
                    {"name": "until", "in": "query", "schema": _DATE,
                     "description": "Last UTC day, YYYY-MM-DD (inclusive)."},
                    {"name": "label", "in": "query",
                     "schema": {"type": "string", "enum": list(CLASS_NAMES)}},
                    {"name": "page", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                "default": 1},
                     "description": f"1 to {MAX_PAGE}; a page past the last is empty."},
                ],
                "responses": {"200": _json("StudyList", "A page of studies."),
                              **_errors(400, 401, 403, 404, 405, 429)},
                "security": _TOKEN,
            }},
            "/api/v1/studies/{study_id}": {"get": {
                "operationId": "study",
                "summary": "One study and its feedback",
                "parameters": [_STUDY_ID],
                "responses": {"200": _json("Study", "The study."),
                              **_errors(401, 403, 404, 405, 429)},
                "security": _TOKEN,
            }},
            "/api/v1/studies/{study_id}/fhir": {"get": {
                "operationId": "studyFhir",
                "summary": "The study as a FHIR R4 DiagnosticReport with its Observation",
                "description": "Media type `" + fhir.MEDIA_TYPE + "`. The finding (SNOMED CT "
                               "pneumonia, present or absent), the calibrated probability, "
                               "the operating threshold, the inconclusive flag, the input "
                               "gate's status, the reader's feedback and the model, with the "
                               "'second opinion, not a diagnosis' statement in the "
                               "conclusion. Errors are the API's JSON errors.",
                "parameters": [_STUDY_ID],
                "responses": {"200": {"description": "The DiagnosticReport.",
                                      "content": {"application/fhir+json": {"schema": {
                                          "$ref": "#/components/schemas/FhirDiagnosticReport"}}}},
                              **_errors(401, 403, 404, 405, 429)},
                "security": _TOKEN,
            }},
            "/api/v1/studies/{study_id}/thumbnail.png": {"get": {
                "operationId": "studyThumbnail",
                "summary": "The study's thumbnail (the image as the model saw it, "
                           "at most 160 pixels a side)",
                "parameters": [_STUDY_ID],
                "responses": {"200": _file("image/png", "PNG."),
                              **_errors(401, 403, 404, 405, 429)},
                "security": _TOKEN,
            }},
            "/api/v1/studies/{study_id}/report.pdf": {"get": {
                "operationId": "studyReport",
                "summary": "The study's one-page PDF report",
                "description": "The image with the heatmap, the result, probability and "
                               "operating point, the model, the dates, the 'second opinion, "
                               "not a diagnosis' statement and the reader's notes. No file "
                               "name and no DICOM field is ever stored, so none can appear.",
                "parameters": [_STUDY_ID],
                "responses": {"200": _file("application/pdf", "PDF."),
                              **_errors(400, 401, 403, 404, 405, 429, 503, 504)},
                "security": _TOKEN,
            }, "post": {
                "operationId": "studyReportWithNotes",
                "summary": "The study's one-page PDF report, with the reader's notes",
                "description": "As GET, with the notes printed as plain text. They travel in "
                               "the body, never in the URL (proxy and server logs).",
                "parameters": [_STUDY_ID],
                "requestBody": {"required": False, "content": {
                    "application/x-www-form-urlencoded": {"schema": {
                        "type": "object", "properties": {
                            "notes": {"type": "string", "maxLength": 2000,
                                      "description": "The reader's notes."}}}}}},
                "responses": {"200": _file("application/pdf", "PDF."),
                              **_errors(400, 401, 403, 404, 405, 429, 503, 504)},
                "security": _TOKEN,
            }},
            "/api/v1/studies/{study_id}/feedback": {"post": {
                "operationId": "studyFeedback",
                "summary": "The reader's verdict on a study (replaces an earlier one)",
                "parameters": [_STUDY_ID],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["verdict"],
                    "properties": {
                        "verdict": {"type": "string", "enum": list(VERDICTS),
                                    "description": "agree with the label, or correct it"},
                        "comment": {"type": "string", "maxLength": 2000}}}}}},
                "responses": {"200": _json("Study", "The study with its feedback."),
                              **_errors(400, 401, 403, 404, 405, 429)},
                "security": _TOKEN,
            }},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                      "content": {"application/json": {
                                          "schema": {"type": "object",
                                                     "required": ["openapi", "paths"]}}}},
                              **_errors(405)},
            }},
        },
        "components": {
            "securitySchemes": {"token": {
                "type": "http", "scheme": "bearer",
                "description": "The server's PNEUMO_API_TOKEN, when it has one."}},
            "schemas": {
            "Model": _MODEL,
            "ErrorObject": _ERROR_OBJECT,
            "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                      "properties": {
                          "error": {"$ref": "#/components/schemas/ErrorObject"},
                          "input_check": {"$ref": "#/components/schemas/InputCheckRejected"}}},
            "InputCheck": _INPUT_CHECK_PASSED,
            "InputCheckRejected": _INPUT_CHECK_REJECTED,
            "Prediction": _PREDICTION,
            "Study": _STUDY,
            "FhirDiagnosticReport": _FHIR_REPORT,
            "StudyList": {
                "type": "object", "required": ["studies", "total", "page", "pages", "query"],
                "additionalProperties": False,
                "properties": {
                    "studies": {"type": "array", "items": {"$ref": "#/components/schemas/Study"}},
                    "total": {"type": "integer", "minimum": 0},
                    "page": {"type": "integer", "minimum": 1},
                    "pages": {"type": "integer", "minimum": 1},
                    "query": {"type": "object"},
                },
            },
            "BatchResult": {
                "type": "object",
                "required": ["model", "count", "succeeded", "results"],
                "additionalProperties": False,
                "properties": {
                    "model": {"$ref": "#/components/schemas/Model"},
                    "count": {"type": "integer", "minimum": 1},
                    "succeeded": {"type": "integer", "minimum": 0},
                    "results": {"type": "array", "minItems": 1,
                                "items": {"oneOf": [_BATCH_OK, _BATCH_ERROR]}},
                },
            },
            "Health": {"type": "object", "required": ["status", "model"],
                       "additionalProperties": False,
                       "properties": {"status": {"const": "ready"},
                                      "model": {"$ref": "#/components/schemas/Model"}}},
            "HealthUnavailable": {
                "type": "object", "required": ["status", "error"], "additionalProperties": False,
                "properties": {"status": {"enum": ["loading", "failed"]},
                               "error": {"$ref": "#/components/schemas/ErrorObject"}}},
            "ModelCard": {
                "type": "object",
                "required": ["class_names", "input", "threshold", "calibration"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "class_names": {"type": "array", "items": {"type": "string"}},
                    "input": {"type": "object", "required": ["size"]},
                    "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                    "calibration": {"type": "object", "required": ["temperature"]},
                    "validation": {"type": "object"},
                    "intended_use": {"type": "string"},
                    "limitations": {"type": "array", "items": {"type": "string"}},
                },
            },
        }},
    }
