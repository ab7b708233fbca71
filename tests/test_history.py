"""Kept studies in SQLite, feedback, the history pages and export-feedback, against a
real database, the real app and the real CLI."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
import time
from contextlib import closing

import numpy as np
import pytest
from PIL import Image

from pneumo import studies
from pneumo.bundle import read_card
from pneumo.cli import main
from pneumo.data import discover
from pneumo.predictor import Prediction
from pneumo.studies import StudyStore, export_feedback
from pneumo.web import create_app
from synthetic import encode, synthetic_xray

UTC = dt.timezone.utc


def add(store, label="PNEUMONIA", probability=0.8, when=None):
    return store.add(Prediction(probability, label, 0.5, 1.0), synthetic_xray(1, (224, 224)),
                     input_status="ok", model_name="m", model_version="1",
                     now=when or dt.datetime.now(UTC))


# -- the store -------------------------------------------------------------------------

def test_a_new_database_gets_the_whole_schema(tmp_path):
    store = StudyStore(tmp_path)
    assert store.schema_version == len(studies.MIGRATIONS)
    assert store.path.parent == tmp_path


def _version_1_database(folder) -> tuple[str, bytes]:
    """A database as pneumo's first schema wrote it (a stored thumbnail beside the
    model input); returns the study's id and its model-input PNG."""
    image_png = studies.input_png(synthetic_xray(1, (224, 224)))
    with closing(sqlite3.connect(folder / studies.DATABASE_FILE)) as db, db:
        db.executescript(studies.MIGRATIONS[0])
        db.execute("INSERT INTO studies VALUES ('abc', '2026-01-02T03:04:05+00:00', "
                   "'PNEUMONIA', 0.8, 0.5, 0, 'ok', 'm', '1', ?, ?)",
                   (b"an old thumbnail", image_png))
        db.execute("PRAGMA user_version = 1")
    return "abc", image_png


def test_an_old_database_is_migrated_keeping_its_studies(tmp_path):
    kept, image_png = _version_1_database(tmp_path)
    store = StudyStore(tmp_path)
    assert store.schema_version == len(studies.MIGRATIONS) == 3
    assert store.get(kept).label == "PNEUMONIA"
    assert store.set_feedback(kept, "NORMAL").verdict == "NORMAL"
    # the stored thumbnail is gone; the image as the model saw it is kept byte for byte
    assert store.image(kept, "model_input") == image_png
    with Image.open(io.BytesIO(store.image(kept))) as thumbnail:
        assert max(thumbnail.size) == studies.THUMBNAIL_SIDE
    with closing(sqlite3.connect(store.path)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(studies)")}
    assert "thumbnail" not in columns and "model_input" in columns
    assert add(store) in {s.id for s in store.search()[0]}


def test_the_kept_image_is_lossless_and_its_thumbnail_is_drawn_from_it(tmp_path):
    store = StudyStore(tmp_path)
    pixels = synthetic_xray(3, (224, 224))
    kept = store.add(Prediction(0.3, "NORMAL", 0.5, -1.0), pixels[:, :, None],
                     input_status="ok", model_name="m", model_version="1")
    with Image.open(io.BytesIO(store.image(kept, "model_input"))) as image:
        assert np.array_equal(np.asarray(image), pixels)
    with Image.open(io.BytesIO(store.image(kept, "thumbnail"))) as thumbnail:
        expected = Image.fromarray(pixels)
        expected.thumbnail((studies.THUMBNAIL_SIDE,) * 2, Image.BILINEAR)
        assert np.array_equal(np.asarray(thumbnail), np.asarray(expected))


def test_a_failed_migration_changes_nothing(tmp_path, monkeypatch):
    StudyStore(tmp_path)
    current = len(studies.MIGRATIONS)
    broken = "CREATE TABLE extra (x INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(studies, "MIGRATIONS", [*studies.MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError):
        StudyStore(tmp_path)
    with closing(sqlite3.connect(tmp_path / studies.DATABASE_FILE)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == current
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "extra" not in tables


def test_a_database_from_a_newer_pneumo_is_refused(tmp_path):
    StudyStore(tmp_path)
    with closing(sqlite3.connect(tmp_path / studies.DATABASE_FILE)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="upgrade pneumo"):
        StudyStore(tmp_path)


def test_a_failed_write_stores_nothing_and_loses_nothing(tmp_path):
    store = StudyStore(tmp_path)
    kept = add(store)
    with pytest.raises(sqlite3.IntegrityError):
        add(store, label="MAYBE")  # refused by the schema, inside its transaction
    assert store.search()[1] == 1 and store.get(kept)
    with pytest.raises(ValueError):
        store.set_feedback(kept, "perhaps")
    with pytest.raises(studies.StudyNotFound):
        store.set_feedback("nope", "agree")
    assert store.get(kept).verdict is None


def test_search_by_date_and_result_newest_first_in_pages(tmp_path):
    store = StudyStore(tmp_path)
    start = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    ids = [add(store, "PNEUMONIA" if i % 3 == 0 else "NORMAL", when=start + dt.timedelta(days=i))
           for i in range(45)]
    page, total = store.search()
    assert total == 45 and len(page) == 20 and page[0].id == ids[-1]
    last, _ = store.search(page=3)
    assert [s.id for s in last] == ids[4::-1]
    found, total = store.search(since=dt.date(2026, 1, 3), until=dt.date(2026, 1, 7),
                                label="PNEUMONIA")
    assert total == 2 and [s.id for s in found] == [ids[6], ids[3]]


# -- the app ---------------------------------------------------------------------------

@pytest.fixture
def app(tiny_predictor, tmp_path):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(tmp_path / "data"), "PNEUMO_LOCAL_USER": True})


def predict(client, name="a.png", query=""):
    png = encode(synthetic_xray(2, (300, 260)))
    response = client.post("/api/v1/predict?heatmap=false" + query,
                           data={"file": (io.BytesIO(png), name)})
    assert response.status_code == 200
    return response.get_json()


def test_predictions_are_kept_and_found_through_the_api(app, tmp_path):
    client = app.test_client()
    body = predict(client, name="Doe^John 1970-01-01.png")
    study = client.get(f"/api/v1/studies/{body['study_id']}").get_json()
    assert study["label"] == body["label"] and study["probability"] == body["probability"]
    assert study["model"]["version"] == "0.0.0+test" and study["feedback"] is None
    listing = client.get("/api/v1/studies?label=" + body["label"]).get_json()
    assert [s["id"] for s in listing["studies"]] == [body["study_id"]]
    today = dt.datetime.now(UTC).date()
    assert client.get(f"/api/v1/studies?until={today - dt.timedelta(days=1)}").get_json()[
        "total"] == 0
    thumbnail = client.get(f"/api/v1/studies/{body['study_id']}/thumbnail.png")
    assert thumbnail.mimetype == "image/png" and thumbnail.data.startswith(b"\x89PNG")
    # the image as the model saw it, kept losslessly (encoded while the network ran)
    kept = StudyStore(tmp_path / "data").image(body["study_id"], "model_input")
    seen = app.extensions["pneumo.predictor"].prepare(encode(synthetic_xray(2, (300, 260))))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(kept))), seen[:, :, 0])
    # the upload's name never reaches the database
    stored = (tmp_path / "data" / studies.DATABASE_FILE).read_bytes()
    assert b"Doe" not in stored and b"1970" not in stored
    assert predict(client, query="&keep=false")["study_id"] is None
    assert client.get("/api/v1/studies").get_json()["total"] == 1


def test_batch_predictions_are_kept_as_studies_too(app, tmp_path):
    client = app.test_client()
    pixels = [synthetic_xray(seed, (300, 260)) for seed in (3, 4)]
    files = [("file", (io.BytesIO(encode(p)), f"{i}.png")) for i, p in enumerate(pixels)]
    files.insert(1, ("file", (io.BytesIO(b"not an image"), "junk.png")))
    body = client.post("/api/v1/predict/batch?heatmap=false", data={"file": [
        f[1] for f in files]}).get_json()
    assert [r["ok"] for r in body["results"]] == [True, False, True]
    kept = [r["study_id"] for r in body["results"] if r["ok"]]
    assert all(kept) and len(set(kept)) == 2 and "study_id" not in body["results"][1]
    store = StudyStore(tmp_path / "data")
    predictor = app.extensions["pneumo.predictor"]
    for study_id, entry, image in zip(kept, (body["results"][0], body["results"][2]), pixels):
        assert store.get(study_id).probability == entry["probability"]
        stored = np.asarray(Image.open(io.BytesIO(store.image(study_id, "model_input"))))
        assert np.array_equal(stored, predictor.prepare(encode(image))[:, :, 0])
    assert client.get("/api/v1/studies").get_json()["total"] == 2
    again = client.post("/api/v1/predict/batch?keep=false", data={"file": [
        (io.BytesIO(encode(pixels[0])), "a.png")]}).get_json()
    assert again["results"][0]["study_id"] is None
    assert client.get("/api/v1/studies").get_json()["total"] == 2


def test_feedback_round_trip_through_the_api(app):
    client = app.test_client()
    study_id = predict(client)["study_id"]
    answer = client.post(f"/api/v1/studies/{study_id}/feedback",
                         json={"verdict": "PNEUMONIA", "comment": "RLL consolidation"})
    assert answer.status_code == 200
    assert answer.get_json()["feedback"]["verdict"] == "PNEUMONIA"
    again = client.get(f"/api/v1/studies/{study_id}").get_json()["feedback"]
    assert again["comment"] == "RLL consolidation"
    assert client.post(f"/api/v1/studies/{study_id}/feedback",
                       json={"verdict": "maybe"}).status_code == 400
    assert client.post("/api/v1/studies/nope/feedback",
                       json={"verdict": "agree"}).status_code == 404
    assert client.get("/api/v1/studies/nope").get_json()["error"]["code"] == "not_found"


def test_history_and_study_pages_with_the_feedback_form(app):
    client = app.test_client()
    study_id = predict(client)["study_id"]
    html = client.get("/history").get_data(as_text=True)
    assert f"/studies/{study_id}" in html and "1 study" in html
    assert client.get("/history?label=&since=&until=").status_code == 200
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert 'name="verdict"' in page
    saved = client.post(f"/studies/{study_id}/feedback",
                        data={"verdict": "NORMAL", "comment": "clear lungs"})
    assert saved.status_code == 303
    page = client.get(saved.headers["Location"]).get_data(as_text=True)
    assert "corrected it to NORMAL" in page and "clear lungs" in page
    assert "corrected to NORMAL" in client.get("/history").get_data(as_text=True)


def test_a_cross_site_form_post_is_refused(app):
    client = app.test_client()
    study_id = predict(client)["study_id"]
    response = client.post(f"/studies/{study_id}/feedback", data={"verdict": "NORMAL"},
                           headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert client.get(f"/api/v1/studies/{study_id}").get_json()["feedback"] is None


def test_an_app_not_started_for_a_local_user_keeps_no_studies_and_refuses_to_be_told_to(
        tiny_predictor, tmp_path):
    config = {"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
              "PNEUMO_DATA_DIR": str(tmp_path)}
    client = create_app(config).test_client()
    assert predict(client)["study_id"] is None
    assert client.get("/api/v1/studies").status_code == 403
    assert client.get("/history").status_code == 403
    assert "History" not in client.get("/").get_data(as_text=True)
    with pytest.raises(RuntimeError, match="PNEUMO_API_TOKEN"):  # see test_auth.py
        create_app({**config, "PNEUMO_KEEP_STUDIES": True})


# -- export-feedback -------------------------------------------------------------------

def test_export_feedback_writes_a_folder_that_training_accepts(tmp_path, capsys):
    store = StudyStore(tmp_path / "data")
    corrected = add(store, "PNEUMONIA", 0.7)
    agreed = add(store, "PNEUMONIA", 0.9)
    unreviewed = add(store, "NORMAL", 0.1)
    more = [add(store, "NORMAL", 0.2) for _ in range(3)]
    store.set_feedback(corrected, "NORMAL", "no consolidation")
    store.set_feedback(agreed, "agree")
    for study in more:
        store.set_feedback(study, "PNEUMONIA")
    out = tmp_path / "export"
    assert main(["export-feedback", str(out), "--data-dir", str(tmp_path / "data")]) == 0
    assert "1 NORMAL and 4 PNEUMONIA" in capsys.readouterr().out
    assert {p.name for p in (out / "NORMAL").iterdir()} == {f"study-{corrected}.png"}
    assert f"study-{agreed}.png" in {p.name for p in (out / "PNEUMONIA").iterdir()}
    assert not list(out.rglob(f"*{unreviewed}*"))
    from PIL import Image

    with Image.open(out / "NORMAL" / f"study-{corrected}.png") as image:
        assert image.mode == "L" and image.size == (224, 224)
    samples, _ = discover(out, for_training=True)
    assert len(samples) == 5 and len({s.group for s in samples}) == 5
    assert export_feedback(store, tmp_path / "only", corrections_only=True) == {
        "NORMAL": 1, "PNEUMONIA": 3}


def test_export_feedback_without_a_database_is_a_one_line_error(tmp_path, capsys):
    assert main(["export-feedback", str(tmp_path / "o"), "--data-dir", str(tmp_path)]) == 2
    assert "no study database" in capsys.readouterr().err


@pytest.mark.slow
def test_pneumo_train_accepts_the_exported_folder(tmp_path):
    store = StudyStore(tmp_path / "data")
    for i in range(16):
        study = store.add(Prediction(0.5, "NORMAL", 0.5, 0.0),
                          synthetic_xray(i, (224, 224), opacity=i % 2 == 1), input_status="ok",
                          model_name="m", model_version="1")
        store.set_feedback(study, "agree" if i % 2 == 0 else "PNEUMONIA")
    out = tmp_path / "export"
    assert main(["export-feedback", str(out), "--data-dir", str(tmp_path / "data")]) == 0
    assert main(["train", str(out), "--out", str(tmp_path / "runs"), "--run-name", "fb",
                 "--backbone-weights", "random", "--image-size", "71", "--head-epochs", "1",
                 "--fine-tune-blocks", "0", "--batch-size", "8", "--val-fraction", "0.3"]) == 0
    assert (tmp_path / "runs" / "fb" / "bundle" / "card.json").is_file()
    # and pneumo calibrate takes the same folder as a site's labelled images
    assert main(["calibrate", str(out), "--model", str(tmp_path / "runs" / "fb" / "bundle"),
                 "--out", str(tmp_path / "site")]) == 0
    assert read_card(tmp_path / "site")["site_calibration"]["n"] == 16


# -- the PDF report --------------------------------------------------------------------

def pdf_text_and_images(data: bytes) -> tuple[str, list]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    page = reader.pages[0]
    return page.extract_text(), list(page.images)


def test_report_pdf_has_the_result_the_statement_and_the_image(app):
    client = app.test_client()
    body = predict(client)
    client.post(f"/api/v1/studies/{body['study_id']}/feedback", json={"verdict": "agree"})
    response = client.post(f"/api/v1/studies/{body['study_id']}/report.pdf",
                           data={"notes": "Seen by Dr Who"})
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert response.data.startswith(b"%PDF")
    text, images = pdf_text_and_images(response.data)
    for expected in (body["label"], f"{body['probability'] * 100:.1f}%",
                     f"{body['threshold'] * 100:.1f}%", "pneumo-xception-tiny-test 0.0.0+test",
                     "second opinion, not a diagnosis", "Reader's notes", "Seen by Dr Who",
                     body["study_id"], "agreed", "image with heatmap"):
        assert expected in text, expected
    assert images and images[0].image.size[0] >= 71
    assert client.get("/api/v1/studies/nope/report.pdf").status_code == 404
    assert client.post(f"/api/v1/studies/{body['study_id']}/report.pdf",
                       data={"notes": "x" * 2001}).status_code == 400


@pytest.mark.reliability(32)
@pytest.mark.parametrize("notes", ["$x^$", "cost $5 and $10", r"\frac{a}{b} $\alpha$ ^_{}"])
def test_report_notes_are_plain_text_never_math(app, notes, caplog):
    client = app.test_client()
    body = predict(client)
    response = client.post(f"/api/v1/studies/{body['study_id']}/report.pdf",
                           data={"notes": notes})
    assert response.status_code == 200, response.get_json()
    text, _ = pdf_text_and_images(response.data)
    assert notes in text
    assert not caplog.records or not any(notes in r.getMessage() for r in caplog.records)


@pytest.mark.reliability(32)
def test_report_notes_never_travel_in_the_url(app):
    client = app.test_client()
    body = predict(client)
    response = client.get(f"/api/v1/studies/{body['study_id']}/report.pdf?notes=secret")
    assert response.status_code == 400 and "POST" in response.get_json()["error"]["message"]
    page = client.get(f"/studies/{body['study_id']}").get_data(as_text=True)
    assert 'method="post" action="/api/v1/studies/' in page


def test_report_of_a_dicom_study_carries_no_identifiers(app):
    from dicom_factory import PHI, make_dicom, radiograph

    client = app.test_client()
    dicom = make_dicom(radiograph(12, (320, 280)), bits_stored=12)
    assert PHI["PatientName"].encode() in dicom
    response = client.post("/api/v1/predict?heatmap=false",
                           data={"file": (io.BytesIO(dicom), "Doe_Jane.dcm")})
    assert response.status_code == 200, response.get_json()
    study_id = response.get_json()["study_id"]
    data = client.get(f"/api/v1/studies/{study_id}/report.pdf").data
    text, _ = pdf_text_and_images(data)
    for secret in [*PHI.values(), "Doe", "Jane", "1970"]:
        assert secret not in text and secret.encode() not in data


@pytest.mark.reliability(31)
def test_a_failing_database_write_still_answers_and_is_logged_once(app, caplog):
    """A full disk, as SQLite reports it (SQLITE_FULL, through max_page_count on this
    thread's own connection): the prediction is answered, says it was not kept, and
    the failure is logged once, however many predictions fail."""
    import logging

    client = app.test_client()
    assert predict(client)["study_id"]  # this thread's connection is open
    store = app.extensions["pneumo.studies"]
    with store._db() as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
    caplog.set_level(logging.INFO, logger="pneumo.web.history")
    for _ in range(3):
        body = predict(client)
        assert body["study_id"] is None and body["label"] in ("NORMAL", "PNEUMONIA")
        assert "not kept" in body["study_error"]
    batch = client.post("/api/v1/predict/batch", data={"file": [
        (io.BytesIO(encode(synthetic_xray(i, (300, 260)))), f"{i}.png") for i in range(2)]})
    assert batch.status_code == 200
    assert all(entry["ok"] and entry["study_error"] for entry in batch.get_json()["results"])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "full" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    with store._db() as db:
        db.execute("PRAGMA max_page_count = 1073741823")
    body = predict(client)
    assert body["study_id"] and "study_error" not in body
    assert any("kept again" in r.getMessage() for r in caplog.records)


def test_simultaneous_first_opens_of_a_new_database_all_succeed(tmp_path):
    """Three processes open (and so create and migrate) one new database at the same
    moment, 15 times over: none fails, and the schema is whole."""
    import subprocess
    import sys

    code = ("import sys, time; from pneumo.studies import StudyStore\n"
            "start = float(sys.argv[2])\n"
            "time.sleep(max(0.0, start - time.time()))\n"
            "StudyStore(sys.argv[1])\n")
    failures = []
    for attempt in range(15):
        folder = tmp_path / str(attempt)
        start = time.time() + 1.0
        children = [subprocess.Popen([sys.executable, "-c", code, str(folder), str(start)],
                                     stderr=subprocess.PIPE) for _ in range(3)]
        for child in children:
            _, err = child.communicate(timeout=60)
            if child.returncode:
                failures.append(err.decode()[-300:])
        assert StudyStore(folder).schema_version == len(studies.MIGRATIONS)
    assert not failures, failures[0]
