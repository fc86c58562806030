"""``gpu-watchdog history``: reading the journal back for a person, filtered by job and time."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from watchdog.commands.history import parse_since
from watchdog.errors import UsageError
from watchdog.policy.journal import Journal


def _history(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "watchdog", "history", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def _fill(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    now = time.time()
    journal.append(
        {
            "type": "finding",
            "wall": now - 7200,
            "kind": "leak",
            "state": "raised",
            "gpu": 0,
            "pid": 7,
            "message": "old leak",
        }
    )
    journal.append(
        {
            "type": "decision",
            "wall": now - 60,
            "action": "dump_snapshot",
            "outcome": "send",
            "job": "a",
            "gpu": 0,
            "pid": 7,
            "reason": "ladder",
        }
    )
    journal.append(
        {
            "type": "decision",
            "wall": now - 30,
            "action": "empty_cache",
            "outcome": "dry_run",
            "job": "b",
            "gpu": 1,
            "pid": 8,
            "reason": "ladder",
        }
    )
    journal.append(
        {
            "type": "result",
            "wall": now - 20,
            "action": "dump_snapshot",
            "job": "a",
            "pid": 7,
            "ok": True,
        }
    )


def test_history_filters_by_job_and_time(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """--job keeps one job's entries and --since drops the older ones."""
    _fill(tmp_path)
    everything = _history(tmp_path, env=cli_env)
    assert everything.returncode == 0, everything.stderr
    assert len(everything.stdout.splitlines()) == 4
    job_a = _history(tmp_path, "--job", "a", env=cli_env).stdout.splitlines()
    assert len(job_a) == 3  # its decision and result, and the finding on its pid 7
    assert "old leak" in job_a[0]
    assert all("job a" in line for line in job_a[1:])
    assert len(_history(tmp_path, "--job", "b", env=cli_env).stdout.splitlines()) == 1
    recent = _history(tmp_path, "--since", "1h", "--json", env=cli_env).stdout.splitlines()
    assert [json.loads(line)["type"] for line in recent] == ["decision", "decision", "result"]
    # A filter that leaves nothing says so, on stderr: stdout stays entries alone.
    nothing = _history(tmp_path, "--job", "c", "--since", "1m", "--json", env=cli_env)
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr.strip() == f"no journal entries in {tmp_path} match --job c --since 1m"


def test_history_of_a_torn_journal_says_what_it_skipped(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A torn line is skipped and reported, the rest is printed."""
    _fill(tmp_path)
    with (tmp_path / "journal.jsonl").open("a") as stream:
        stream.write('{"type": "decis')
    result = _history(tmp_path, env=cli_env)
    assert result.returncode == 0
    assert "(1 unreadable line(s) skipped)" in result.stderr
    as_json = _history(tmp_path, "--json", env=cli_env)
    assert all(json.loads(line) for line in as_json.stdout.splitlines())  # JSON lines alone


@pytest.mark.parametrize("wall", ['"2024-01-01"', "1e20", "null", "[1]"])
def test_a_hand_edited_line_is_skipped_not_a_traceback(
    tmp_path: Path, cli_env: dict[str, str], wall: str
) -> None:
    """JSON whose fields have the wrong type is skipped and counted like a torn line."""
    _fill(tmp_path)
    with (tmp_path / "journal.jsonl").open("a") as stream:
        stream.write(f'{{"type": "finding", "wall": {wall}, "gpu": 0}}\n')
    result = _history(tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
    assert "(1 unreadable line(s) skipped)" in result.stderr


def test_a_line_nested_too_deep_is_skipped_by_history_and_the_daemon(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """JSON nested past the parser's recursion limit is a corrupt line like any other."""
    _fill(tmp_path)
    with (tmp_path / "journal.jsonl").open("a") as stream:
        stream.write("[" * 200_000 + "]" * 200_000 + "\n")
    result = _history(tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
    assert "(1 unreadable line(s) skipped)" in result.stderr
    assert len(list(Journal(tmp_path).read())) == 4  # what the daemon reads at start


def test_a_finding_with_a_hand_edited_pid_is_no_job_s(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """--job over a finding whose pid is not a number: not that job's, and no traceback."""
    _fill(tmp_path)
    with (tmp_path / "journal.jsonl").open("a") as stream:
        stream.write(f'{{"type": "finding", "wall": {time.time()}, "gpu": 0, "pid": [7, 8]}}\n')
    result = _history(tmp_path, "--job", "a", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_what_a_client_wrote_is_escaped_on_one_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A job name or error text with a newline or an escape sequence stays one line."""
    _fill(tmp_path)
    Journal(tmp_path).append(
        {
            "type": "result",
            "wall": time.time(),
            "action": "empty_cache",
            "job": "evil\n\x1b[31mRED",
            "pid": 7,
            "ok": False,
            "error": "boom\r\nX",
        }
    )
    result = _history(tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert len(result.stdout.splitlines()) == 5
    assert "job evil\\n\\x1b[31mRED" in last
    assert last.endswith("error: boom\\r\\nX")


def test_history_errors_are_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A missing state directory and a bad --since are one-line errors with exit 2."""
    missing = _history(tmp_path / "nope", env=cli_env)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    wrong = _history(a_file, env=cli_env)
    assert wrong.returncode == 2
    assert "is not a directory" in wrong.stderr
    bad = _history(tmp_path, "--since", "yesterday-ish", env=cli_env)
    assert bad.returncode == 2
    assert "--since: expected a duration" in bad.stderr
    empty = _history(tmp_path, "--since", "", env=cli_env)  # once read as no filter at all
    assert empty.returncode == 2
    assert "--since: expected a duration" in empty.stderr


def _unsearchable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Entries in ``directory`` cannot be looked at, as for a reader outside a 0750
    directory's group (the tests run as root, whom permissions do not stop)."""
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).startswith(f"{directory}/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)


def test_a_journal_the_reader_may_not_search_is_an_error_not_an_empty_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """history says it cannot read; the daemon starts with an empty ledger, counted."""
    from watchdog.cli import main
    from watchdog.policy.journal import ReadStats

    state = tmp_path / "state"
    state.mkdir()
    _fill(state)
    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv("GPU_WATCHDOG_CONFIG", str(config))
    _unsearchable(monkeypatch, state)
    assert main(["history", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    reason = f"cannot read the journal in {state}: Permission denied"
    assert err == f"gpu-watchdog history: error: {reason}\n"
    stats = ReadStats()
    assert list(Journal(state).read(stats)) == []
    assert stats.unreadable_files == 1


def test_a_journal_file_that_cannot_be_read_fails_history_after_the_rest(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A rotated file that cannot be read (here a directory in its place): the entries of the
    others are printed, and history exits 1 saying the history is not whole."""
    _fill(tmp_path)
    (tmp_path / "journal.jsonl.1").mkdir()
    result = _history(tmp_path, env=cli_env)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 4
    assert f"1 journal file(s) in {tmp_path} could not be read" in result.stderr


def test_parse_since() -> None:
    """Durations count back from now; ISO times without a zone are UTC."""
    assert parse_since("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("2026-01-01T00:00:00", 0) == 1767225600.0
    with pytest.raises(UsageError):
        parse_since("soon", 0)


def test_commands_sent_by_hand_are_journalled(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`send` by hand is in `history`, with who sent it; a quiet daemon's journal is empty."""
    import signal
    import threading

    from control_helpers import wait_for

    import watchdog
    from tests.conftest import free_port

    state = tmp_path / "state"
    socket_path = cli_env["GPU_WATCHDOG_SOCKET"]
    daemon = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "watchdog",
            "run",
            "--simulate",
            "healthy",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    stop = threading.Event()
    try:
        wait_for(lambda: Path(socket_path).exists(), timeout_s=30, what="the daemon's socket")
        quiet = _history(state, env=cli_env)
        assert quiet.returncode == 0, quiet.stderr
        assert (quiet.stdout, quiet.stderr.strip()) == ("", f"no journal entries in {state}")
        wd = watchdog.attach(
            socket_path=socket_path, job="by-hand", checkpoint=lambda step: {"saved": step}
        )

        def train() -> None:
            while not stop.is_set():
                wd.step()
                stop.wait(0.005)

        threading.Thread(target=train, daemon=True).start()
        assert wd.link.connected.wait(10), "the client never registered"
        sent = subprocess.run(
            [PYTHON, "-m", "watchdog", "send", "by-hand", "checkpoint"],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        lines = _history(state, "--job", "by-hand", env=cli_env).stdout.splitlines()
        uid = f"(uid {os.getuid()})"
        assert any(
            "by hand" in line and "checkpoint" in line and f"sent {uid}" in line for line in lines
        ), lines
        assert any("by hand" in line and f"ok {uid}" in line for line in lines), lines
    finally:
        stop.set()
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=20)
