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


def test_run_command_after_reattach_reaches_the_new_handle():
    """Right after a re-attach, run_command waits for the new registration, not the replaced one."""
    with FakeDaemon() as daemon:
        wd = None
        try:
            # Without the wait, about 1 loop in 15 sent its command to the outgoing
            # registration (UnknownTargetError, or "disconnected before answering").
            for _ in range(200):
                wd = watchdog.attach(socket_path=daemon.socket_path, checkpoint=lambda step: {})
                result = daemon.run_command(wd, "checkpoint", timeout_s=5)
                assert result.ok, result.error
        finally:
            if wd is not None:
                wd.close()


def test_run_command_refuses_a_closed_handle():
    """A handle closed by a later attach() is refused at once rather than timing out."""
    with FakeDaemon() as daemon:
        old = watchdog.attach(socket_path=daemon.socket_path)
        new = watchdog.attach(socket_path=daemon.socket_path)
        try:
            with pytest.raises(ValueError, match="wd is closed"):
                daemon.run_command(old, "checkpoint", timeout_s=5)
        finally:
            new.close()
