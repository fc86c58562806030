"""Fixtures of the control-channel tests, loaded with ``pytest_plugins = ["control_fixtures"]``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import CapturingLogger

from watchdog.config import ControlSettings
from watchdog.control import ControlServer


@pytest.fixture
def handles() -> Iterator[list[Any]]:
    """Client handles a test made (append them); each is closed when the test ends."""
    made: list[Any] = []
    yield made
    for handle in made:
        handle.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths must stay under 104 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_factory(short_dir: Path) -> Iterator[Callable[..., ControlServer]]:
    """Start in-process ControlServers on a socket in ``short_dir``; stopped after the test."""
    started: list[ControlServer] = []

    def make(**overrides: Any) -> ControlServer:
        values = {
            "socket_path": str(short_dir / "run" / "wd.sock"),
            "heartbeat_s": 0.1,
            "read_timeout_s": 1.0,
            **overrides,
        }
        capture = CapturingLogger()
        server = ControlServer(
            ControlSettings(**values), logger=structlog.wrap_logger(capture, processors=[])
        )
        server.log_calls = capture.calls  # type: ignore[attr-defined]
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
