"""``gpu-watchdog run``: the daemon."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from watchdog.commands._common import add_config_option, add_simulate_option, build_sources, load
from watchdog.config import Config, parse_listen
from watchdog.control import ControlServer
from watchdog.control.server import ControlError
from watchdog.control.server import check_settings as check_control_settings
from watchdog.daemon.notify import Notifier
from watchdog.daemon.poller import Poller
from watchdog.daemon.service import Daemon
from watchdog.daemon.state import DaemonState
from watchdog.daemon.supervisor import Supervisor
from watchdog.detectors import DetectionEngine
from watchdog.detectors.metrics import DetectionCollector
from watchdog.errors import WatchdogError
from watchdog.exporter.collector import StateCollector
from watchdog.exporter.http import MetricsServer
from watchdog.exporter.security import WebSecurity
from watchdog.logs import configure_logging
from watchdog.policy.engine import Policy
from watchdog.policy.journal import Journal, ReadStats, ledger_from
from watchdog.samples import NVML, SIMULATED
from watchdog.sources.nvml_events import NvmlEventWatcher

log = structlog.get_logger("watchdog.run")


def register(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run", help="run the daemon", description="Poll GPUs, detect leaks, serve /metrics."
    )
    add_config_option(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", help="override metrics.listen")
    add_simulate_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the daemon and serve until SIGTERM or SIGINT."""
    # SIGHUP's default action kills. Until the daemon can reload, a HUP (logrotate,
    # ``systemctl reload`` during a slow NVML init) is held and honoured once it can.
    signal.signal(signal.SIGHUP, _HeldHangup())
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise WatchdogError(f"--listen: {exc}", exit_code=2) from None
    config = load(args, metrics__listen=args.listen)
    origin = SIMULATED if args.simulate else NVML
    # Every log line says where its GPU figures come from, so simulated runs can't pass as real.
    configure_logging(config.daemon.log_level, config.daemon.log_format, always={"source": origin})
    # Certificates, keys and users are read before NVML is touched: a bad file exits 2 at once.
    security = WebSecurity.from_settings(config.metrics)
    check_control_settings(config.control)  # likewise a socket group this machine lacks

    state = DaemonState(origin=origin)
    pids: list[Any] = []  # the supervisor's monitored_pids, once it exists
    sources = build_sources(config, args.simulate, lambda: pids[0]() if pids else [])
    events = _event_watcher(config, state, sources)
    try:
        code = _serve(args, config, state, sources, pids, security)
    except BaseException:
        if events is None or events.stop():
            sources.close()
        raise
    if events is not None and not events.stop():
        # The event wait is stuck inside the driver: as with a stuck poll (below), NVML
        # must not be shut down under it, nor may the interpreter wait for the thread.
        log.warning("exiting_with_event_wait_in_progress")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if any(h.running_since_mono is not None for h in state.snapshot().collectors):
        # A poll is stuck inside the driver: shutting NVML down under it can crash the
        # library, and the interpreter would wait for that thread forever at exit.
        log.warning("exiting_with_poll_in_progress")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sources.close()
    return code


class _HeldHangup:
    """The SIGHUP handler until the daemon can reload: it only remembers the signal came."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.seen = True


def _event_watcher(config: Config, state: DaemonState, sources: Any) -> NvmlEventWatcher | None:
    """The NVML event thread (Xid errors), started; None when simulated or turned off."""
    if sources.nvml is None or not config.sources.xid_events:
        return None
    watcher = NvmlEventWatcher(
        sources.nvml,
        state.record_gpu_event,
        state.processes_on,
        wait_s=config.sources.event_wait_s,
        retry_s=config.sources.event_retry_s,
    )
    state.set_event_watcher(watcher.status)
    watcher.start()
    return watcher


def _serve(
    args: argparse.Namespace,
    config: Config,
    state: DaemonState,
    sources: Any,
    pids: list[Any],
    security: WebSecurity,
) -> int:
    if sources.nvml is not None:
        state.set_nvml_info(
            sources.nvml.error_counts, sources.nvml.driver_version, sources.nvml.nvml_version
        )
    engine = DetectionEngine(config.detection)
    state_dir = Path(config.daemon.state_dir)
    try:
        # Made now, not at the first entry: `history` on a quiet daemon finds no entries,
        # rather than no directory (which reads as a wrong daemon.state_dir).
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:  # the journal counts its write errors; watching goes on
        log.error("state_dir_unusable", path=str(state_dir), error=str(exc))
    journal = Journal(state_dir, config.policy.journal_max_bytes, config.policy.journal_keep)
    stats = ReadStats()
    # A command the previous daemon sent and got no answer to holds its job as long as that
    # daemon would have waited for it: it may still be running, and is never sent again.
    ledger = ledger_from(journal.read(stats), config.control.command_timeout_s, now=time.time())
    policy = Policy.from_settings(config.policy, ledger)
    log.info(
        "journal_read",
        entries=stats.entries,
        skipped_lines=stats.skipped_lines,
        unreadable_files=stats.unreadable_files,
    )

    server = ControlServer(config.control, proc_root=Path(config.sources.proc_root))
    try:
        server.start()
    except (ControlError, OSError) as exc:
        # OSError: what the server's own checks let through, such as a socket path under
        # a regular file (ENOTDIR) or a directory the daemon may not search (EACCES).
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WatchdogError(
            f"cannot serve the control socket {config.control.socket_path}: {reason} "
            "(set control.socket_path or GPU_WATCHDOG_SOCKET)"
        ) from None
    try:
        supervisor = Supervisor(
            engine,
            policy,
            journal,
            state,
            server,
            restart_budget=(config.policy.max_restarts, config.policy.restart_window_s),
            detection=config.detection,
            proc_root=Path(config.sources.proc_root),
        )
        pids.append(supervisor.monitored_pids)
        server.on_report = supervisor.on_report
        server.on_leave = supervisor.on_leave
        server.on_request_sent = supervisor.on_request_sent
        server.on_request_done = supervisor.on_request_done
        return _serve_metrics(args, config, state, sources, server, supervisor, security)
    finally:
        server.stop()


def _serve_metrics(
    args: argparse.Namespace,
    config: Config,
    state: DaemonState,
    sources: Any,
    server: ControlServer,
    supervisor: Supervisor,
    security: WebSecurity,
) -> int:
    registry = CollectorRegistry(auto_describe=True)
    # process_start_time_seconds tells the alerts a restart loop, and counts since a
    # restart, apart from a daemon that is simply up; the rest shows its footprint.
    ProcessCollector(registry=registry)
    registry.register(StateCollector(state.snapshot, config.sources.stall_after_s))
    registry.register(DetectionCollector(supervisor.detection_status, state.snapshot().origin))
    registry.register(server.collector())
    registry.register(supervisor)
    poller = Poller(sources.sources, state, observers=[supervisor.on_reading])
    supervisor.install_schedules(poller.scheduler, config.policy.schedule)

    daemon: Daemon | None = None

    def health() -> tuple[bool, str]:
        return daemon.health() if daemon else (False, "starting")

    try:
        metrics = MetricsServer(
            config.metrics.listen,
            registry,
            health,
            config.metrics.max_concurrent_scrapes,
            security,
        )
    except OSError as exc:
        raise WatchdogError(
            f"cannot listen on {config.metrics.listen}: {exc.strerror or exc}"
        ) from None
    registry.register(metrics.collector())
    daemon = Daemon(
        state,
        poller,
        metrics,
        config.sources.stall_after_s,
        sources.primary.name,
        notifier=Notifier.from_env(),
        reload=lambda: _reload(args, config, supervisor, metrics, poller.scheduler),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    held = signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    if isinstance(held, _HeldHangup) and held.seen:
        daemon.request_reload()
    host, _ = parse_listen(config.metrics.listen)
    shown = f"[{host}]" if ":" in host else host
    _announce(
        state.snapshot().origin,
        args.simulate,
        f"{security.scheme}://{shown}:{metrics.port}",
        config.control.socket_path,
    )
    daemon.serve(stop)
    return 0


# Tables whose changes take effect on SIGHUP; the others need a restart.
RELOADABLE = (
    "policy",
    "daemon.log_level",
    "daemon.log_format",
    "metrics.tls_",
    "metrics.basic_auth",
)


def _reload(
    args: argparse.Namespace,
    current: Config,
    supervisor: Supervisor,
    metrics: MetricsServer,
    scheduler: Any,
) -> None:
    """Reload the config file (SIGHUP): apply what can change live, keep the old one if invalid.

    ``changed`` is reported against the configuration the daemon started with, so a
    setting that needs a restart stays listed until the daemon is restarted.
    """
    try:
        new = load(args, metrics__listen=args.listen)
        # Certificate files are read again even if their names did not change (rotation);
        # a broken one rejects the whole reload and the endpoint keeps its current TLS.
        security = WebSecurity.from_settings(new.metrics)
    except WatchdogError as exc:
        log.error("config_reload_rejected", reason=str(exc), kept="the running configuration")
        return
    changed = _changed_keys(current, new)
    needs_restart = [key for key in changed if not key.startswith(RELOADABLE)]
    origin = SIMULATED if args.simulate else NVML
    configure_logging(new.daemon.log_level, new.daemon.log_format, always={"source": origin})
    supervisor.reconfigure_policy(new.policy)
    supervisor.install_schedules(scheduler, new.policy.schedule)
    metrics.secure(security)
    log.info("config_reloaded", changed=changed, needs_restart=needs_restart)


def _changed_keys(old: Config, new: Config) -> list[str]:
    changed = []
    for section in dataclasses.fields(old):
        before, after = getattr(old, section.name), getattr(new, section.name)
        for item in dataclasses.fields(before):
            if getattr(before, item.name) != getattr(after, item.name):
                changed.append(f"{section.name}.{item.name}")
    return changed


def _announce(origin: str, simulate: str | None, base_url: str, socket_path: str) -> None:
    what = (
        f"SIMULATED GPU playing {simulate!r} (not real hardware)"
        if origin == SIMULATED
        else "NVML GPUs"
    )
    print(
        f"gpu-watchdog: watching {what}; metrics on {base_url}/metrics, "
        f"health on {base_url}/healthz, control socket {socket_path}",
        file=sys.stderr,
        flush=True,
    )
    log.info("watching", simulate=simulate, metrics=f"{base_url}/metrics")
