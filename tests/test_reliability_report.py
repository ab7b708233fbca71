"""The reliability report itself: every row of RELIABILITY.md has an app-level test,
and the report says what ran, what failed and what was skipped."""

from __future__ import annotations

import ast
from pathlib import Path

import reliability

TESTS = Path(__file__).resolve().parent


def marked_rows() -> dict[int, list[str]]:
    """Row -> tests marked ``@pytest.mark.reliability(row)``, read from the test files."""
    rows: dict[int, list[str]] = {row: [] for row in reliability.ROWS}
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and \
                        ast.unparse(decorator.func).endswith("mark.reliability"):
                    for arg in decorator.args:
                        rows[ast.literal_eval(arg)].append(f"{path.name}::{node.name}")
    return rows


def test_every_row_has_an_app_level_test():
    uncovered = [row for row, tests in marked_rows().items() if not tests]
    assert uncovered == []


def test_rows_with_the_real_server_are_covered_by_server_tests():
    """Rows 1, 21 and 22 are about the server process: a test that starts it covers each."""
    rows = marked_rows()
    for row in (1, 21, 22):
        assert any(t.startswith(("test_serve.py", "test_load.py")) for t in rows[row]), row


def _outcomes(results: dict[str, str], rows: dict[str, tuple[int, ...]]):
    outcomes = reliability.Outcomes()
    outcomes.rows.update(rows)
    for nodeid, result in results.items():
        outcome = result.split(":")[0]
        if outcome == "passed":
            outcomes.record(nodeid, "setup", "passed")
            outcomes.record(nodeid, "call", "passed")
        else:
            outcomes.record(nodeid, "call", outcome, result.partition(": ")[2])
    return outcomes


def test_the_report_is_complete_only_when_every_row_passed():
    every = {f"tests/test_x.py::test_row[{row}]": (row,) for row in reliability.ROWS}
    passed = _outcomes(dict.fromkeys(every, "passed"), every)
    assert passed.complete()
    one_failed = _outcomes({**dict.fromkeys(every, "passed"),
                            "tests/test_x.py::test_row[7]": "failed"}, every)
    assert not one_failed.complete()
    skipped = _outcomes({**dict.fromkeys(every, "passed"),
                         "tests/test_x.py::test_row[24]": "skipped: no model"}, every)
    assert not skipped.complete()
    missing = dict(every)
    missing.pop("tests/test_x.py::test_row[25]")
    assert not _outcomes(dict.fromkeys(missing, "passed"), missing).complete()


def test_the_report_groups_cases_and_shows_figures(tmp_path):
    rows = {"tests/test_a.py::test_one[x]": (2,), "tests/test_a.py::test_one[y]": (2,),
            "tests/test_b.py::test_two": (2, 3)}
    outcomes = _outcomes({"tests/test_a.py::test_one[x]": "passed",
                          "tests/test_a.py::test_one[y]": "skipped: no chromium",
                          "tests/test_b.py::test_two": "passed",
                          "tests/test_imaging.py::test_row09_bombs[png]": "passed"}, rows)
    figures = reliability.Figures()
    figures.add("Load", "requests", 300)
    figures.add("Load", "drift", 0.001234)
    figures.note("Load", "a note")
    text = reliability.render(outcomes, figures, {"passed": 3, "failed": 0, "skipped": 1,
                                                  "seconds": 12.0})
    assert "`test_a.py::test_one` (1/2 passed; skipped: no chromium)" in text
    assert "`test_b.py::test_two` (passed)" in text
    assert "| 9 |" in text and "1/1 passed |" in text  # loader-level, by name
    assert "| 1 | " in text and "**none ran**" in text
    assert "| requests | 300 |" in text and "| drift | 0.001234 |" in text
    assert "a note" in text and "Every row covered by a passing app-level test: NO" in text
    written = reliability.write(tmp_path, outcomes, figures, {"passed": 3, "failed": 0,
                                                              "skipped": 1, "seconds": 1.0})
    assert written == [tmp_path / "test-artifacts" / "reliability.md"]  # incomplete: no docs/


def test_a_complete_run_refreshes_the_docs_copy_only_when_asked(tmp_path, monkeypatch):
    """Running the tests must not rewrite a tracked file: docs/ only with the explicit
    ``make reliability-report`` (PNEUMO_REFRESH_REPORT=1)."""
    outcomes = reliability.Outcomes()
    monkeypatch.setattr(outcomes, "complete", lambda: True)  # every row passed
    (tmp_path / "docs").mkdir()
    totals = {"passed": 1, "failed": 0, "skipped": 0, "seconds": 1.0}
    monkeypatch.delenv("PNEUMO_REFRESH_REPORT", raising=False)
    assert reliability.write(tmp_path, outcomes, reliability.Figures(), totals) == [
        tmp_path / "test-artifacts" / "reliability.md"]
    monkeypatch.setenv("PNEUMO_REFRESH_REPORT", "1")
    assert reliability.write(tmp_path, outcomes, reliability.Figures(), totals)[-1] == \
        tmp_path / "docs" / "reliability.md"
