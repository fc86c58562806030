"""Test your own checkpoint and resume callbacks against a real, private control server.

Example (pytest)::

    from watchdog.testing import FakeDaemon
    import watchdog

    def test_my_checkpoint(tmp_path):
        saved = []
        with FakeDaemon() as daemon:
            wd = watchdog.attach(socket_path=daemon.socket_path, checkpoint=saved.append)
            daemon.wait_for_client()
            result = daemon.run_command(wd, "checkpoint")
            assert result.ok and saved == [wd.step_count]
            wd.close()

``FakeDaemon`` is the daemon's own ``ControlServer`` on a socket in a
temporary directory, quiet and without NVML; ``run_command`` sends a command
and calls ``wd.step()`` for you until the answer comes back, so a
single-threaded test needs no training loop of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from watchdog.client import handle
from watchdog.config import ControlSettings
from watchdog.control import ClientInfo, CommandResult, ControlServer


class FakeDaemon:
    """A private control server for tests: ``with FakeDaemon() as daemon: ...``."""

    def __init__(self, heartbeat_s: float = 0.1, **settings: Any) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="wd-test-"))
        self.socket_path = str(self._dir / "watchdog.sock")
        self.reports: list[tuple[ClientInfo, Any]] = []
        self.server = ControlServer(
            ControlSettings(socket_path=self.socket_path, heartbeat_s=heartbeat_s, **settings),
            logger=structlog.wrap_logger(structlog.ReturnLogger()),
        )
        self.server.on_report = lambda client, report: self.reports.append((client, report))

    def start(self) -> FakeDaemon:
        """Start serving (``with`` does this)."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving and remove the temporary directory."""
        self.server.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clients(self) -> list[ClientInfo]:
        """The registered clients."""
        return self.server.clients()

    def wait_for_client(self, pid: int | None = None, timeout_s: float = 10.0) -> ClientInfo:
        """Wait until ``pid`` (default: this process) has registered; return it.

        For this process it waits for the registration of its live handle (the
        newest ``attach()`` to this daemon): just after a re-attach the replaced
        registration can still be listed for a moment, and a command sent to it
        would be lost with it.

        Raises:
            TimeoutError: it did not register in time.
        """
        own = pid is None or pid == os.getpid()
        pid = os.getpid() if pid is None else pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # Registered first, then listed: the server replaces the old registration
            # before it answers the new one, so the pid's entry is the live handle's.
            if not own or self._own_handles_registered():
                for client in self.clients():
                    if client.pid == pid:
                        return client
            time.sleep(0.01)
        raise TimeoutError(f"pid {pid} did not register within {timeout_s:g} s")

    def _own_handles_registered(self) -> bool:
        """Whether every open handle of this process attached to this daemon has registered."""
        with handle._active_lock:
            live = [h for h in handle._active if not h.closed and h.socket_path == self.socket_path]
        return all(h.link.connected.is_set() for h in live)

    def send(
        self,
        command: str,
        target: int | str | None = None,
        timeout_s: float = 30.0,
        **args: Any,
    ) -> list[CommandResult]:
        """Send ``command`` and wait; someone else must be calling ``wd.step()``."""
        target = os.getpid() if target is None else target
        return self.server.send_command(target, command, 0, args=args, timeout_s=timeout_s)

    def run_command(
        self, wd: Any, command: str, timeout_s: float = 30.0, **args: Any
    ) -> CommandResult:
        """Send ``command`` to this process and call ``wd.step()`` until its result arrives.

        ``SystemExit`` from ``checkpoint_and_restart`` propagates, as it would in training.

        Raises:
            ValueError: ``wd`` is closed (a later ``attach()`` closes the earlier handle):
                it would never answer.
            TimeoutError: this process did not register in time.
        """
        if getattr(wd, "closed", False):
            raise ValueError("run_command: wd is closed (a later attach() closes the earlier one)")
        self.wait_for_client(timeout_s=timeout_s)
        future = self.server.send_command_async(
            os.getpid(), command, 0, args=args, timeout_s=timeout_s
        )
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            wd.step()
            time.sleep(0.005)
        return future.result(max(0.0, deadline - time.monotonic()) + 1.0)[0]
