"""``pneumo dicom-spool`` on real spools: filled through the ``Spool`` class (as the node
fills it), read and changed by the real command in a subprocess.

The command works beside a running node (it never takes the node's lock): the tests
that say so keep a ``Spool`` open in this process, which holds the lock as a node does,
and run the node's sender or writes beside the command. The sender's ERROR for overdue
results is tested on the sender alone, against a recording SCP. No model is loaded:
seconds, not minutes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest
from pydicom import uid

from dicom_factory import make_dataset, to_bytes
from dicom_peers import ROOT, Recorder, wait_for
from synthetic import synthetic_xray

DEADLINE = 60  # seconds: a generous limit for what takes well under one


def dicom_spool(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """The real command, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "pneumo.cli", "dicom-spool", *args,
                           "--data-dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)


def database(data_dir: Path) -> closing[sqlite3.Connection]:
    """The node's database, opened as any SQLite client would."""
    return closing(sqlite3.connect(data_dir / "dicom-node" / "queue.sqlite3",
                                   isolation_level=None))


def backdate(data_dir: Path, instance_id: int, hours: float) -> None:
    """The instance arrived ``hours`` ago (as if the PACS had refused that long)."""
    moment = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
    with database(data_dir) as db:
        db.execute("UPDATE instances SET received = ? WHERE id = ?",
                   (moment.isoformat(timespec="milliseconds"), instance_id))


class Filled:
    """A spool as a node leaves it: one instance of each state, with UIDs to look for."""

    def __init__(self, data_dir: Path):
        from pneumo.dicom_node.spool import Spool

        self.data_dir = data_dir
        self.uids = [uid.generate_uid() for _ in range(4)]
        self.result_uids = [uid.generate_uid() for _ in range(4)]
        spool = Spool(data_dir, "test")
        try:
            self.to_screen, self.waiting, self.failed, self.done = (
                spool.receive(b"image %d" % n, self.uids[n]).instance for n in range(4))
            spool.failed(self.failed, "ZeroDivisionError")
            spool.screened(self.waiting, "NORMAL p=0.100", 0.1,
                           [("sr", self.result_uids[0], b"sr"), ("sc", self.result_uids[1], b"sc")])
            refused = spool.due_results()[0]
            spool.retry_later(refused, "the PACS answered 0xA700", 300)
            spool.screened(self.done, "PNEUMONIA p=0.900", 0.1,
                           [("sr", self.result_uids[2], b"sr")])
            spool.sent(spool.due_results()[-1])
        finally:
            spool.close()

    def spool(self):
        from pneumo.dicom_node.spool import Spool

        return Spool(self.data_dir, "test")

    def files(self, folder: str) -> set[str]:
        return {path.name for path in (self.data_dir / "dicom-node" / folder).iterdir()}


@pytest.fixture
def filled(tmp_path) -> Filled:
    return Filled(tmp_path / "data")


# -- status ---------------------------------------------------------------------------

def test_status_counts_every_state_and_names_rows_by_their_tags_never_by_uids(filled):
    run = dicom_spool(filled.data_dir, "status")
    assert run.returncode == 1, run  # a failed instance needs attention
    text = run.stdout
    assert "instances: 1 to screen, 1 with results waiting, 1 done, 1 failed" in text
    assert "results: 2 waiting for delivery (0 overdue" in text and "1 delivered" in text
    assert f"{filled.failed.tag}  arrived" in text and "error: ZeroDivisionError" in text
    assert f"{filled.waiting.tag} sr" in text and f"{filled.waiting.tag} sc" in text
    assert "1 attempt(s), next try in 4 min  last error: the PACS answered 0xA700" in text
    assert "0 attempt(s), due now  last error: none yet" in text
    assert re.search(r"oldest waiting: \d+ s \(" + re.escape(f"{filled.to_screen.tag}, to be "
                                                            "screened)"), text)
    for value in (*filled.uids, *filled.result_uids):
        assert value not in text + run.stderr
    assert run.stderr == ""


def test_status_as_json_for_monitoring(filled):
    run = dicom_spool(filled.data_dir, "status", "--json")
    assert run.returncode == 1
    status = json.loads(run.stdout)
    assert status["instances"] == {"received": 1, "screened": 1, "done": 1, "failed": 1}
    assert status["results"] == {"waiting": 2, "overdue": 0, "delivered": 1}
    assert status["screening"] == {"waiting": 1, "overdue": 0}
    assert status["overdue_to_screen"] == []
    assert [row["tag"] for row in status["failed"]] == [filled.failed.tag]
    assert [row["attempts"] for row in status["waiting"]] == [1, 0]
    assert status["oldest_waiting"] == f"{filled.to_screen.tag}, to be screened"
    for value in (*filled.uids, *filled.result_uids):
        assert value not in run.stdout


def test_status_of_a_spool_where_nothing_waits_exits_0(tmp_path):
    from pneumo.dicom_node.spool import Spool

    Spool(tmp_path, "test").close()
    run = dicom_spool(tmp_path, "status")
    assert run.returncode == 0, run
    assert "instances: 0 to screen, 0 with results waiting, 0 done, 0 failed" in run.stdout
    assert "oldest waiting: nothing waits" in run.stdout


def test_results_waiting_past_the_threshold_are_overdue(filled):
    backdate(filled.data_dir, filled.waiting.id, hours=2)
    run = dicom_spool(filled.data_dir, "status")
    assert "2 waiting for delivery (2 overdue: image arrived more than 1 h ago)" in run.stdout
    assert run.stdout.count("OVERDUE") == 2
    assert f"oldest waiting: 2 h ({filled.waiting.tag}, results waiting for delivery)" \
        in run.stdout
    later = dicom_spool(filled.data_dir, "status", "--overdue-after", "3h", "--json")
    assert json.loads(later.stdout)["results"]["overdue"] == 0


def test_an_instance_waiting_to_be_screened_past_the_threshold_needs_attention(tmp_path):
    """The screener stuck or far behind: what waits to be screened an hour after it
    arrived makes status exit 1 and is listed by its tag, as results overdue are."""
    from pneumo.dicom_node.spool import Spool

    uids = [uid.generate_uid() for _ in range(2)]
    spool = Spool(tmp_path, "test")
    try:
        waiting = [spool.receive(b"image %d" % n, uids[n]).instance for n in range(2)]
    finally:
        spool.close()
    fresh = dicom_spool(tmp_path, "status")
    assert fresh.returncode == 0, fresh  # waiting, but not for long: nothing to see to
    assert "instances: 2 to screen, 0 with results waiting" in fresh.stdout

    backdate(tmp_path, waiting[0].id, hours=2)
    late = dicom_spool(tmp_path, "status")
    assert late.returncode == 1, late
    assert "instances: 2 to screen (1 overdue: arrived more than 1 h ago), 0 with results " \
           "waiting, 0 done, 0 failed" in late.stdout
    assert f"not screened more than 1 h after they arrived (the screener is stuck on one, " \
           f"or far behind; see the node's log):\n  {waiting[0].tag}  arrived 2 h ago" \
        in late.stdout
    assert waiting[1].tag not in late.stdout.split("not screened more than")[1]
    assert f"oldest waiting: 2 h ({waiting[0].tag}, to be screened)" in late.stdout
    as_json = json.loads(dicom_spool(tmp_path, "status", "--json").stdout)
    assert as_json["screening"] == {"waiting": 2, "overdue": 1}
    assert [row["tag"] for row in as_json["overdue_to_screen"]] == [waiting[0].tag]
    patient = dicom_spool(tmp_path, "status", "--overdue-after", "3h")
    assert patient.returncode == 0 and "overdue" not in patient.stdout.split("\n")[1]
    for value in uids:
        assert value not in late.stdout + json.dumps(as_json)


def test_status_lists_at_most_limit_rows_but_counts_them_all(filled):
    run = dicom_spool(filled.data_dir, "status", "--limit", "1")
    assert "2 waiting for delivery" in run.stdout
    assert f"{filled.waiting.tag} sr" in run.stdout and f"{filled.waiting.tag} sc" \
        not in run.stdout
    assert "... and 1 more (--limit)" in run.stdout


# -- retry ----------------------------------------------------------------------------

def test_retry_puts_failed_instances_back_and_makes_results_due_now(filled):
    run = dicom_spool(filled.data_dir, "retry")
    assert run.returncode == 0, run
    assert "1 failed instance(s) back in the queue to screen; 2 undelivered result(s) due " \
           "now" in run.stdout
    spool = filled.spool()
    try:
        assert spool.counts() == {"received": 2, "screened": 1, "done": 1, "undelivered": 2}
        screened = []
        while (instance := spool.next_to_screen()) is not None:  # as the screener takes them
            assert instance.file.is_file()
            screened.append(instance.id)
            spool.failed(instance, "again")
        assert screened == [filled.to_screen.id, filled.failed.id]
        due = spool.due_results()
        assert len(due) == 2 and sorted(r.attempts for r in due) == [0, 1]  # attempts kept
    finally:
        spool.close()


def test_a_failed_instance_without_its_file_stays_failed(filled):
    (filled.data_dir / "dicom-node" / "received" / filled.failed.file.name).unlink()
    run = dicom_spool(filled.data_dir, "retry")
    assert run.returncode == 0
    assert "0 failed instance(s) back in the queue" in run.stdout
    assert f"no file left to screen and stay failed ({filled.failed.tag}): purge" in run.stdout
    status = dicom_spool(filled.data_dir, "status")
    assert "error: ZeroDivisionError; file missing" in status.stdout


def test_nothing_to_retry_says_so(tmp_path):
    from pneumo.dicom_node.spool import Spool

    Spool(tmp_path, "test").close()
    run = dicom_spool(tmp_path, "retry")
    assert run.returncode == 0 and run.stdout.startswith("nothing to retry")


def rows(data_dir: Path) -> list:
    """Every row of the spool's database, to see that nothing changed."""
    with database(data_dir) as db:
        return db.execute("SELECT * FROM instances ORDER BY id").fetchall() + \
            db.execute("SELECT * FROM results ORDER BY id").fetchall()


def test_retry_with_a_tag_acts_on_that_instance_only(filled):
    before = {r[0]: r for r in rows(filled.data_dir)[4:]}  # the results' rows
    run = dicom_spool(filled.data_dir, "retry", "--tag", filled.failed.tag)
    assert run.returncode == 0, run
    assert run.stdout.startswith(f"{filled.failed.tag}: back in the queue to screen. A "
                                 "running node takes them up within 30 s")
    assert {r[0]: r for r in rows(filled.data_dir)[4:]} == before  # no result made due
    with database(filled.data_dir) as db:
        assert db.execute("SELECT id FROM instances WHERE state = 'received' ORDER BY id"
                          ).fetchall() == [(filled.to_screen.id,), (filled.failed.id,)]

    # pasted from the node's log line
    pasted = f"instance {filled.waiting.tag}:"
    run = dicom_spool(filled.data_dir, "retry", "--tag", pasted)
    assert run.returncode == 0, run
    assert run.stdout.startswith(f"{filled.waiting.tag}: 2 undelivered result(s) due now.")
    status = json.loads(dicom_spool(filled.data_dir, "status", "--json").stdout)
    assert [w["next_try_in_seconds"] for w in status["waiting"]] == [0.0, 0.0]

    for instance, why in ((filled.to_screen, ("it waits to be screened, and the node screens "
                                              "it in turn")),
                          (filled.done, "it is done, its results delivered")):
        run = dicom_spool(filled.data_dir, "retry", "--tag", f"#{instance.id}")
        assert run.returncode == 0, run
        assert run.stdout == f"nothing to retry: {instance.tag} ({why})\n"


def test_purge_with_a_tag_deletes_that_instance_only(filled):
    spool = filled.spool()
    try:
        other = spool.receive(b"image 9", uid.generate_uid()).instance
        spool.failed(other, "OSError")
    finally:
        spool.close()
    listed = dicom_spool(filled.data_dir, "purge", "--tag", filled.failed.tag)
    assert listed.returncode == 1, listed
    assert listed.stdout.startswith("would delete 1 failed instance(s) and their files:\n"
                                    f"  {filled.failed.tag}  arrived")
    assert other.tag not in listed.stdout
    purged = dicom_spool(filled.data_dir, "purge", "--tag", filled.failed.tag, "--yes")
    assert purged.returncode == 0, purged
    assert f"deleted 1 failed instance(s) and their files:\n  {filled.failed.tag}" \
        in purged.stdout
    assert filled.files("received") == {filled.to_screen.file.name, filled.waiting.file.name,
                                        other.file.name}

    # a result's line from status names its instance; its results are given up on
    result_line = f"{filled.waiting.tag} sr"
    purged = dicom_spool(filled.data_dir, "purge", "--tag", result_line, "--yes")
    assert purged.returncode == 0, purged
    assert purged.stdout.startswith("deleted 1 instance(s) whose results are still "
                                    "undelivered, with 2 undelivered result(s) and their "
                                    f"files:\n  {filled.waiting.tag}  arrived")
    assert filled.files("results") == set()
    assert filled.files("received") == {filled.to_screen.file.name, other.file.name}

    done = dicom_spool(filled.data_dir, "purge", "--tag", filled.done.tag, "--yes")
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"nothing to purge: {filled.done.tag} is done")
    with database(filled.data_dir) as db:
        assert db.execute("SELECT id FROM instances ORDER BY id").fetchall() == \
            [(filled.to_screen.id,), (filled.done.id,), (other.id,)]


def test_purge_with_a_tag_takes_an_instance_still_to_be_screened_only_while_no_node_runs(
        filled):
    """An image that hangs the screener at every start: the operator stops the node and
    purges it. While a node runs (its lock held, here by a Spool in this process) it may
    be screening that very image: refused, nothing changed; listing without --yes says
    the same, as it says what --yes would do."""
    before = rows(filled.data_dir)
    spool = filled.spool()
    try:
        running = dicom_spool(filled.data_dir, "purge", "--tag", filled.to_screen.tag, "--yes")
        listing = dicom_spool(filled.data_dir, "purge", "--tag", filled.to_screen.tag)
    finally:
        spool.close()
    for refused in (running, listing):
        assert refused.returncode == 2, refused
        assert refused.stderr == f"pneumo dicom-spool: error: --tag " \
            f"'{filled.to_screen.tag}': {filled.to_screen.tag} is still to be screened and a " \
            "node runs on this spool (it may be screening it now): stop the node, then purge " \
            "it; nothing changed\n"
    assert rows(filled.data_dir) == before
    assert filled.to_screen.file.name in filled.files("received")

    listed = dicom_spool(filled.data_dir, "purge", "--tag", filled.to_screen.tag)
    assert listed.returncode == 1, listed
    assert listed.stdout.startswith("would delete 1 instance(s) still to be screened (no node "
                                    f"runs on this spool) and their files:\n  "
                                    f"{filled.to_screen.tag}  arrived")
    purged = dicom_spool(filled.data_dir, "purge", "--tag", filled.to_screen.tag, "--yes")
    assert purged.returncode == 0, purged
    assert filled.to_screen.file.name not in filled.files("received")
    filled.spool().close()  # the node's lock was let go: the node starts again
    assert json.loads(dicom_spool(filled.data_dir, "status", "--json").stdout)[
        "instances"]["received"] == 0


@pytest.mark.parametrize("action", ["retry", "purge"])
def test_a_tag_that_names_no_instance_is_one_line_and_changes_nothing(filled, action):
    wrong_hash = "0" if filled.to_screen.uid_hash[0] != "0" else "1"
    confirmed = ["--yes"] if action == "purge" else []
    before = rows(filled.data_dir)
    for tag, message in [
        ("#99", ("--tag '#99': no instance #99 in the spool (see pneumo dicom-spool "
                 "status); nothing changed")),
        (f"#{filled.to_screen.id} [{wrong_hash}{filled.to_screen.uid_hash[1:10]}]",
         (f"no such instance in the spool: #{filled.to_screen.id} is another image now "
          f"({filled.to_screen.tag}); nothing changed")),
        ("[3f9a0c2b1d]", "expected an instance's tag"),  # a hash without its row
        ("twelve", ("--tag 'twelve': expected an instance's tag as the node's log and "
                    "pneumo dicom-spool status print it")),
        ("", "--tag '': expected an instance's tag"),  # never "every instance"
    ]:
        one_line_error(dicom_spool(filled.data_dir, action, "--tag", tag, *confirmed), message)
    assert rows(filled.data_dir) == before


def test_purge_takes_a_tag_or_an_age_not_both(filled):
    """One check, argparse's, which --help shows too."""
    before = rows(filled.data_dir)
    for options in (["--tag", filled.failed.tag, "--results-older-than", "7d"],
                    ["--results-older-than", "7d", "--tag", filled.failed.tag]):
        run = dicom_spool(filled.data_dir, "purge", *options, "--yes")
        assert run.returncode == 2, run
        *usage, error = run.stderr.splitlines()
        assert usage[0].startswith("usage: pneumo dicom-spool purge [-h] "
                                   "[--results-older-than SPAN | --tag TAG]"), usage
        first, second = options[0], options[2]
        assert error == f"pneumo dicom-spool purge: error: argument {second}: not allowed " \
                        f"with argument {first}", error
    assert rows(filled.data_dir) == before
    shown = dicom_spool(filled.data_dir, "purge", "--help")
    assert shown.returncode == 0 and "[--results-older-than SPAN | --tag TAG]" in shown.stdout


def test_an_old_tag_whose_row_number_came_back_for_another_image_is_refused(filled):
    """SQLite gives a new row the number after the highest: purge the newest instance and
    the next image gets its number. The tag an operator kept (with its hash) no longer
    names it."""
    spool = filled.spool()
    try:
        newest = spool.receive(b"image 8", uid.generate_uid()).instance
        spool.failed(newest, "OSError")
    finally:
        spool.close()
    assert dicom_spool(filled.data_dir, "purge", "--tag", newest.tag, "--yes").returncode == 0
    spool = filled.spool()
    try:
        again = spool.receive(b"image 7", uid.generate_uid()).instance
        spool.failed(again, "OSError")
    finally:
        spool.close()
    assert again.id == newest.id and again.tag != newest.tag
    before = rows(filled.data_dir)
    one_line_error(dicom_spool(filled.data_dir, "purge", "--tag", newest.tag, "--yes"),
                   f"#{newest.id} is another image now ({again.tag})")
    assert rows(filled.data_dir) == before


def test_tags_read_as_the_log_and_status_print_them():
    from pneumo.dicom_node.admin import Tag

    for text in ("#12", "12", " #12 [3F9A0C2B1D] ", "instance #12 [3f9a0c2b1d]:",
                 "#12 [3f9a0c2b1d] sr", "#12 [3f9a0c2b1d] sc", "#12[3f9a]"):
        tag = Tag.parse(text)
        assert tag.row == 12 and tag.hash_start in (None, "3f9a0c2b1d", "3f9a"), text
    for wrong in ("", "#", "#-1", "12 [xyz]", "#12 [3f9a] extra", "[3f9a0c2b1d]", "#1.5",
                  "#12 [3f9a0c2b1d] ct", "1" * 19):
        with pytest.raises(ValueError, match="expected an instance's tag"):
            Tag.parse(wrong)


# -- purge ----------------------------------------------------------------------------

def test_purge_lists_without_yes_and_deletes_failed_instances_with_it(filled):
    failed_file = filled.failed.file.name
    listed = dicom_spool(filled.data_dir, "purge")
    assert listed.returncode == 1, listed
    assert "would delete 1 failed instance(s)" in listed.stdout
    assert "nothing deleted: run again with --yes" in listed.stdout
    assert failed_file in filled.files("received")

    results_before = filled.files("results")
    purged = dicom_spool(filled.data_dir, "purge", "--yes")
    assert purged.returncode == 0, purged
    assert f"deleted 1 failed instance(s) and their files:\n  {filled.failed.tag}" \
        in purged.stdout
    assert filled.files("received") == {filled.to_screen.file.name, filled.waiting.file.name}
    assert filled.files("results") == results_before  # waiting results untouched
    spool = filled.spool()
    try:
        assert spool.counts() == {"received": 1, "screened": 1, "done": 1, "undelivered": 2}
        # forgotten: the PACS sending the image again has it screened afresh
        assert not spool.receive(b"image 2", filled.uids[2]).duplicate
    finally:
        spool.close()
    again = dicom_spool(filled.data_dir, "purge", "--yes")
    assert again.returncode == 0 and again.stdout.startswith("nothing to purge")


def test_purge_gives_up_on_results_undelivered_past_the_age(filled):
    backdate(filled.data_dir, filled.waiting.id, hours=24 * 8)
    young = dicom_spool(filled.data_dir, "purge", "--results-older-than", "9d", "--yes")
    assert "whose results" not in young.stdout  # only the failed instance went
    assert len(filled.files("results")) == 2

    listed = dicom_spool(filled.data_dir, "purge", "--results-older-than", "7d")
    assert listed.returncode == 1
    assert "would delete 1 instance(s) whose results were still undelivered more than " \
           "7 d after their image arrived, with 2 undelivered result(s)" in listed.stdout
    assert f"{filled.waiting.tag}  arrived 8 d ago  2 undelivered, last error: the PACS " \
           "answered 0xA700" in listed.stdout
    purged = dicom_spool(filled.data_dir, "purge", "--results-older-than", "7d", "--yes")
    assert purged.returncode == 0, purged
    assert filled.files("results") == set()
    assert filled.files("received") == {filled.to_screen.file.name}
    with database(filled.data_dir) as db:
        assert db.execute("SELECT COUNT(*) FROM results WHERE sent IS NULL").fetchone() == (0,)
        assert db.execute("SELECT id FROM instances ORDER BY id").fetchall() == \
            [(filled.to_screen.id,), (filled.done.id,)]


# -- beside a running node ------------------------------------------------------------

def test_retry_beside_a_running_sender_delivers_without_waiting_out_the_back_off(
        tmp_path, monkeypatch):
    """A node's spool (its lock held) and sender run in this process; the PACS refused,
    the back-off says 5 minutes, the PACS is fixed: retry has it delivered at once."""
    from pneumo.dicom_node import sender as sender_module
    from pneumo.dicom_node.screener import part10
    from pneumo.dicom_node.sender import Destination, Sender
    from pneumo.dicom_node.spool import Spool, SpoolBusy

    # the sender looks at the spool every 30 s when nothing wakes it: every 0.2 s here
    monkeypatch.setattr(sender_module, "IDLE_CHECK", 0.2)
    recorder = Recorder()
    spool = Spool(tmp_path, "test")
    with pytest.raises(SpoolBusy):
        Spool(tmp_path, "test")  # the lock is held, as by a running node
    source = make_dataset(synthetic_xray(1, size=(32, 32)))
    instance = spool.receive(to_bytes(source), source.SOPInstanceUID).instance
    result = make_dataset(synthetic_xray(2, size=(32, 32)))  # stands for an SR
    spool.screened(instance, "test", 0.0, [("sr", str(result.SOPInstanceUID),
                                            part10(result))])
    spool.retry_later(spool.due_results()[0], "the PACS answered 0xA700", 300)
    stop, wake, delivered = threading.Event(), threading.Event(), []
    sender = Sender(spool, Destination.parse(recorder.address), "PNEUMO", stop, wake,
                    on_delivered=delivered.append)
    sender.start()
    try:
        status = dicom_spool(tmp_path, "status")
        assert "1 attempt(s), next try in 4 min" in status.stdout, status
        run = dicom_spool(tmp_path, "retry")
        assert run.returncode == 0, run
        wait_for(lambda: delivered, DEADLINE, "the delivery after retry")
    finally:
        stop.set()
        wake.set()
        sender.join(DEADLINE)
        recorder.stop()
    assert recorder.uids() == [str(result.SOPInstanceUID)]
    assert spool.counts() == {"done": 1, "undelivered": 0}
    assert not list(spool.received_dir.iterdir()) and not list(spool.results_dir.iterdir())
    spool.close()


def test_the_command_and_a_writing_node_share_the_database(filled):
    """The node's spool receives instances as fast as it can while the command reads,
    retries and purges: no side waits out a lock or fails, and every row adds up."""
    spool = filled.spool()
    received, errors, stop = [], [], threading.Event()

    def node_receiving():
        while not stop.is_set():
            try:
                received.append(spool.receive(b"x", uid.generate_uid()).instance)
                if len(received) % 3 == 0:
                    spool.failed(received[-1], "OSError")
            except Exception as exc:  # noqa: BLE001 (reported below)
                errors.append(repr(exc))

    writer = threading.Thread(target=node_receiving)
    writer.start()
    try:
        runs = [dicom_spool(filled.data_dir, *action) for action in
                (["status"], ["retry"], ["purge", "--yes"], ["status", "--json"], ["retry"])]
    finally:
        stop.set()
        writer.join(DEADLINE)
    assert not errors
    assert all(run.stderr == "" for run in runs), runs
    status = json.loads(runs[3].stdout)
    needs_attention = bool(status["failed"] or status["results"]["overdue"]
                           or status["screening"]["overdue"])
    assert [run.returncode for run in runs] == [1, 0, 0, int(needs_attention), 0], runs
    assert len(received) > 10  # the node kept writing throughout
    # every row that names a file has it, and every file has its row
    with database(filled.data_dir) as db:
        named = {row[0] for row in db.execute("SELECT file FROM instances WHERE file IS "
                                              "NOT NULL")}
        rows = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    assert named == filled.files("received")
    counts = spool.counts()
    assert sum(counts.values()) - counts["undelivered"] == rows
    assert counts["done"] == 1 and counts["screened"] == 1
    spool.close()


def test_the_sender_logs_an_overdue_result_at_error_once(tmp_path, monkeypatch, caplog):
    """The PACS refuses; once a result is an hour late the sender says so at ERROR, once,
    and goes on trying; a second result late later gets its own line."""
    from pneumo.dicom_node import sender as sender_module
    from pneumo.dicom_node.screener import part10
    from pneumo.dicom_node.sender import Destination, Sender
    from pneumo.dicom_node.spool import Spool

    caplog.set_level(logging.WARNING, "pneumo.dicom_node")
    monkeypatch.setattr(sender_module, "FIRST_RETRY", 0.05)  # tries every 0.1 s at most
    monkeypatch.setattr(sender_module, "MAX_RETRY", 0.1)
    recorder = Recorder()
    recorder.refusing = True
    spool = Spool(tmp_path, "test")
    sources, results, uids = [], [], []
    for seed in (3, 4):
        source = make_dataset(synthetic_xray(seed, size=(32, 32)))
        uids.append(str(source.SOPInstanceUID))
        sources.append(spool.receive(to_bytes(source), source.SOPInstanceUID).instance)
        results.append(make_dataset(synthetic_xray(seed + 10, size=(32, 32))))
    spool.screened(sources[0], "test", 0.0, [("sr", str(results[0].SOPInstanceUID),
                                              part10(results[0]))])
    backdate(tmp_path, sources[0].id, hours=2)
    stop, wake = threading.Event(), threading.Event()
    sender = Sender(spool, Destination.parse(recorder.address), "PNEUMO", stop, wake)
    sender.start()

    def overdue_lines():
        return [r for r in caplog.records if r.levelno == logging.ERROR]

    try:
        wait_for(lambda: len(recorder.refused) >= 5, DEADLINE, "five refused tries")
        first, = overdue_lines()
        assert first.getMessage().startswith(
            f"1 result(s) still not delivered to {recorder.address} more than 1 h after their "
            f"image arrived (oldest: {sources[0].tag} sr, 2 h, ")
        assert "last error: the PACS answered 0xA700); still trying" in first.getMessage()

        spool.screened(sources[1], "test", 0.0, [("sr", str(results[1].SOPInstanceUID),
                                                  part10(results[1]))])
        backdate(tmp_path, sources[1].id, hours=3)
        wait_for(lambda: len(overdue_lines()) >= 2, DEADLINE, "the second result's line")
        refused = len(recorder.refused)
        wait_for(lambda: len(recorder.refused) >= refused + 5, DEADLINE, "five more tries")
        assert len(overdue_lines()) == 2
        assert f"oldest: {sources[1].tag} sr, 3 h" in overdue_lines()[1].getMessage()
        recorder.refusing = False
        wait_for(lambda: len(recorder.uids()) == 2, DEADLINE, "the deliveries")
    finally:
        stop.set()
        wake.set()
        sender.join(DEADLINE)
        recorder.stop()
        spool.close()
    assert len(overdue_lines()) == 2
    for value in (*uids, *(str(ds.SOPInstanceUID) for ds in results)):
        assert value not in caplog.text


def test_a_stuck_screener_is_logged_at_error_once_per_instance_by_a_look_from_outside(
        tmp_path, caplog):
    """The screener hangs on its first image. The watch (the node runs it from its own
    loop) says so at ERROR, once per instance overdue, by tag, with what the screener is
    on; even while a worker holds the spool's shared lock, since it reads on a
    connection of its own."""
    from pneumo.dicom_node.screener import Screener, ScreeningWatch
    from pneumo.dicom_node.spool import Spool, now_utc

    caplog.set_level(logging.WARNING, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    uids = [uid.generate_uid() for _ in range(3)]
    instances = [spool.receive(b"image %d" % n, uids[n]).instance for n in range(3)]
    release = threading.Event()

    def hung(data):
        release.wait(DEADLINE)
        raise TimeoutError("the decoder hung")  # then it fails: it leaves the queue

    stop, wake = threading.Event(), threading.Event()
    screener = Screener(spool, hung, stop, wake)
    # a node that has run for hours: the backdated images arrived while it ran
    watch = ScreeningWatch(spool, screener, dt.timedelta(hours=1),
                           started=now_utc() - dt.timedelta(hours=4))

    def errors():
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
                and "not screened" in r.getMessage()]

    screener.start()
    try:
        wait_for(lambda: screener.current, DEADLINE, "the screener on its first image")
        watch.look()
        assert errors() == []  # waiting, but not yet for an hour
        backdate(tmp_path, instances[0].id, hours=2)
        backdate(tmp_path, instances[1].id, hours=1.5)
        with spool._mutex:  # a worker stuck while holding the lock the workers share
            looking = threading.Thread(target=watch.look)
            looking.start()
            looking.join(DEADLINE)
            assert not looking.is_alive(), "the watch waited on the workers' lock"
        looking.join()
        first, = errors()
        assert re.fullmatch(
            re.escape(f"2 instance(s) still not screened more than 1 h after they arrived "
                      f"(oldest: {instances[0].tag}, 2 h); the screener has been on "
                      f"{instances[0].tag} for ") + r"\d+ s; see pneumo dicom-spool status",
            first), first
        watch.look()
        assert len(errors()) == 1  # once per instance
        backdate(tmp_path, instances[2].id, hours=3)
        watch.look()
        assert errors()[1].startswith(f"1 instance(s) still not screened more than 1 h after "
                                      f"they arrived (oldest: {instances[2].tag}, 3 h); ")
        release.set()
        wait_for(lambda: spool.counts().get("failed") == 3, DEADLINE, "the queue to drain")
        watch.look()
        assert len(errors()) == 2
    finally:
        release.set()
        stop.set()
        wake.set()
        screener.join(DEADLINE)
        watch.close()
        spool.close()
    for value in uids:
        assert value not in caplog.text


def test_the_watch_says_when_the_screener_is_between_images(tmp_path, caplog):
    from pneumo.dicom_node.screener import ScreeningWatch
    from pneumo.dicom_node.spool import Spool, now_utc

    spool = Spool(tmp_path, "test")
    watch = ScreeningWatch(spool, None, dt.timedelta(minutes=30),
                           started=now_utc() - dt.timedelta(hours=3))
    try:
        instance = spool.receive(b"image", uid.generate_uid()).instance
        backdate(tmp_path, instance.id, hours=2)
        with caplog.at_level(logging.ERROR, "pneumo.dicom_node"):
            watch.look()
    finally:
        watch.close()
        spool.close()
    assert f"(oldest: {instance.tag}, 2 h); the screener is between images" in caplog.text
    assert "more than 30 min after they arrived" in caplog.text


def test_a_backlog_from_before_the_start_is_overdue_only_once_it_waited_since_the_start(
        tmp_path, caplog):
    """Images that arrived while the node was down wait from its start, not from their
    arrival: the first look after a restart names none of them, though they arrived
    hours ago and the screener is working; still waiting an hour after the start, they
    are named, with the line saying they were there at the start."""
    from pneumo.dicom_node.screener import ScreeningWatch
    from pneumo.dicom_node.spool import Spool, now_utc

    caplog.set_level(logging.ERROR, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    instances = [spool.receive(b"image %d" % n, uid.generate_uid()).instance
                 for n in range(2)]
    backdate(tmp_path, instances[0].id, hours=3)
    backdate(tmp_path, instances[1].id, hours=2.5)
    just_started = ScreeningWatch(spool, None, dt.timedelta(hours=1))
    running = ScreeningWatch(spool, None, dt.timedelta(hours=1),
                             started=now_utc() - dt.timedelta(hours=2))
    try:
        just_started.look()
        assert caplog.records == []
        running.look()
    finally:
        just_started.close()
        running.close()
        spool.close()
    line, = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"2 instance(s) still not screened more than 1 h after they "
                           f"arrived (oldest: {instances[0].tag}, 3 h, already waiting when "
                           "the node started 2 h ago); the screener is between images")


# -- errors ---------------------------------------------------------------------------

def one_line_error(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode == 2, run
    assert run.stderr.startswith("pneumo dicom-spool: error:"), run.stderr
    assert message in run.stderr and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr


def test_no_spool_is_one_line_and_nothing_is_created(tmp_path):
    one_line_error(dicom_spool(tmp_path, "status"), "no DICOM node spool in")
    assert not (tmp_path / "dicom-node").exists()


@pytest.mark.parametrize("arguments, message", [
    (["status", "--overdue-after", "soon"], "--overdue-after 'soon': expected a span"),
    (["purge", "--results-older-than", "0d"], "--results-older-than '0d': expected a span"),
    (["status", "--limit", "-1"], "--limit -1: expected 0 or more"),
    (["status", "--overdue-after", "99999999999w"], "--overdue-after '99999999999w': expected"),
    (["purge", "--results-older-than", "9" * 5000 + "d"], "expected a span"),
])
def test_wrong_arguments_are_one_line(filled, arguments, message):
    one_line_error(dicom_spool(filled.data_dir, *arguments), message)


def test_the_nodes_overdue_threshold_is_checked_before_the_model_loads(capsys):
    from pneumo.cli import main

    assert main(["dicom-listen", "--results-to", "PACS@127.0.0.1:104",
                 "--overdue-after", "an hour"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pneumo dicom-listen: error: --overdue-after 'an hour'")
    assert "Traceback" not in error


def test_a_database_that_is_not_a_spool_is_one_line(tmp_path):
    folder = tmp_path / "dicom-node"
    folder.mkdir()
    (folder / "queue.sqlite3").write_bytes(b"not a database at all" * 100)
    one_line_error(dicom_spool(tmp_path, "status"), "is not a spool database")


def test_a_spool_of_a_newer_pneumo_is_refused(filled):
    with database(filled.data_dir) as db:
        db.execute("PRAGMA user_version = 99")
    one_line_error(dicom_spool(filled.data_dir, "retry"), "upgrade pneumo")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a folder's owner needs root")
def test_another_users_spool_is_refused(filled):
    os.chown(filled.data_dir / "dicom-node", 65534, -1)
    one_line_error(dicom_spool(filled.data_dir, "status"), "run pneumo dicom-spool as the "
                                                           "node's user")


def test_a_busy_database_is_reported_not_waited_on_forever(filled, monkeypatch):
    """In this process (the wait is shortened): a node holding a write transaction."""
    from pneumo.dicom_node import admin

    monkeypatch.setattr(admin, "BUSY_TIMEOUT", 0.2)
    with database(filled.data_dir) as db:
        db.execute("BEGIN IMMEDIATE")
        with admin.SpoolAdmin(filled.data_dir) as spool:
            assert spool.status().states["failed"] == 1  # reading never waits (WAL)
            with pytest.raises(admin.SpoolError, match="stayed busy for 0 s"):
                spool.retry()
        db.execute("ROLLBACK")


def test_spans_and_ages():
    from pneumo.dicom_node.spool import describe_age
    from pneumo.spans import parse_span

    assert parse_span("90s", "x") == dt.timedelta(seconds=90)
    assert parse_span(" 7D ", "x") == dt.timedelta(days=7)
    assert parse_span("2w", "x") == dt.timedelta(weeks=2)
    assert parse_span("36500d", "x") == dt.timedelta(days=36500)
    for wrong in ("", "1", "h", "1.5h", "-1h", "1y", "0h", "36501d", "5300w", "99999999999w",
                  "9" * 5000 + "s"):
        with pytest.raises(ValueError):
            parse_span(wrong, "--x")
    assert [describe_age(s) for s in (0, 59, 60, 3600, 3660, 86400, 90000)] == \
        ["0 s", "59 s", "1 min", "1 h", "1 h 1 min", "1 d", "1 d 1 h"]


def test_retry_promises_no_sooner_than_the_node_looks():
    """``retry`` says a running node takes its rows up within PICKED_UP_WITHIN seconds:
    the sender's and the screener's longest idle waits."""
    from pneumo.dicom_node import admin, screener, sender

    assert sender.IDLE_CHECK <= admin.PICKED_UP_WITHIN
    assert screener.IDLE_CHECK <= admin.PICKED_UP_WITHIN
