"""Faults: the daemon SIGKILLed and restarted while clients are attached and a restart is in flight.

What must hold: the clients register again with the new daemon, the journal
stays readable (a torn last line is skipped and nothing written after it is
lost), no command runs twice, and the restart budget counts what the killed
daemon did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fault_helpers import (
    REPO,
    journal,
    metric,
    metrics_url,
    start_daemon,
    wait_for_host_polls,
    wait_until,
    write_config,
)

from tests.factories import finding
from watchdog.control.requests import ControlRequester
from watchdog.policy.engine import SEND, Decision, JobRef, Policy
from watchdog.policy.journal import Journal, ReadStats, decision_entry, ledger_from
from watchdog.policy.rules import RESTART, LadderStep

pytest_plugins = ["control_fixtures"]

TORN = b'{"type":"decision","wall":17'
"""What SIGKILL in the middle of a journal write leaves: a line without its end."""


# --- the journal and the ledger, one layer at a time -----------------------------------------


def test_entry_appended_after_a_torn_line_is_not_lost(tmp_path: Path) -> None:
    """The next daemon's first entry gets a line of its own, not glued to the torn one."""
    Journal(tmp_path).append({"type": "note", "n": 1})
    with (tmp_path / "journal.jsonl").open("ab") as stream:
        stream.write(TORN)
    restarted = Journal(tmp_path)
    assert restarted.append({"type": "note", "n": 2})
    assert restarted.append({"type": "note", "n": 3})
    stats = ReadStats()
    assert [entry["n"] for entry in restarted.read(stats)] == [1, 2, 3]
    assert stats.skipped_lines == 1
    assert TORN in (tmp_path / "journal.jsonl").read_bytes().split(b"\n")


def test_entry_after_a_failed_write_starts_a_new_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write (disk full mid-line) is reported; the next entry is whole and readable."""
    journal_ = Journal(tmp_path)
    assert journal_.append({"type": "note", "n": 1})
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr("watchdog.policy.journal.os.write", short_write)
    assert journal_.append({"type": "note", "n": 2}) is False
    monkeypatch.undo()
    assert journal_.append({"type": "note", "n": 3})
    assert [entry["n"] for entry in journal_.read()] == [1, 3]
    assert journal_.write_errors == 1


def _sent_restart(wall: float) -> Decision:
    return Decision(
        t=wall,
        wall=wall,
        action=RESTART,
        job="train",
        gpu=0,
        pid=42,
        finding="leak",
        series="process",
        outcome=SEND,
        reason="ladder",
    )


def test_unanswered_command_holds_its_job_after_a_restart() -> None:
    """A send with no result keeps the job in flight for the command timeout, and counts."""
    entries = [decision_entry(_sent_restart(1000.0))]
    ledger = ledger_from(iter(entries), unanswered_for_s=600.0)
    assert ledger.in_flight("train", 1010.0) == RESTART
    assert ledger.in_flight("train", 1600.0) is None  # the old daemon would have given up
    assert ledger.restarts_since("train", 0.0) == 1
    answered = [
        *entries,
        {
            "type": "result",
            "wall": 1005.0,
            "action": RESTART,
            "job": "train",
            "pid": 42,
            "ok": True,
            "error": "",
        },
    ]
    assert ledger_from(iter(answered), unanswered_for_s=600.0).in_flight("train", 1010.0) is None


def test_restarted_policy_does_not_send_the_command_again() -> None:
    """With no cooldown and budget left, a finding seen again waits for the unanswered restart."""
    entries = [decision_entry(_sent_restart(1000.0))]
    ledger = ledger_from(iter(entries), unanswered_for_s=600.0)
    ladder = [LadderStep(finding="leak", action=RESTART)]
    policy = Policy(ladder, cooldown_s=0.0, max_restarts=2, restart_window_s=3600.0, ledger=ledger)
    policy.observe(finding(5.0, tto=600.0))

    def jobs(gpu: int, pid: int | None, series: str) -> list[JobRef]:
        return [JobRef("train")]

    assert policy.decide(5.0, 1010.0, jobs) == []
    later = policy.decide(6.0, 1601.0, jobs)  # the command timed out: the job is free again
    assert [(d.action, d.outcome) for d in later] == [(RESTART, SEND)]


# --- the real daemon ------------------------------------------------------------------------


class Client:
    """tests/fault_helpers.py as a training process, its output lines collected."""

    def __init__(
        self, run_dir: Path, job: str, leak_mib_per_s: float, gate: str = "", steps: int = 0
    ) -> None:
        with open(run_dir / f"{job}-{id(self)}.err", "wb") as errors:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "fault_helpers.py"),
                    str(run_dir / "wd.sock"),
                    job,
                    str(leak_mib_per_s),
                    str(run_dir / "ckpt"),
                    gate,
                    str(steps),
                ],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def said(self, prefix: str) -> list[str]:
        """Its output lines that start with ``prefix``."""
        return [line for line in list(self.lines) if line.startswith(prefix)]


def _sends(run_dir: Path) -> list[dict[str, object]]:
    return [e for e in journal(run_dir) if e.get("type") == "decision" and e["outcome"] == SEND]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_daemon_killed_with_a_restart_in_flight(short_dir: Path) -> None:
    """SIGKILL while a checkpoint_and_restart runs: re-registration, one run, journal and budget."""
    run_dir = short_dir
    config = write_config(
        run_dir,
        "checkpoint_and_restart",
        "cooldown_s = 0.0\nmax_restarts = 2\nrestart_window_s = 3600.0",
    )
    gate = run_dir / "gate"
    processes: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    try:
        first = start_daemon(run_dir, config, "d1")
        processes.append(first)
        client = Client(run_dir, "kill-job", 32.0, str(gate))
        processes.append(client.proc)
        wait_until(lambda: client.said("registered 1"), 30, "the client to register")
        wait_until(lambda: _sends(run_dir), 90, "the first daemon to send the restart")
        wait_until(lambda: client.said("checkpoint begin"), 30, "the client to start it")

        # The restart is in flight: the client checkpoints (held at the gate) when the daemon
        # dies, in the middle of a journal line.
        first.kill()
        first.wait(10)
        with (run_dir / "state" / "journal.jsonl").open("ab") as stream:
            stream.write(TORN)
        second = start_daemon(run_dir, config, "d2")
        processes.append(second)
        assert '"skipped_lines": 1' in (run_dir / "d2.log").read_text()

        pid = client.proc.pid
        with ControlRequester(str(run_dir / "wd.sock")) as requester:
            wait_until(
                lambda: [c for c in requester.list_clients() if c["pid"] == pid],
                30,
                "the client to register with the new daemon",
            )
        url = metrics_url(run_dir / "d2.log")
        budget = metric(url, "gpu_watchdog_restart_budget_remaining", 'training_job="kill-job"')
        assert budget == 1.0  # two allowed, one spent by the killed daemon

        # The new daemon sees the same leak (the client still leaks while it checkpoints) ...
        def raised_again() -> bool:
            lines = (run_dir / "state" / "journal.jsonl").read_bytes().split(b"\n")
            after = lines[lines.index(TORN) + 1 :] if TORN in lines else []
            entries = [json.loads(line) for line in after if line.strip()]
            return any(
                e.get("type") == "finding" and e.get("state") == "raised" and e.get("pid") == pid
                for e in entries
            )

        wait_until(raised_again, 90, "the new daemon to see the leak (journalled)")
        # ... and, for several more polls, must not send the restart in flight again.
        wait_for_host_polls(url, 8)
        assert len(_sends(run_dir)) == 1

        gate.touch()  # the checkpoint completes; its result went to the dead daemon's connection
        assert client.proc.wait(30) == 75
        [end] = client.said("checkpoint end")
        step = int(end.split()[-1])
        assert len(client.said("checkpoint begin")) == 1

        # The launcher starts the job again: it resumes and gets no command.
        rerun = Client(run_dir, "kill-job", 0.0, steps=step + 20)
        processes.append(rerun.proc)
        assert rerun.proc.wait(60) == 0
        wait_until(lambda: rerun.said("done"), 10, "the rerun's last line")
        assert f"resumed {step}" in rerun.lines
        assert rerun.said("checkpoint") == []

        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert len(_sends(run_dir)) == 1
    stats = ReadStats()
    list(Journal(run_dir / "state").read(stats))
    assert stats.skipped_lines == 1  # the torn line, and nothing the new daemon wrote
