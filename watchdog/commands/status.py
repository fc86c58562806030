"""``gpu-watchdog status``: a one-shot table of GPUs and their processes for a person."""

from __future__ import annotations

import argparse
from typing import Any

from watchdog.commands._common import (
    DriverHung,
    add_config_option,
    add_simulate_option,
    build_sources,
    call_within,
    load,
    printable,
)
from watchdog.daemon.state import DaemonState, Snapshot
from watchdog.errors import WatchdogError
from watchdog.samples import NVML, SIMULATED, HostProcessSample

WIDTH = 80


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser(
        "status",
        help="print GPUs and their processes once",
        description="Read each GPU and its processes once and print a table.",
    )
    add_config_option(parser)
    add_simulate_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Poll every source once and print the table."""
    config = load(args)
    state = DaemonState(origin=SIMULATED if args.simulate else NVML)
    # A hung driver call must not hang `status` too: three times what makes a poll stalled.
    deadline_s = 3 * config.sources.stall_after_s
    # NVML's start-up too: a failing driver often hangs in nvmlInit.
    sources = call_within(
        lambda: build_sources(config, args.simulate, state.gpu_pids), deadline_s, "the GPUs"
    )
    for source in sources.sources:  # devices and processes first, so host sees the pids
        try:
            state.apply(call_within(source.poll, deadline_s, "the GPUs"))
        except DriverHung:
            raise  # not closed: NVML's shutdown would wait for the stuck call
        except Exception as exc:  # a driver error (NVML's Unknown, ...): one line, no trace
            sources.close()
            raise WatchdogError(f"cannot read the GPUs: {source.name}: {exc}") from None
    sources.close()
    print(render(state.snapshot()), end="")
    return 0


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f}"


def render(snap: Snapshot) -> str:
    """The status table, at most ``WIDTH`` columns wide."""
    lines = []
    if snap.origin == SIMULATED:
        lines.append("SIMULATED GPU (not real hardware)")
    if not snap.devices:
        lines.append("no GPUs found")
    host = {sample.pid: sample for sample in snap.host_processes}
    lines.append(f"{'GPU':>3}  {'NAME':<28} {'USED / TOTAL GiB':>17} {'USE':>5} {'TEMP':>5}")
    for device in snap.devices:
        if device.lost:
            lines.append(f"{device.gpu:>3}  {device.name[:28]:<28} lost ({device.lost_reason})")
            continue
        percent = (
            f"{100 * device.used_bytes / device.total_bytes:.0f}%"
            if device.used_bytes is not None and device.total_bytes
            else "-"
        )
        temperature = (
            "-" if device.temperature_celsius is None else f"{device.temperature_celsius:.0f}C"
        )
        used_total = f"{_gib(device.used_bytes)} / {_gib(device.total_bytes)}"
        name = device.name[:28]
        lines.append(f"{device.gpu:>3}  {name:<28} {used_total:>17} {percent:>5} {temperature:>5}")
        processes = [p for p in snap.processes if p.gpu == device.gpu]
        if processes:
            lines.append(f"{'':5}{'PID':>8}  {'OWNER':<24} {'GPU GiB':>8} {'RSS GiB':>8}  COMMAND")
        for process in sorted(processes, key=lambda p: -(p.used_bytes or 0)):
            sample = host.get(process.pid, HostProcessSample(pid=process.pid))
            # From the process's environment (SLURM_JOB_ID): whatever its owner put there.
            owner = printable(sample.owner.label() or sample.username or "-")[:24]
            command = printable(sample.command) or "-"
            line = (
                f"{'':5}{process.pid:>8}  {owner:<24} {_gib(process.used_bytes):>8} "
                f"{_gib(sample.total_rss_bytes):>8}  {command}"
            )
            lines.append(line[:WIDTH])
    return "\n".join(lines) + "\n"
