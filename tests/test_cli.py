"""The command line end to end, in subprocesses: run, status, record, and bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, free_port
from watchdog.errors import EXIT_NVML_UNAVAILABLE, EXIT_USAGE
from watchdog.trace import TraceWriter, read_trace

# Makes `import torch` fail in the child, as on a host without the extra installed.
NO_TORCH = (
    "import sys; sys.modules['torch'] = None; "
    "from watchdog.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _scrape(url: str, timeout: float = 15, until: str = "") -> str:
    """The body at ``url`` once it answers (and, with ``until``, once the body holds it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read().decode()
            if until in body or time.monotonic() > deadline:
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_run_simulated_serves_labelled_metrics_and_stops_on_sigterm(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """run --simulate serves source="simulated" metrics, logs JSON lines, and exits 0 on SIGTERM."""
    port = free_port()
    process = subprocess.Popen(
        [
            PYTHON,
            "-c",
            NO_TORCH,
            "run",
            "--simulate",
            "leak",
            "--speed",
            "60",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        # /metrics answers from the moment the port is bound, the first poll a moment later.
        used = 'gpu_watchdog_gpu_memory_used_bytes{gpu="0",source="simulated"}'
        body = _scrape(f"http://127.0.0.1:{port}/metrics", until=used)
        assert used in body
        assert "gpu_watchdog_build_info{" in body
        # The alerts tell a restart loop, and counts since a restart, by the start time.
        assert re.search(r"^process_start_time_seconds \d", body, re.MULTILINE)
        assert 'source="simulated"' in body
        # The findings drawn from simulated figures say so too: alerts on them carry it.
        body = _scrape(f"http://127.0.0.1:{port}/metrics", until="gpu_watchdog_finding_active{")
        findings = re.findall(r"^gpu_watchdog_finding_active\{.*$", body, re.MULTILINE)
        assert findings
        assert all('source="simulated"' in line for line in findings)
        assert _scrape(f"http://127.0.0.1:{port}/healthz").strip() == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "SIMULATED GPU" in stderr
    documented = (REPO / "docs" / "metrics.md").read_text()
    for name in re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE):
        assert f"`{name}`" in documented, f"{name} is exported but not in docs/metrics.md"
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert any(e["event"] == "watching" for e in events)
    assert events[-1]["event"] == "daemon_stopping"
    assert all(e["source"] == "simulated" for e in events), "every log line names its source"


def test_run_without_nvml_exits_3_with_one_line_and_never_simulates(
    cli_env: dict[str, str],
) -> None:
    """With no NVML the daemon says so in one line and exits 3, with no silent simulation."""
    result = _cli("run", "--listen", f"127.0.0.1:{free_port()}", env=cli_env)
    assert result.returncode == EXIT_NVML_UNAVAILABLE
    assert result.stderr.strip().count("\n") == 0
    assert "NVML unavailable" in result.stderr
    assert "simulated" not in (result.stdout + result.stderr).lower()


def test_port_in_use_is_one_line_error(cli_env: dict[str, str]) -> None:
    """A metrics port already taken is reported in one line with exit 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("run", "--simulate", "healthy", "--listen", f"127.0.0.1:{port}", env=cli_env)
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "--listen", "nowhere"), "--listen: expected HOST:PORT"),
        (("run", "--simulate", "no-such"), "neither a trace file nor a scenario"),
        (("run", "--config", "/nonexistent.toml"), "config file not found"),
        (("run", "--bogus"), "unrecognized arguments: --bogus"),
        (("record",), "the following arguments are required: --out"),
        (
            ("record", "--out", "/x.csv", "--duration", "-1", "--simulate", "leak"),
            "--duration must be > 0",
        ),
        (("record", "--out", "/nonexistent-dir/x.csv", "--simulate", "leak"), "cannot write"),
        (("status", "--simulate", "/dev/null"), "empty file"),
        # An empty shell variable must not make a simulated run a real one.
        (("status", "--simulate", ""), "got an empty string"),
        (("run", "--simulate", ""), "got an empty string"),
        (("frobnicate",), "invalid choice"),
        # Once "the following arguments are required: COMMAND", naming no option at all.
        (("--bogus",), "unrecognized arguments: --bogus"),
        (("check-config", "/nonexistent.toml"), "config file not found"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    cli_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    """Every wrong argument or missing file gives one clear line on stderr and exit 2."""
    result = _cli(*args, env=cli_env)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_status_fits_80_columns(cli_env: dict[str, str]) -> None:
    """The status table is labelled simulated, lists GPU and processes, and fits a terminal."""
    result = _cli("status", "--simulate", "two-jobs-one-leak", env=cli_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "SIMULATED GPU (not real hardware)"
    assert any("Simulated GPU" in line for line in lines)
    assert sum("4000001" in line or "4000002" in line for line in lines) == 2
    assert max(len(line) for line in lines) <= 80


def test_record_then_simulate_round_trip(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A recording of a simulated trace plays back as the same samples."""
    original = tmp_path / "original.csv"
    with original.open("w") as stream:
        writer = TraceWriter(stream)
        for t in range(200):
            writer.device(t, 0, 1000 + t * 10, 10_000)
            writer.device(t, 1, 5000 - t, 10_000)
            writer.process(t, 0, 4000001, 500 + t)
    source_rows = {(r.gpu, r.pid, r.used_bytes, r.total_bytes): r.t for r in read_trace(original)}
    config = tmp_path / "fast.toml"
    config.write_text("[sources]\ndevice_interval_s = 0.05\nprocess_interval_s = 0.1\n")
    recorded = tmp_path / "recorded.csv"
    result = _cli(
        "record",
        "--out",
        str(recorded),
        "--duration",
        "1.5",
        "--config",
        str(config),
        "--simulate",
        str(original),
        "--speed",
        "100",
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    rows = list(read_trace(recorded))
    assert len(rows) > 20
    first_t = source_rows[(rows[0].gpu, rows[0].pid, rows[0].used_bytes, rows[0].total_bytes)]
    for row in rows:
        key = (row.gpu, row.pid, row.used_bytes, row.total_bytes)
        assert key in source_rows, f"recorded a sample that was never played: {row}"
        # Recorded time is relative to the first sample, and matches the trace's to a poll.
        assert abs((source_rows[key] - first_t) - row.t) <= 10.0
    replayed = _cli("status", "--simulate", str(recorded), env=cli_env)
    assert replayed.returncode == 0, replayed.stderr


def test_a_recording_that_outlives_its_simulated_trace_replays(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Past the trace's end the simulated GPU repeats its last sample: not recorded twice."""
    config = tmp_path / "fast.toml"
    config.write_text("[sources]\ndevice_interval_s = 0.05\nprocess_interval_s = 0.1\n")
    recorded = tmp_path / "recorded.csv"
    result = _cli(
        "record",
        "--out",
        str(recorded),
        "--duration",
        "1.5",
        "--config",
        str(config),
        "--simulate",
        "leak",
        "--speed",
        "100000",
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    replayed = _cli("replay", str(recorded), env=cli_env)
    assert replayed.returncode == 0, replayed.stderr


def test_record_keeps_an_existing_trace_unless_forced(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A recording is not replaced unasked: one line, exit 2, the file as it was."""
    out = tmp_path / "run.csv"
    out.write_text("keep me\n")
    args = ("record", "--out", str(out), "--duration", "0.3", "--simulate", "leak")
    refused = _cli(*args, env=cli_env)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        f"--out {out}: file exists; remove it or pass --force to overwrite"
    )
    assert out.read_text() == "keep me\n"
    forced = _cli(*args, "--force", env=cli_env)
    assert forced.returncode == 0, forced.stderr
    assert out.read_text().startswith("t,gpu,pid,used_bytes,total_bytes")


def test_record_refuses_a_gzip_name_rather_than_write_plain_text_under_it(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Readers take gzip by its first bytes; a .gz of plain text would mislead everyone else."""
    out = tmp_path / "run.csv.gz"
    refused = _cli(
        "record", "--out", str(out), "--duration", "0.3", "--simulate", "leak", env=cli_env
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        f"--out {out}: record writes plain CSV; name it .csv and gzip it afterwards"
    )
    assert not out.exists()


def test_daemon_modules_never_import_torch(cli_env: dict[str, str]) -> None:
    """Importing every daemon-side module leaves torch unimported."""
    code = (
        "import sys, watchdog.cli, watchdog.commands.run, watchdog.commands.status, "
        "watchdog.commands.record, watchdog.commands.check_config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env)
    assert result.returncode == 0, result.stderr


def test_a_sighup_during_start_up_is_held_and_honoured(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A HUP before the daemon can reload (here: while its sources are built) does not kill it."""
    hup_while_starting = (
        "import os, signal, sys; sys.modules['torch'] = None\n"
        "import watchdog.commands.run as run\n"
        "build = run.build_sources\n"
        "def hup_then_build(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    return build(*args, **kwargs)\n"
        "run.build_sources = hup_then_build\n"
        "from watchdog.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            PYTHON,
            "-c",
            hup_while_starting,
            "run",
            "--simulate",
            "healthy",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        _scrape(f"http://127.0.0.1:{port}/metrics")
        time.sleep(2.0)  # the serving loop reloads at its next tick (1 s)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    events = {e["event"] for e in map(json.loads, filter(None, stdout.splitlines()))}
    assert "config_reloaded" in events


def test_sighup_reloads_config_and_keeps_the_old_one_when_invalid(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGHUP applies a new policy, names what needs a restart, and rejects a bad file safely."""
    config = tmp_path / "config.toml"
    config.write_text("[sources]\ndevice_interval_s = 0.2\n")
    port = free_port()
    process = subprocess.Popen(
        [
            PYTHON,
            "-c",
            NO_TORCH,
            "run",
            "--simulate",
            "healthy",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        _scrape(f"http://127.0.0.1:{port}/metrics")
        config.write_text("[sources]\ndevice_interval_s = 0.5\n[policy]\ndry_run = true\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        config.write_text("[sources]\ndevice_interval_s = -1\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        assert "gpu_watchdog_gpu_memory_used_bytes" in _scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    events = {e["event"]: e for e in map(json.loads, filter(None, stdout.splitlines()))}
    reloaded = events["config_reloaded"]
    assert reloaded["changed"] == ["sources.device_interval_s", "policy.dry_run"]
    assert reloaded["needs_restart"] == ["sources.device_interval_s"]
    rejected = events["config_reload_rejected"]
    assert "sources.device_interval_s must be >= 0.05" in rejected["reason"]


def test_a_command_run_in_this_process_leaves_its_logging_as_it_was(tmp_path: Path) -> None:
    """main() sends a one-shot command's log to stderr, then puts the caller's set-up back
    (a test capturing logs after it, a notebook, would otherwise lose its info lines)."""
    import structlog

    from watchdog.cli import main

    before = structlog.get_config()
    config = tmp_path / "c.toml"
    config.write_text("")
    assert main(["check-config", str(config)]) == 0
    assert structlog.get_config() == before
