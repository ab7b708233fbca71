"""What the browser tests share: where Debian's chromium is, how it is started, the
marks that skip them with a reason where it or Playwright is absent, and the real
app served by waitress on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from pneumo.web.server import Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@contextlib.contextmanager
def served(app):
    """``app`` behind the real waitress server on a free loopback port; yields its URL and
    checks that it stops cleanly."""
    server = Server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="test-waitress", daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.stop()
        assert server.wait_stopped(30)
        thread.join(10)
