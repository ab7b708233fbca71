"""``pneumo dicomweb-sync`` against a real archive: Orthanc with its DICOMweb plugin.

Made-up patients' generated films are stored in Orthanc over its REST API; the sync finds
them with QIDO-RS, fetches them with WADO-RS and stores the results with STOW-RS; the
tests read back what Orthanc filed.
"""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pydicom
import pytest
from pydicom import uid

from dicom_factory import CT_STORAGE, PHI, make_dicom
from orthanc import Orthanc, require_orthanc
from pneumo import cli
from pneumo.bench.server import free_port
from pneumo.dicom_results import result_uid
from pneumo.dicomweb_sync import Ledger, SyncError, parse_since, sync
from synthetic import synthetic_xray


def film(pixels: np.ndarray, study: str | None = None, date: str = "20261201",
         **fields) -> bytes:
    return make_dicom(pixels, StudyInstanceUID=study or uid.generate_uid(),
                      SeriesInstanceUID=uid.generate_uid(), StudyDate=date, StudyTime="101500",
                      AccessionNumber="ACC-99", StudyID="S-1", PatientSex="M", **fields)


@pytest.fixture
def pacs(tmp_path):
    require_orthanc()
    server = Orthanc.start(tmp_path / "pacs")
    yield server
    server.stop()


def instances_of(pacs, study_id: str) -> list[pydicom.Dataset]:
    """Every instance Orthanc keeps in a study, parsed."""
    return [pydicom.dcmread(io.BytesIO(pacs.rest("GET", f"/instances/{item['ID']}/file")))
            for item in pacs.rest("GET", f"/studies/{study_id}/instances")]


def test_sync_files_the_results_in_each_study_once(pacs, tiny_predictor, tmp_path, capsys):
    screened = pacs.upload(film(synthetic_xray(1, opacity=True)))
    refused = pacs.upload(film(np.full((256, 256), 128, np.uint8)))
    pacs.upload(film(synthetic_xray(2), modality="CT", sop_class=CT_STORAGE))  # not searched
    ledger = tmp_path / "ledger"

    stats = sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=ledger)
    assert (stats.found, stats.screened, stats.not_assessed, stats.failed) == (2, 1, 1, 0)

    study = instances_of(pacs, screened["ParentStudy"])
    by_class = {ds.SOPClassUID: ds for ds in study}
    source = by_class[uid.DigitalXRayImageStorageForPresentation]
    report = by_class[uid.ComprehensiveSRStorage]
    capture = by_class[uid.SecondaryCaptureImageStorage]
    assert len(study) == 3
    assert report.SOPInstanceUID == result_uid(source.SOPInstanceUID, tiny_predictor.version,
                                               "sr")
    for ds in (report, capture):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID == PHI["PatientID"]
        assert ds.AccessionNumber == "ACC-99"
    assert report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.BurnedInAnnotation == "YES"
    # the refused film: an SR only, saying it was not assessed
    refused_study = instances_of(pacs, refused["ParentStudy"])
    assert sorted(ds.Modality for ds in refused_study) == ["DX", "SR"]
    assert "Not assessed: rejected: almost blank" in next(
        ds for ds in refused_study if ds.Modality == "SR").to_json()

    # one line per instance, without identifiers
    lines = capsys.readouterr().err.splitlines()
    assert len([line for line in lines if line.startswith("instance ")]) == 2
    for value in (PHI["PatientName"], "Doe", PHI["PatientID"], "ACC-99", source.StudyInstanceUID,
                  source.SOPInstanceUID):
        assert value not in "\n".join(lines)

    # a second run: nothing screened or stored again
    before = pacs.rest("GET", "/statistics")["CountInstances"]
    again = sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=ledger)
    assert (again.found, again.already, again.screened, again.not_assessed) == (2, 2, 0, 0)
    assert pacs.rest("GET", "/statistics")["CountInstances"] == before == 6
    # the ledger names nothing
    raw = (ledger / "dicomweb-sync.sqlite3").read_bytes()
    assert source.SOPInstanceUID.encode() not in raw and b"PID-" not in raw


def test_a_new_film_in_a_known_study_is_screened_alone(pacs, tiny_predictor, tmp_path):
    study = uid.generate_uid()
    first = pacs.upload(film(synthetic_xray(1), study=study))
    sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=tmp_path)
    pacs.upload(film(synthetic_xray(3), study=study))
    stats = sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=tmp_path)
    assert (stats.found, stats.already, stats.screened) == (2, 1, 1)
    series = pacs.rest("GET", f"/studies/{first['ParentStudy']}/series")
    # two source series, one SR series and one capture series holding two instances each
    assert sorted(len(s["Instances"]) for s in series) == [1, 1, 2, 2]


@pytest.fixture
def failing_proxy(pacs):
    """A pass-through HTTP proxy in front of Orthanc that answers 500 to the WADO-RS
    retrieve of the instances in ``fail`` (a failure Orthanc cannot be made to show):
    yields (its DICOMweb URL, the set of SOP Instance UIDs to fail)."""
    import http.server
    import threading
    import urllib.error
    import urllib.request

    fail: set[str] = set()

    class Proxy(http.server.BaseHTTPRequestHandler):
        def forward(self):
            if self.command == "GET" and self.path.split("?")[0].rsplit("/", 1)[-1] in fail:
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            request = urllib.request.Request(
                pacs.url + self.path, data=self.rfile.read(length) if length else None,
                method=self.command,
                headers={k: v for k, v in self.headers.items()
                         if k.lower() in ("accept", "content-type")})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    status, headers, body = answer.status, answer.headers, answer.read()
            except urllib.error.HTTPError as error:
                status, headers, body = error.code, error.headers, error.read()
            self.send_response(status)
            self.send_header("Content-Type", headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = forward  # noqa: N815 - http.server's names

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", fail
    server.shutdown()
    server.server_close()


def test_an_instance_that_fails_does_not_stop_the_others_and_is_tried_again(
        pacs, failing_proxy, tiny_bundle, tmp_path, capsys):
    url, fail = failing_proxy
    pacs.upload(film(synthetic_xray(1)))
    lost = pacs.upload(film(synthetic_xray(2)))
    fail.add(pacs.rest("GET", f"/instances/{lost['ID']}/simplified-tags")["SOPInstanceUID"])
    args = ["dicomweb-sync", "--url", url, "--model", str(tiny_bundle), "--data-dir",
            str(tmp_path)]
    assert cli.main(args) == 1
    out = capsys.readouterr()
    assert "1 screened, 0 not assessed, 0 skipped, 1 failed" in out.out
    assert f"failed: the DICOMweb server at {url} answered HTTP 500 to a WADO-RS retrieve\n" \
        in out.err
    assert pacs.rest("GET", f"/studies/{lost['ParentStudy']}/instances")[0]["ID"] == lost["ID"]
    # the next run tries it again, and the server now answers
    fail.clear()
    assert cli.main(args) == 0
    assert "1 done before; 1 screened, 0 not assessed, 0 skipped, 0 failed" \
        in capsys.readouterr().out
    assert len(pacs.rest("GET", f"/studies/{lost['ParentStudy']}/instances")) == 3


def test_search_pages_through_the_archive(pacs, tiny_predictor, tmp_path, monkeypatch):
    from pneumo import dicomweb_sync

    monkeypatch.setattr(dicomweb_sync, "PAGE", 2)
    for seed in range(5):
        pacs.upload(film(synthetic_xray(seed), modality="CR"))
    stats = sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=tmp_path, overlay=False)
    assert (stats.found, stats.screened) == (5, 5)


def test_since_leaves_older_studies_alone(pacs, tiny_predictor, tmp_path):
    pacs.upload(film(synthetic_xray(1), date="20240105"))
    pacs.upload(film(synthetic_xray(2), date="20261201"))
    stats = sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=tmp_path,
                 since=dt.datetime(2026, 11, 30))
    assert (stats.found, stats.screened) == (1, 1)
    # a time on the same day as a study counts too (StudyTime 10:15)
    later = sync(pacs.dicomweb_url, lambda: tiny_predictor, data_dir=tmp_path / "other",
                 since=dt.datetime(2026, 12, 1, 11, 0))
    assert later.found == 0


def test_nothing_to_screen_loads_no_model(pacs, tmp_path):
    def no_model():
        raise AssertionError("the model was loaded with nothing to screen")

    stats = sync(pacs.dicomweb_url, no_model, data_dir=tmp_path)
    assert stats.found == 0


def test_cli_runs_a_sync_and_prints_a_summary(pacs, tiny_bundle, tmp_path, capsys):
    pacs.upload(film(synthetic_xray(1, opacity=True), date=dt.date.today().strftime("%Y%m%d")))
    code = cli.main(["dicomweb-sync", "--url", pacs.dicomweb_url, "--model", str(tiny_bundle),
                     "--data-dir", str(tmp_path), "--no-overlay", "--since", "30d"])
    out = capsys.readouterr()
    assert code == 0
    assert "1 CR/DX instances found" in out.out and "1 screened" in out.out
    assert pacs.rest("GET", "/statistics")["CountInstances"] == 2  # the film and its SR


def test_a_run_with_nothing_new_loads_no_model(pacs, tiny_bundle, tmp_path, capsys,
                                               monkeypatch):
    """From cron every few minutes, most runs find only films done before: the model's
    card names the ledger's entries, and the model itself is not loaded."""
    from pneumo.predictor import Predictor

    pacs.upload(film(synthetic_xray(1), date=dt.date.today().strftime("%Y%m%d")))
    arguments = ["dicomweb-sync", "--url", pacs.dicomweb_url, "--model", str(tiny_bundle),
                 "--data-dir", str(tmp_path), "--no-overlay", "--since", "1d"]
    assert cli.main(arguments) == 0

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded with nothing new to screen")

    monkeypatch.setattr(Predictor, "from_bundle", no_model)
    assert cli.main(arguments) == 0
    assert "1 CR/DX instances found, 1 done before; 0 screened" in capsys.readouterr().out


# -- errors the user can cause -----------------------------------------------------------


def test_unreachable_server_is_one_line_not_a_traceback(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    code = cli.main(["dicomweb-sync", "--url", url, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"pneumo dicomweb-sync: error: cannot reach the DICOMweb server at "
                           f"{url} (connection refused or host unknown)")


def test_a_url_that_is_not_dicomweb_says_so(pacs, tmp_path):
    with pytest.raises(SyncError, match="HTTP 404.*DICOMweb root"):
        sync(pacs.url + "/not-dicom-web", lambda: None, data_dir=tmp_path)


def test_the_archive_root_instead_of_its_dicomweb_root_says_so(pacs, tmp_path):
    """Orthanc's own REST API answers /instances too (400 to QIDO's paging)."""
    pacs.upload(film(synthetic_xray(1)))
    with pytest.raises(SyncError, match=r"HTTP 400 .*is the URL the DICOMweb root"):
        sync(pacs.url, lambda: None, data_dir=tmp_path)


@pytest.fixture
def refusing_server():
    """A real HTTP server that answers 401 to everything, as an archive does to a client
    without its credentials; yields (its DICOMweb URL, the Authorization headers seen)."""
    import http.server
    import threading

    seen = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("env,header", [
    ({"PNEUMO_DICOMWEB_TOKEN": "s3cret"}, "Bearer s3cret"),
    ({"PNEUMO_DICOMWEB_USER": "alice", "PNEUMO_DICOMWEB_PASSWORD": "pw"},
     "Basic YWxpY2U6cHc="),  # base64("alice:pw"), as Orthanc's RegisteredUsers expect
])
def test_a_server_that_wants_credentials_says_so(refusing_server, tmp_path, monkeypatch,
                                                 env, header):
    url, seen = refusing_server
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SyncError, match="HTTP 401.*set PNEUMO_DICOMWEB_TOKEN, or "
                                        "PNEUMO_DICOMWEB_USER and PNEUMO_DICOMWEB_PASSWORD"):
        sync(url, lambda: None, data_dir=tmp_path)
    assert seen and set(seen) == {header}


def test_credentials_in_the_url_are_refused(tmp_path):
    with pytest.raises(SyncError, match="holds credentials") as raised:
        sync("http://alice:pw@pacs:8042/dicom-web", lambda: None, data_dir=tmp_path)
    assert "pw" not in str(raised.value)


@pytest.mark.parametrize("url", ["pacs:8042/dicom-web", "ftp://pacs/dicom-web", ""])
def test_a_malformed_url_is_refused(url, tmp_path):
    with pytest.raises(SyncError, match="not an http"):
        sync(url, lambda: None, data_dir=tmp_path)


def test_one_run_at_a_time(tmp_path):
    ledger = Ledger(tmp_path)
    try:
        with pytest.raises(SyncError, match="another pneumo dicomweb-sync is running"):
            Ledger(tmp_path)
    finally:
        ledger.close()
    Ledger(tmp_path).close()  # free again


def test_a_data_folder_that_cannot_hold_the_ledger_is_one_line(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    code = cli.main(["dicomweb-sync", "--url", "http://127.0.0.1:1/dicom-web", "--data-dir",
                     str(not_a_folder)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"pneumo dicomweb-sync: error: cannot keep the ledger in {not_a_folder}")


def test_since_parses_dates_times_and_spans():
    now = dt.datetime(2026, 12, 2, 12, 0)
    assert parse_since("2026-12-01", now) == dt.datetime(2026, 12, 1)
    assert parse_since("2026-12-01T08:30", now) == dt.datetime(2026, 12, 1, 8, 30)
    assert parse_since("12h", now) == dt.datetime(2026, 12, 2, 0, 0)
    assert parse_since("2d", now) == dt.datetime(2026, 11, 30, 12, 0)
    assert parse_since("30m", now) == dt.datetime(2026, 12, 2, 11, 30)
    # with an offset: the same moment in local time, naive like the study times it meets
    utc = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.timezone.utc)
    assert parse_since("2026-12-01T08:00+00:00", now) == utc.astimezone().replace(tzinfo=None)
    with pytest.raises(ValueError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_help_explains_every_option():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pneumo.cli", "dicomweb-sync", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--url", "--since", "--no-overlay", "--data-dir", "--model",
                   "PNEUMO_DICOMWEB_TOKEN", "PNEUMO_DICOMWEB_USER"):
        assert option in result.stdout
