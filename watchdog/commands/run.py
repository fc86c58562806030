"""``gpu-watchdog run``: the daemon."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import structlog
from prometheus_client.registry import CollectorRegistry

from watchdog.commands._common import (
    add_config_option,
    add_simulate_option,
    build_sources,
    load,
)
from watchdog.config import parse_listen
from watchdog.daemon.poller import Poller
from watchdog.daemon.service import Daemon
from watchdog.daemon.state import DaemonState
from watchdog.errors import WatchdogError
from watchdog.exporter.collector import StateCollector
from watchdog.exporter.http import MetricsServer
from watchdog.logs import configure_logging
from watchdog.samples import NVML, SIMULATED

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
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise WatchdogError(f"--listen: {exc}", exit_code=2) from None
    config = load(args, metrics__listen=args.listen)
    configure_logging(config.daemon.log_level, config.daemon.log_format)
    origin = SIMULATED if args.simulate else NVML
    # Every log line says where its GPU figures come from, so simulated runs can't pass as real.
    structlog.contextvars.bind_contextvars(source=origin)

    state = DaemonState(origin=origin)
    sources = build_sources(config, args.simulate, state.gpu_pids)
    if sources.nvml is not None:
        state.set_nvml_info(
            sources.nvml.error_counts, sources.nvml.driver_version, sources.nvml.nvml_version
        )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StateCollector(state.snapshot, config.sources.stall_after_s))
    poller = Poller(sources.sources, state)

    daemon: Daemon | None = None
    try:
        metrics = MetricsServer(
            config.metrics.listen,
            registry,
            lambda: daemon.health() if daemon else (False, "starting"),
            config.metrics.max_concurrent_scrapes,
        )
    except OSError as exc:
        sources.close()
        raise WatchdogError(
            f"cannot listen on {config.metrics.listen}: {exc.strerror or exc}"
        ) from None
    daemon = Daemon(state, poller, metrics, config.sources.stall_after_s, sources.primary.name)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    host, _ = parse_listen(config.metrics.listen)
    _announce(sources.origin, args.simulate, host, metrics.port)
    try:
        daemon.serve(stop)
    finally:
        sources.close()
    return 0


def _announce(origin: str, simulate: str | None, host: str, port: int) -> None:
    shown = f"[{host}]" if ":" in host else host
    what = (
        f"SIMULATED GPU playing {simulate!r} (not real hardware)"
        if origin == SIMULATED
        else "NVML GPUs"
    )
    print(
        f"gpu-watchdog: watching {what}; metrics on http://{shown}:{port}/metrics, "
        f"health on http://{shown}:{port}/healthz",
        file=sys.stderr,
        flush=True,
    )
    log.info("watching", simulate=simulate, metrics=f"http://{shown}:{port}/metrics")
