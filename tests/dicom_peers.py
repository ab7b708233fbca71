"""DICOM peers for the node's tests: the real ``pneumo dicom-listen`` as a subprocess,
a test SCU, and a recording Storage SCP.

The recorder stands where the PACS's storage would, for the one check Orthanc cannot
make: how many times each result arrived (Orthanc files a second copy of an instance
under the same UID and says nothing). It can also refuse for a while, as a PACS that is
full or restarting does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from pneumo.bench import server as harness
from pneumo.bench.server import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180  # seconds: importing the model on a busy 2-core machine is slow
TEST_SCU = "TESTSCU"


def wait_for(condition, timeout: float, what: str, interval: float = 0.25, on_fail=None):
    """The first true value of ``condition()`` within ``timeout`` seconds (a deadline, not
    a measurement); fails the test saying ``what`` was awaited, with ``on_fail()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{on_fail()}" if on_fail else ""
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def associate(port: int, ae_title: str = TEST_SCU, called: str = "PNEUMO",
              contexts: list | None = None, tls_args: tuple | None = None):
    """An association from a test SCU to 127.0.0.1:``port`` (over TLS with ``tls_args``,
    pynetdicom's ``(ssl_context, server_hostname)``)."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in contexts or [Verification]:
        # a SOP class, or (SOP class, [transfer syntaxes])
        ae.add_requested_context(*((context,) if isinstance(context, str) else context))
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)


def store_file_as_is(port: int, path: Path, context: tuple[str, list[str]]) -> int:
    """C-STORE the file at ``path`` to the node with its bytes sent as they are (pynetdicom
    neither parses nor re-encodes it: what a broken or hostile sender puts on the wire);
    returns the status."""
    from pynetdicom import _config

    assoc = associate(port, contexts=[context])
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(path).Status
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def echo(port: int, ae_title: str = TEST_SCU, tls_args: tuple | None = None) -> int | None:
    """The C-ECHO status from the node on ``port`` (None: no association)."""
    assoc = associate(port, ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return status.get("Status") if status else None
    finally:
        assoc.release()


@dataclass
class Node:
    """``pneumo dicom-listen`` running as a subprocess."""

    process: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    command: list[str]
    tls_args: tuple | None = None  # how the test SCU reaches a node that listens over TLS

    @classmethod
    def start(cls, folder: Path, results_to: str, *, port: int | None = None,
              calling_aets: tuple[str, ...] = ("ORTHANC", TEST_SCU),
              extra: tuple[str, ...] = (), log_name: str = "node.log",
              tls_args: tuple | None = None) -> Node:
        folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        command = [sys.executable, "-m", "pneumo.cli", "dicom-listen", "--port", str(port),
                   "--results-to", results_to, "--calling-aets", *calling_aets, *extra]
        data_dir = folder / "data"
        log_path = folder / log_name
        process = harness.launch(command, log_path, env={"PNEUMO_DATA_DIR": str(data_dir)},
                                 cwd=ROOT)
        node = cls(process, port, data_dir, log_path, command, tls_args)
        node.wait_ready()
        return node

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    _log_start: int = 0  # where the current run's lines begin in the log

    def wait_ready(self) -> None:
        def ready():
            if self.process.poll() is not None:
                pytest.fail(f"the node exited with {self.process.returncode}:\n{self.log()}")
            # pynetdicom leaks its socket when a connection is refused: ask only once the
            # node says it listens
            if "listening as" not in self.log()[self._log_start:]:
                return False
            return echo(self.port, tls_args=self.tls_args) == 0x0000

        wait_for(ready, START_TIMEOUT, "the node to answer C-ECHO", interval=0.5,
                 on_fail=self.log)

    def restart(self) -> Node:
        """The same node (port, data folder) started again; its log is appended to."""
        self._log_start = len(self.log())
        with open(self.log_path, "ab") as handle:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
                     "PNEUMO_DATA_DIR": str(self.data_dir)})
        self.wait_ready()
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                return self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"the node ignored {signal.Signals(signum).name} for 120 s")
        return self.process.returncode


@dataclass
class Recorder:
    """A Storage SCP that keeps every instance it confirms, in order, and refuses with
    0xA700 (out of resources) while ``refusing`` is set, counting those attempts."""

    ae_title: str = "RECORDER"
    port: int = field(default_factory=free_port)
    received: list[Dataset] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    refusing: bool = False

    def __post_init__(self):
        self._lock = threading.Lock()
        self.ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax)
        self.ae.start_server(("127.0.0.1", self.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, self._store)])

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def _store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            if self.refusing:
                self.refused.append(str(dataset.SOPInstanceUID))
                return 0xA700
            self.received.append(dataset)
        return 0x0000

    def uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]

    def stop(self) -> None:
        self.ae.shutdown()
