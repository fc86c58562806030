"""The public FakeDaemon helper works as its documentation says."""

from __future__ import annotations

import pytest

import watchdog
from watchdog.client import RestartRequested
from watchdog.testing import FakeDaemon


def test_user_checkpoint_callback_round_trip():
    """A user's checkpoint function runs through a real socket and its result comes back."""
    saved = []
    with FakeDaemon() as daemon:
        wd = watchdog.attach(socket_path=daemon.socket_path, checkpoint=saved.append)
        try:
            daemon.wait_for_client()
            wd.step(5)
            result = daemon.run_command(wd, "checkpoint")
        finally:
            wd.close()
    assert result.ok
    assert saved == [result.details["step"]]
    assert result.details["step"] >= 5


def test_failing_callback_and_restart_are_visible():
    """A raising callback is an error result; checkpoint_and_restart raises SystemExit."""

    def broken(step):
        raise ValueError("disk on fire")

    with FakeDaemon() as daemon:
        wd = watchdog.attach(socket_path=daemon.socket_path, checkpoint=broken)
        try:
            assert "disk on fire" in daemon.run_command(wd, "checkpoint").error
            wd._checkpoint_fn = lambda step: None
            with pytest.raises(RestartRequested):
                daemon.run_command(wd, "checkpoint_and_restart")
        finally:
            wd.close()


def test_reports_are_recorded():
    """Heartbeats reach the fake daemon's report list."""
    with FakeDaemon() as daemon:
        wd = watchdog.attach(socket_path=daemon.socket_path)
        try:
            client = daemon.wait_for_client()
            assert client.job
            import time

            deadline = time.monotonic() + 5
            while not daemon.reports and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            wd.close()
    assert daemon.reports
