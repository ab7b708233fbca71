"""Throwaway certificates for the DICOM TLS tests, made with the ``openssl`` command (no
Python package needed): a CA, and certificates it issues for loopback peers.

Each key is RSA 2048 bits (what every DICOM TLS implementation takes, Orthanc's DCMTK
included), each certificate is valid for two days and names ``localhost`` and
``127.0.0.1``, for both TLS server and TLS client use: a DICOM node is both.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

DAYS = "2"


def require_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (apt-get install openssl)")


def _openssl(*arguments: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *arguments], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(arguments)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA of its own, in ``folder``: ``cert`` is what a peer is told to trust."""

    folder: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, folder: Path, name: str) -> CertificateAuthority:
        require_openssl()
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{name}-ca.pem", folder / f"{name}-ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS,
                 "-subj", f"/CN={name} test CA", "-keyout", str(key), "-out", str(cert),
                 cwd=folder)
        return cls(folder, cert, key)

    def issue(self, name: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Identity:
        """A certificate for ``hosts`` (DNS names and IP addresses), signed by this CA."""
        cert, key, request = (self.folder / f"{name}.pem", self.folder / f"{name}.key",
                              self.folder / f"{name}.csr")
        names = ",".join(f"IP:{host}" if host[0].isdigit() else f"DNS:{host}"
                         for host in hosts)
        extensions = self.folder / f"{name}.ext"
        extensions.write_text(f"subjectAltName={names}\n"
                              "basicConstraints=critical,CA:FALSE\n"
                              "keyUsage=critical,digitalSignature,keyEncipherment\n"
                              "extendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
                 "-keyout", str(key), "-out", str(request), cwd=self.folder)
        serial = str(len(list(self.folder.glob("*.csr"))) + 1)
        _openssl("x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey",
                 str(self.key), "-set_serial", serial, "-days", DAYS, "-extfile",
                 str(extensions), "-out", str(cert), cwd=self.folder)
        return Identity(cert, key)
