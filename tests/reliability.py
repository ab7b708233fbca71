"""The reliability report: which test covers which row of RELIABILITY.md (and of the
hardening issue, rows 26-34), and the
figures the tests measured, written as ``docs/reliability.md`` by the suite itself.

Tests name their rows with ``@pytest.mark.reliability(N, ...)`` (tests against
the real app or the real server) and record figures through the session
fixture ``reliability_figures``. Loader-level tests named ``test_rowNN_*`` are
counted too, separately. ``conftest.py`` collects the outcomes; at the end of
the session the report goes to ``test-artifacts/reliability.md`` (ignored by
git), so running the tests never changes a tracked file. ``make
reliability-report`` (``PNEUMO_REFRESH_REPORT=1``) also refreshes
``docs/reliability.md``, and only when every row had at least one passing
app-level test and none failed, so a partial run never overwrites the full report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import re
from pathlib import Path

#: The rows of ../shared/docs/RELIABILITY.md, shortened.
ROWS = {
    1: "Body over the limit, endless chunked body, thousands of parts -> 413, server carries on",
    2: "No file part or an empty file name -> 400 with a message",
    3: "Names like x.jpg.php, x.php%00.jpg, X.PNG, .svg, .html -> only allowed types pass",
    4: "HTML sent as scan.png with Content-Type image/png -> rejected by content",
    5: "../../etc/passwd, 300-character and Unicode names -> nothing written anywhere",
    6: "nosniff, Content-Security-Policy, frame protection; images with an image type",
    7: "`\"><script>` in a name is shown escaped; cross-site posts are refused",
    8: "An internal error -> generic 500, no traceback, debug off",
    9: "PNG/JPEG header claiming too many pixels (1x-2x and >2x the limit) -> 4xx",
    10: "PNG text chunk inflating past 1 MB -> 4xx",
    11: "JPEG or PNG cut short -> 4xx 'truncated'",
    12: "TIFF, PSD, FITS, EPS, PDF, JPEG 2000 renamed .png -> refused before decoding",
    13: "Odd but valid images and mutated files -> only 2xx or 4xx",
    14: "A .dcm without the DICM marker -> 4xx",
    15: "Rows x Columns not matching PixelData, odd-length PixelData -> 4xx",
    16: "JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE DICOM -> decoded or a clear 4xx",
    17: "MONOCHROME1 vs MONOCHROME2, with and without VOI LUT/window -> predictions agree",
    18: "CT, MR, multi-frame or colour DICOM -> refused with the reason",
    19: "Patient name, id, birth date, private tags -> in no response, log line or file",
    20: "DICOM preamble holding an executable header -> never stored raw",
    21: "20 parallel uploads to the real server -> all succeed, agree with one thread",
    22: "1,000 sequential predictions -> resident memory flat",
    23: "Inference slower than the timeout -> client gets an error, next request succeeds",
    24: "Photo, knee-like image, blank, noise -> never a confident pneumonia without a warning",
    25: "Schemathesis over the OpenAPI description -> no 5xx",
    # Issue 12 (hardening): what a hostile network and real hospital files do.
    26: "Small uploads declaring huge images (codestream, 16-bit, 1-bit, colour, batch) -> "
        "refused from headers or decoded with < 300 MB more peak memory, real server",
    27: "History, reports, feedback closed without the token unless started for one local "
        "user; a proxied or remote request is not that user's",
    28: "A Host header naming another site (DNS rebinding) -> 400",
    29: "A DICOM decode in one thread never holds up another upload",
    30: "110 slow clients on the real server -> health still answers within 1 s",
    31: "A database write failure -> the prediction is answered, says not kept, logged once",
    32: "Report notes are plain text (never math text) and never travel in the URL",
    33: "Real vendor DICOM (legacy ACR-NEMA, 8-bit data without its pad byte) -> read",
    34: "kill -9 during a burst of kept predictions -> integrity ok, every answered study kept",
}

LOADER_TEST = re.compile(r"test_row(\d\d)_")


@dataclasses.dataclass
class Figures:
    """Figures recorded by tests, by section, in the order they were recorded."""

    sections: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, section: str, label: str, value) -> None:
        self.sections.setdefault(section, []).append((label, _show(value)))

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclasses.dataclass
class Outcomes:
    """Per test: its rows and its result ("passed", "failed" or "skipped: reason")."""

    rows: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    results: dict[str, str] = dataclasses.field(default_factory=dict)

    def record(self, nodeid: str, when: str, outcome: str, reason: str = "") -> None:
        if outcome == "failed":
            self.results[nodeid] = "failed"
        elif outcome == "skipped":
            self.results.setdefault(nodeid, f"skipped: {reason}".strip())
        elif when == "call":
            self.results.setdefault(nodeid, "passed")

    def by_row(self) -> dict[int, list[tuple[str, str]]]:
        table = {row: [] for row in ROWS}
        for nodeid, rows in self.rows.items():
            if nodeid in self.results:
                for row in rows:
                    table[row].append((nodeid, self.results[nodeid]))
        return table

    def loader_counts(self) -> dict[int, tuple[int, int]]:
        """Row -> (loader-level tests run, passed), from ``test_rowNN_`` names."""
        counts: dict[int, list[int]] = {}
        for nodeid, result in self.results.items():
            match = LOADER_TEST.search(nodeid)
            if match and nodeid not in self.rows:
                entry = counts.setdefault(int(match.group(1)), [0, 0])
                entry[0] += 1
                entry[1] += result == "passed"
        return {row: (run, passed) for row, (run, passed) in counts.items()}

    def complete(self) -> bool:
        """Every row has a passing app-level test and no app-level test failed."""
        table = self.by_row()
        return all(any(r == "passed" for _, r in tests) for tests in table.values()) and \
            not any(r == "failed" for tests in table.values() for _, r in tests)


def render(outcomes: Outcomes, figures: Figures, totals: dict) -> str:
    """The report as Markdown."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability report",
        "",
        ("Generated by the test suite (`make test`, i.e. `pytest`) from its own results; "
         "do not edit by hand. The cases are the 25 rows of RELIABILITY.md and rows 26-34 "
         "from the hardening issue (12); each row names "
         "the tests that exercise it against the real app (Flask's test client) or the real "
         "server (`pneumo serve` on a loopback port)."),
        "",
        f"- Generated: {now}, Python {platform.python_version()}, {os.cpu_count()} CPU cores",
        (f"- Session: {totals['passed']} passed, {totals['failed']} failed, "
         f"{totals['skipped']} skipped in {totals['seconds']:.0f} s"),
        ("- Every row covered by a passing app-level test: "
         f"{'yes' if outcomes.complete() else 'NO'}"),
        "",
        "## Rows and their tests",
        "",
        "| # | case | app-level tests (result) | loader-level tests |",
        "|---|---|---|---|",
    ]
    loader = outcomes.loader_counts()
    for row, tests in outcomes.by_row().items():
        shown = "<br>".join(f"`{name}` ({result})" for name, result in _grouped(tests))
        run, passed = loader.get(row, (0, 0))
        lines.append(f"| {row} | {ROWS[row]} | {shown or '**none ran**'} | "
                     f"{f'{passed}/{run} passed' if run else '-'} |")
    for section, entries in figures.sections.items():
        lines += ["", f"## {section}", "", "| measure | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in entries]
        lines += [""] + [f"{text}" for text in figures.notes.get(section, [])]
    for section, texts in figures.notes.items():
        if section not in figures.sections:
            lines += ["", f"## {section}", ""] + list(texts)
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def _grouped(tests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Parametrised cases of one test as one entry: ``("file.py::test", "7/7 passed")``."""
    groups: dict[str, list[str]] = {}
    for nodeid, result in tests:
        groups.setdefault(nodeid.removeprefix("tests/").split("[")[0], []).append(result)
    shown = []
    for name, results in sorted(groups.items()):
        passed = results.count("passed")
        if len(results) == 1:
            shown.append((name, results[0]))
        else:
            others = sorted({r for r in results if r != "passed"})
            shown.append((name, f"{passed}/{len(results)} passed"
                          + "".join(f"; {r}" for r in others)))
    return shown


def write(root: Path, outcomes: Outcomes, figures: Figures, totals: dict) -> list[Path]:
    """Write the report where it belongs (see the module docstring); returns the paths."""
    text = render(outcomes, figures, totals)
    written = []
    artifacts = root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "reliability.md").write_text(text)
    written.append(artifacts / "reliability.md")
    if os.environ.get("PNEUMO_REFRESH_REPORT") == "1" and outcomes.complete():
        (root / "docs" / "reliability.md").write_text(text)
        written.append(root / "docs" / "reliability.md")
    return written
