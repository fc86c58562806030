"""Real daemons and training processes for the fault tests (tests/test_fault_*.py).

As a script it is a training process for those tests:

    python tests/fault_helpers.py SOCKET JOB LEAK_MIB_PER_S CHECKPOINT_DIR [GATE] [STEPS]

It prints one line per event, flushed: ``pid N``, ``registered G`` (each
time the link registers, G its generation), ``resumed S``, ``checkpoint
begin S`` / ``checkpoint end S`` and ``done S``. A background thread leaks
LEAK_MIB_PER_S of host memory (a DataLoader-style leak that goes on while
the training thread is busy). A checkpoint waits until the file GATE exists,
so a test can hold a command in flight. ``checkpoint_and_restart`` exits 75.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Imported up front (not through the lazy ``watchdog.attach``), so that a process forked
# from one that imported this module attaches within milliseconds.
from watchdog.client import attach

MIB = 1 << 20
LEAK_CAP = 3 << 30
"""The leak stops here: a test must never take the host down."""
REPO = Path(__file__).resolve().parent.parent

CONFIG = """\
# Detection in seconds rather than minutes, on a simulated idle GPU plus the
# real host memory of the registered processes (as the demo does).
[sources]
device_interval_s = 0.5
host_interval_s = 0.25

[detection]
bucket_s = 1.0
warmup_s = 2.0
leak_min_rise_bytes = 33554432
leak_min_rise_ratio = 0.0
leak_extrapolation_short = 100.0
leak_extrapolation = 100.0
leak_clear_after_s = 120.0
leak_confirm_s = 0.0
near_oom_horizon_s = 0.0
{detection}

[policy]
{policy}

[[policy.ladder]]
finding = "leak"
action = "{action}"
"""


def write_config(run_dir: Path, action: str, policy: str, detection: str = "") -> Path:
    """The daemon's config in ``run_dir``: a fast ladder of one rung, leak -> ``action``."""
    path = run_dir / "config.toml"
    path.write_text(CONFIG.format(action=action, policy=policy, detection=detection))
    return path


def start_daemon(run_dir: Path, config: Path, name: str = "daemon") -> subprocess.Popen[bytes]:
    """``gpu-watchdog run`` on a simulated idle GPU; socket ``run_dir/wd.sock``, state ``state``.

    Returns once the control socket is bound. Its log is ``run_dir/<name>.log``.
    """
    trace = run_dir / "idle.csv"
    trace.write_text(
        "t,gpu,pid,used_bytes,total_bytes\n0,0,,0,85899345920\n86400,0,,0,85899345920\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    env |= {
        "GPU_WATCHDOG_SOCKET": str(run_dir / "wd.sock"),
        "GPU_WATCHDOG_DAEMON_STATE_DIR": str(run_dir / "state"),
        "GPU_WATCHDOG_DAEMON_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = run_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "watchdog",
                "run",
                "--simulate",
                str(trace),
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=REPO,
        )
    wait_until(
        lambda: daemon.poll() is not None or "daemon_started" in log_path.read_text(),
        60,
        "the daemon to start",
    )
    if daemon.poll() is not None:
        raise RuntimeError(f"the daemon exited: {log_path.read_text()[-2000:]}")
    return daemon


def journal(run_dir: Path) -> list[dict[str, Any]]:
    """Every whole, parseable line of the daemon's journal, in order."""
    path = run_dir / "state" / "journal.jsonl"
    entries = []
    for raw in path.read_bytes().split(b"\n") if path.exists() else []:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def metric(url: str, name: str, labels: str) -> float | None:
    """The value of ``name{labels}`` at the /metrics ``url``; None when absent."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def metrics_url(log: Path) -> str:
    """The /metrics URL a daemon announced in its log."""
    found = re.search(r"metrics on (https?://\S+/metrics)", log.read_text())
    if found is None:
        raise RuntimeError(f"no metrics URL in {log}: {log.read_text()[-2000:]}")
    return found.group(1)


def wait_for_host_polls(url: str, count: int) -> None:
    """Wait until the daemon at ``url`` has polled host memory ``count`` more times.

    How a test watches for something that must NOT happen: over polls, not seconds.
    """
    labels = 'collector="host",result="success"'
    start = metric(url, "gpu_watchdog_collector_polls_total", labels) or 0.0
    wait_until(
        lambda: (metric(url, "gpu_watchdog_collector_polls_total", labels) or 0.0) >= start + count,
        30,
        f"{count} more host polls",
    )


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``predicate`` until it is truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


# --- the training process -------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, flush=True)


def _leak(mib_per_s: float, stop: threading.Event) -> None:
    kept: list[bytes] = []
    chunk = int(mib_per_s * MIB / 10)
    while chunk and not stop.wait(0.1) and len(kept) * chunk < LEAK_CAP:
        kept.append(b"\1" * chunk)  # filled, so the pages are resident


def run_client(
    socket_path: str,
    job: str,
    leak_mib_per_s: float,
    checkpoint_dir: str,
    gate: str = "",
    steps: int = 0,
) -> None:
    """Train (forever when ``steps`` is 0) attached to the daemon at ``socket_path``."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)

    def checkpoint(step: int) -> dict[str, Any]:
        _say(f"checkpoint begin {step}")
        while gate and not Path(gate).exists():
            time.sleep(0.02)
        path = directory / f"step-{step:09d}"
        path.write_text(str(step))
        _say(f"checkpoint end {step}")
        return {"path": str(path)}

    def resume() -> int | None:
        saved = sorted(directory.glob("step-*"))
        return int(saved[-1].read_text()) if saved else None

    stop = threading.Event()
    threading.Thread(target=_leak, args=(leak_mib_per_s, stop), daemon=True).start()
    _say(f"pid {os.getpid()}")
    wd = attach(
        job=job,
        socket_path=socket_path,
        checkpoint=checkpoint,
        resume=resume,
        heartbeat_s=0.2,
        restart_exit="raise",
    )
    _say(f"resumed {wd.resume()}")
    generation = 0
    while not steps or wd.step_count < steps:
        wd.step()
        if wd.link.connected.is_set() and wd.link.generation != generation:
            generation = wd.link.generation
            _say(f"registered {generation}")
        time.sleep(0.02)
    _say(f"done {wd.step_count}")
    stop.set()
    wd.close()


def main() -> None:
    args = sys.argv[1:]
    run_client(
        args[0],
        args[1],
        float(args[2]),
        args[3],
        args[4] if len(args) > 4 else "",
        int(args[5]) if len(args) > 5 else 0,
    )


if __name__ == "__main__":
    main()
