"""Helpers shared by the control-channel tests: short socket paths, raw peers, waiting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from watchdog.control.protocol import FrameDecoder, encode, recv_message

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what or predicate}")


class RawPeer:
    """A hand-driven connection speaking (or abusing) the protocol."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.decoder = FrameDecoder(16 << 20)
        self.pending: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def recv(self, timeout_s: float = 5.0) -> dict[str, Any]:
        return recv_message(self.sock, self.decoder, self.pending, timeout_s)

    def register(self, **fields: Any) -> dict[str, Any]:
        self.send({"type": "register", "job": "raw", **fields})
        return self.recv()

    def closed_by_server(self, timeout_s: float = 5.0) -> bool:
        """True once the server has closed this connection."""
        self.sock.settimeout(timeout_s)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (TimeoutError, OSError):
            return False

    def close(self) -> None:
        self.sock.close()


def start_harness(
    path: str, heartbeat_s: float = 0.2, read_timeout_s: float = 1.0
) -> subprocess.Popen[str]:
    """Run tests/control_harness.py (a ControlServer in its own process); wait until ready.

    Its log goes to ``<path>.log``.
    """
    log = open(f"{path}.log", "a")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TESTS / "control_harness.py"),
            path,
            str(heartbeat_s),
            str(read_timeout_s),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        pytest.fail(f"control harness did not start: {Path(f'{path}.log').read_text()}")
    return proc
