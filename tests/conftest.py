"""Shared fixtures."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Path of command ``name``; skip without it, but fail in CI (WATCHDOG_REQUIRE_TOOLS set)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("WATCHDOG_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required here (WATCHDOG_REQUIRE_TOOLS is set) but not on PATH")
        pytest.skip(f"{name} not installed")
    return path


@contextlib.contextmanager
def descriptors_past_select_limit() -> Iterator[None]:
    """Hold over 1,024 descriptors open, so the next ones are past what select() takes.

    The daemon raises its open-file limit to fit its control clients, so any wait
    on a descriptor must work there too. Skips where the hard limit forbids it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard open-file limit ({hard}) is under 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    ballast = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]
    try:
        yield
    finally:
        for fd in ballast:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI in a subprocess: no stray GPU_WATCHDOG_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    # Each daemon a test starts gets its own socket and state, never the system's.
    env["GPU_WATCHDOG_SOCKET"] = str(tmp_path / "run" / "watchdog.sock")
    env["GPU_WATCHDOG_DAEMON_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
