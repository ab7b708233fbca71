"""A real PACS for tests: Debian's Orthanc, with its DICOMweb plugin, started on free
loopback ports with a generated configuration in a temporary folder, and stopped after.

``Orthanc.start(folder, modalities={...})`` returns a running server; ``rest(...)`` talks
to its REST API. With ``tls=OrthancTLS(...)`` it speaks DICOM over TLS only, both as a
server and to its modalities. Tests that need it skip with a reason where ``Orthanc`` is
not installed (``make pacs`` installs it).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pneumo.bench.server import free_port

BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT = 60  # seconds
AE_TITLE = "ORTHANC"


def require_orthanc() -> None:
    """Skip the calling test where Debian's Orthanc (with DICOMweb) is not installed."""
    if shutil.which(BINARY) is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed "
                    "(make pacs, or apt-get install orthanc orthanc-dicomweb)")


@dataclass(frozen=True)
class OrthancTLS:
    """Orthanc's DICOM TLS: its certificate and key (one pair for its SCP and its SCU, as
    Orthanc has it), the certificates it trusts (its peers', or their CAs), and whether
    it refuses a peer without a certificate."""

    certificate: Path
    private_key: Path
    trusted: Path
    remote_certificate_required: bool = True

    def configuration(self) -> dict:
        return {"DicomTlsEnabled": True,
                "DicomTlsCertificate": str(self.certificate),
                "DicomTlsPrivateKey": str(self.private_key),
                "DicomTlsTrustedCertificates": str(self.trusted),
                "DicomTlsRemoteCertificateRequired": self.remote_certificate_required}


@dataclass
class Orthanc:
    """A running Orthanc: its ports, AE title and log."""

    folder: Path
    http_port: int
    dicom_port: int
    process: subprocess.Popen
    log_path: Path
    ae_title: str = AE_TITLE
    modalities: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def address(self) -> str:
        """As ``--results-to`` takes it: AET@HOST:PORT."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    @classmethod
    def start(cls, folder: Path, modalities: dict[str, tuple[str, int]] | None = None,
              ae_title: str = AE_TITLE, tls: OrthancTLS | None = None) -> Orthanc:
        """Start Orthanc storing under ``folder``. ``modalities``: name -> (AE title,
        port) of DICOM peers on 127.0.0.1 it may send to (C-STORE, C-ECHO), over TLS when
        ``tls`` is given, as its own DICOM port then is."""
        require_orthanc()
        folder.mkdir(parents=True, exist_ok=True)
        http_port, dicom_port = free_port(), free_port()
        config = {
            "Name": "pneumo-tests",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: [aet, "127.0.0.1", port] if tls is None else
                                {"AET": aet, "Host": "127.0.0.1", "Port": port,
                                 "UseDicomTls": True}
                                for name, (aet, port) in (modalities or {}).items()},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "StableAge": 2,
            "SaveJobs": False,
            **(tls.configuration() if tls else {}),
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = folder / "orthanc.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([BINARY, str(config_path)], stdout=log,
                                       stderr=subprocess.STDOUT, cwd=folder)
        server = cls(folder, http_port, dicom_port, process, log_path, ae_title,
                     dict(modalities or {}))
        server._wait_ready()
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.rest("GET", "/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"Orthanc did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def rest(self, method: str, path: str, body: bytes | dict | list | None = None,
             content_type: str = "application/json", timeout: float = 30):
        """Call Orthanc's REST API: parsed JSON when it answers JSON, else bytes."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload) if payload else None
            return payload

    def upload(self, dicom: bytes) -> dict:
        """Store one DICOM file through the REST API; Orthanc's answer (ID, ParentStudy...)."""
        return self.rest("POST", "/instances", dicom, content_type="application/dicom")

    def send(self, modality: str, resource_ids: list[str], timeout: float = 60) -> dict:
        """C-STORE the given Orthanc resources (instances, series or studies) to a peer."""
        return self.rest("POST", f"/modalities/{modality}/store", resource_ids,
                         timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
