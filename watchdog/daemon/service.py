"""The daemon's lifecycle: start the listeners and the poll loop, report health, stop cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from watchdog.daemon.poller import Poller
from watchdog.daemon.state import CollectorHealth, DaemonState, Snapshot
from watchdog.exporter.http import MetricsServer

log = structlog.get_logger("watchdog.daemon")

STARTUP_GRACE_S = 30.0


class ServiceNotifier(Protocol):
    """What the daemon tells its service manager (systemd's sd_notify)."""

    def ready(self) -> None:
        """Start-up finished."""

    def status(self, text: str) -> None:
        """A one-line status."""

    def stopping(self) -> None:
        """Shutdown began."""

    def watchdog_ping(self) -> None:
        """The daemon is making progress."""

    def watchdog_interval_s(self) -> float | None:
        """How often to ping, or None when no watchdog is configured."""


class NullNotifier:
    """Used when not running under a service manager."""

    def ready(self) -> None:
        """Do nothing."""

    def status(self, text: str) -> None:
        """Do nothing."""

    def stopping(self) -> None:
        """Do nothing."""

    def watchdog_ping(self) -> None:
        """Do nothing."""

    def watchdog_interval_s(self) -> float | None:
        """No watchdog."""
        return None


def collector_problem(health: CollectorHealth, snap: Snapshot, stall_after_s: float) -> str:
    """Why ``health`` is not healthy, or "" if it is."""
    if snap.stalled(health, stall_after_s):
        return f"{health.name}: poll stalled"
    if health.last_success_mono is None:
        return f"{health.name}: no successful poll yet" + (
            f" ({health.last_error})" if health.last_error else ""
        )
    age = snap.taken_mono - health.last_success_mono
    if age > max(3 * health.interval_s, stall_after_s):
        return f"{health.name}: last successful poll {age:.0f}s ago ({health.last_error or 'late'})"
    return ""


class Daemon:
    """Runs the poll loop and the metrics server until ``stop`` is set.

    Args:
        state: The shared state.
        poller: The poll loop.
        metrics: The HTTP server (already bound).
        stall_after_s: A poll running longer than this is stalled.
        progress_collector: The collector whose successful polls count as progress
            for the service manager's watchdog.
        notifier: The service manager.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        state: DaemonState,
        poller: Poller,
        metrics: MetricsServer,
        stall_after_s: float,
        progress_collector: str,
        notifier: ServiceNotifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self._state = state
        self._poller = poller
        self._metrics = metrics
        self._stall_after_s = stall_after_s
        self._progress_collector = progress_collector
        self._notifier = notifier or NullNotifier()
        self._clock = clock
        self._started = clock()
        self._last_progress: float | None = None
        self._reload = reload
        self._reload_requested = threading.Event()

    def request_reload(self) -> None:
        """Ask the serving loop to reload the configuration (safe from a signal handler)."""
        self._reload_requested.set()

    def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/healthz``: every source polled recently and none stalled."""
        snap = self._state.snapshot()
        problems = [
            problem
            for health in snap.collectors
            if (problem := collector_problem(health, snap, self._stall_after_s))
        ]
        if not problems:
            return True, "ok"
        starting = self._clock() - self._started < STARTUP_GRACE_S and all(
            "no successful poll yet" in problem for problem in problems
        )
        return False, ("starting: " if starting else "unhealthy: ") + "; ".join(problems)

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then shut down."""
        self._metrics.start()
        self._poller.start()
        self._notifier.ready()
        self._notifier.status("polling")
        log.info("daemon_started", metrics_port=self._metrics.port)
        interval = self._notifier.watchdog_interval_s()
        tick = min(1.0, interval) if interval else 1.0
        try:
            while not stop.wait(tick):
                self._poller.check_clock()
                self._ping_if_progressing()
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self._reload_now()
        finally:
            self._notifier.stopping()
            log.info("daemon_stopping")
            self._poller.stop()
            self._metrics.stop()

    def _reload_now(self) -> None:
        if self._reload is None:
            return
        self._notifier.status("reloading configuration")
        try:
            self._reload()
        except Exception:  # a reload must never take the daemon down
            log.exception("config_reload_failed")
        self._notifier.status("polling")

    def _ping_if_progressing(self) -> None:
        """Ping the service watchdog only if the poll loop made progress since the last ping."""
        health = next(
            (h for h in self._state.snapshot().collectors if h.name == self._progress_collector),
            None,
        )
        progress = None if health is None else health.last_success_mono
        if progress is not None and progress != self._last_progress:
            self._last_progress = progress
            self._notifier.watchdog_ping()
