"""The daemon under a stand-in systemd: READY only once it serves, WATCHDOG pings, STOPPING."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path (AF_UNIX paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wd-sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _messages(sock: socket.socket, until: float) -> Iterator[dict[str, str]]:
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            return
        yield dict(line.split("=", 1) for line in data.split("\n") if "=" in line)


def test_daemon_notifies_ready_pings_and_stopping(short_dir: Path) -> None:
    """READY=1 once /metrics and the socket are up; then WATCHDOG=1 pings; STOPPING=1 at exit."""
    notify_path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    port = free_port()
    control = short_dir / "run" / "watchdog.sock"
    config = short_dir / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{short_dir / "state"}"\n[control]\nsocket_path = "{control}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_WATCHDOG_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="2000000")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchdog",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--simulate",
            "healthy",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = next(
            (m for m in _messages(sock, time.monotonic() + 30) if m.get("READY") == "1"), None
        )
        assert ready is not None, "no READY=1 within 30 s"
        # READY means served: both listeners answer at once.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
        assert control.is_socket()
        pings = [m for m in _messages(sock, time.monotonic() + 4) if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 2, "WatchdogSec=2 needs a ping at least every second"
        process.send_signal(signal.SIGTERM)
        stopping = (m.get("STOPPING") == "1" for m in _messages(sock, time.monotonic() + 15))
        assert any(stopping), "no STOPPING=1 on SIGTERM"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        sock.close()


def test_daemon_stopped_by_sigstop_sends_no_pings(short_dir: Path) -> None:
    """A frozen daemon sends no WATCHDOG=1, which is what makes systemd abort and restart it."""
    notify_path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    config = short_dir / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{short_dir / "state"}"\n'
        f'[control]\nsocket_path = "{short_dir / "run" / "watchdog.sock"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_WATCHDOG_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="2000000")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchdog",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--simulate",
            "healthy",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert any(m.get("WATCHDOG") == "1" for m in _messages(sock, time.monotonic() + 30))
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        list(_messages(sock, time.monotonic() + 0.2))  # drain what was sent before the stop
        assert not [m for m in _messages(sock, time.monotonic() + 3) if m.get("WATCHDOG")]
        process.send_signal(signal.SIGCONT)
        assert any(m.get("WATCHDOG") == "1" for m in _messages(sock, time.monotonic() + 10))
    finally:
        process.kill()
        process.wait(timeout=10)
        sock.close()
