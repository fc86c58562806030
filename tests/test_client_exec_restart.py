"""Restart mode ``exec``: the process re-executes its own command line and resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("torch")

from watchdog.testing import FakeDaemon


@pytest.mark.slow
def test_exec_restart_keeps_the_pid_and_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    """checkpoint_and_restart with exec: same pid, a new image resumed at the checkpoint, done."""
    with FakeDaemon() as daemon:
        env = {**os.environ, "GPU_WATCHDOG_RESTART_MODE": "exec", "PYTHONUNBUFFERED": "1"}
        loop = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "client_loop.py"),
                daemon.socket_path,
                str(tmp_path / "ckpt"),
                "400",
                "0.01",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert loop.stdout is not None
            assert loop.stdout.readline().strip() == "resumed 0"
            daemon.wait_for_client(loop.pid)
            [result] = daemon.send("checkpoint_and_restart", target=loop.pid, timeout_s=20)
            assert result.ok, result.error
            saved_at = int(result.details["step"])
            output, errors = loop.communicate(timeout=60)
        finally:
            loop.kill()
    assert loop.returncode == 0, output + errors
    assert f"resumed {saved_at}" in output  # the new image picked up the checkpoint
    assert "done 400" in output
    # One process from start to end: exec replaced its image, the pid and pipe stayed.
    assert "re-executing" in errors
