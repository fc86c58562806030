"""Pieces several subcommands share: config options, building sources."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from watchdog.config import Config, config_file_argument, load_config
from watchdog.errors import WatchdogError
from watchdog.samples import NVML, SIMULATED
from watchdog.sources.base import Source
from watchdog.sources.host import HostSource
from watchdog.sources.nvml import Nvml
from watchdog.sources.nvml_devices import DeviceHandles, NvmlDeviceSource
from watchdog.sources.nvml_health import NvmlHealthSource
from watchdog.sources.nvml_processes import NvmlProcessSource
from watchdog.sources.scenarios import scenario_names
from watchdog.sources.simulated import SimulatedSource, load_steps


def printable(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character but those in ``keep`` escaped as ``repr`` does.

    For strings a peer chose (a client's job, device, error text): printed raw, a
    newline would break a table row and an escape sequence would reach the
    terminal of whoever runs the command.
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char in keep else repr(char)[1:-1] for char in text
    )


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH``."""
    parser.add_argument(
        "--config",
        type=config_file_argument,
        metavar="PATH",
        help="TOML config file (default: GPU_WATCHDOG_CONFIG, else "
        "/etc/gpu-watchdog/config.toml if it exists)",
    )


def add_simulate_option(parser: argparse.ArgumentParser) -> None:
    """``--simulate TRACE_OR_SCENARIO`` and ``--speed``."""
    parser.add_argument(
        "--simulate",
        type=_simulate_target,
        metavar="TRACE_OR_SCENARIO",
        help="use a SIMULATED GPU playing a trace file or a built-in scenario "
        f"({', '.join(scenario_names())}) instead of NVML",
    )
    parser.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="with --simulate: trace seconds per wall-clock second (default 1)",
    )


def _simulate_target(text: str) -> str:
    # An empty shell variable must not turn a simulated run into a real one.
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"needs a built-in scenario ({', '.join(scenario_names())}) or a trace "
            "file, got an empty string"
        )
    return text


def load(args: argparse.Namespace, **overrides: Any) -> Config:
    """The configuration for ``args``, with command-line ``overrides`` as ``section__key``."""
    pairs = {
        tuple(key.split("__", 1)): value for key, value in overrides.items() if value is not None
    }
    if getattr(args, "speed", None) is not None:
        pairs[("simulation", "speed")] = args.speed
    return load_config(getattr(args, "config", None), overrides=pairs)  # type: ignore[arg-type]


class Sources:
    """The sources a command polls, and what to shut down afterwards."""

    def __init__(self, sources: list[Source], origin: str, nvml: Nvml | None) -> None:
        self.sources = sources
        self.origin = origin
        self.nvml = nvml

    @property
    def primary(self) -> Source:
        """The source whose polls say the daemon is alive (GPU devices)."""
        return self.sources[0]

    def close(self) -> None:
        """Close every source and shut NVML down."""
        for source in self.sources:
            source.close()
        if self.nvml is not None:
            self.nvml.shutdown()


def build_sources(
    config: Config,
    simulate: str | None,
    gpu_pids: Any,
    nvml_module: Any = None,
) -> Sources:
    """NVML sources, or the simulated one when ``simulate`` names a trace or scenario.

    Raises:
        NvmlUnavailable: NVML cannot be used (never falls back to simulation).
        UsageError: ``simulate`` names nothing playable.
    """
    settings = config.sources
    if simulate:
        steps = load_steps(simulate)
        simulated = SimulatedSource(
            steps,
            interval_s=settings.device_interval_s,
            speed=config.simulation.speed,
            loop=config.simulation.loop,
        )
        # Real processes (registered clients) are still watched for host memory, on the
        # simulation's clock so that every series a detector sees shares one time base.
        host = HostSource(
            gpu_pids,
            settings.host_interval_s,
            Path(settings.proc_root),
            clock=simulated.trace_clock,
            origin=SIMULATED,
        )
        return Sources([simulated, host], SIMULATED, None)
    nvml = Nvml(nvml_module)
    nvml.init()
    handles = DeviceHandles(nvml)
    sources: list[Source] = [
        NvmlDeviceSource(nvml, handles, settings.device_interval_s),
        NvmlProcessSource(nvml, handles, settings.process_interval_s, settings.max_processes),
        HostSource(gpu_pids, settings.host_interval_s, Path(settings.proc_root)),
        NvmlHealthSource(nvml, handles, settings.health_interval_s),
    ]
    return Sources(sources, NVML, nvml)


T = TypeVar("T")


class DriverHung(WatchdogError):
    """A call did not return within its deadline: a driver call stuck in the kernel."""


def call_within(call: Callable[[], T], deadline_s: float, what: str) -> T:
    """``call()``'s result (or its exception), unless it takes longer than ``deadline_s``.

    A one-shot command must not hang with a driver that does (``nvidia-smi`` would).
    The call runs in a daemon thread, left behind when it hangs: then nothing may
    shut NVML down (that would wait for the stuck call too).

    Raises:
        DriverHung: ``call`` had not returned after ``deadline_s``.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread as is
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="watchdog-call", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if not outcome:
        raise DriverHung(
            f"no answer from {what} within {deadline_s:g} s: a driver call is hung "
            "(nvidia-smi probably hangs too; see docs/operations.md, GpuWatchdogPollStalled)"
        )
    done, value = outcome[0]
    if done:
        return value  # type: ignore[no-any-return]
    raise value
