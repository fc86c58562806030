"""``gpu-watchdog clients``: the training processes registered with the daemon."""

from __future__ import annotations

import argparse
import json
from typing import Any

from watchdog.commands._common import printable
from watchdog.config import config_file_argument, load_config
from watchdog.control.protocol import MAX_GROWTH_PLANNED_S
from watchdog.control.requests import ControlRequester
from watchdog.errors import UsageError

COLUMNS = (
    "PID",
    "JOB",
    "RANK",
    "DEVICE",
    "STEP",
    "ALLOC",
    "RESERVED",
    "PEAK",
    "RETRIES",
    "OOMS",
    "RSS",
    "AGE",
    "GROWTH",
)


def add_socket_options(parser: argparse.ArgumentParser) -> None:
    """``--socket`` and ``--config``, to find the daemon."""
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="control socket (default: GPU_WATCHDOG_SOCKET, else control.socket_path "
        "from the configuration)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=config_file_argument,
        help="configuration file (default: GPU_WATCHDOG_CONFIG, else "
        "/etc/gpu-watchdog/config.toml if it exists)",
    )


def socket_path(args: argparse.Namespace) -> str:
    """The socket to talk to: ``--socket``, else the configuration (file, then environment).

    Raises:
        UsageError: the path is empty (``--socket ""``, or ``GPU_WATCHDOG_SOCKET=``).
    """
    # An empty --socket must not fall back to the default: that is another daemon.
    path = args.socket if args.socket is not None else load_config(args.config).control.socket_path
    if not path:
        raise UsageError(
            "socket path is empty (set --socket, GPU_WATCHDOG_SOCKET or control.socket_path)"
        )
    return str(path)


def human_bytes(value: int | None) -> str:
    """``1.5G``-style text; ``-`` for unknown."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(amount) < 1024 or unit == "T":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return str(value)  # pragma: no cover


def text(value: object) -> str:
    """A table cell, one line whatever a client sent; ``-`` for unknown."""
    return "-" if value is None or value == "" else printable(str(value))


def planned(client: dict[str, Any]) -> str:
    """The growth a client planned (``expect_growth``): time left, and its size if given."""
    left = client.get("growth_planned_s")
    if left is None:
        return "-"
    if left > MAX_GROWTH_PLANNED_S:  # a daemon that did not cap it: the plan is honoured no longer
        minutes = f">{MAX_GROWTH_PLANNED_S / 60:.0f}m"
    else:
        minutes = f"{left / 60:.0f}m" if left >= 60 else f"{left:.0f}s"
    size = client.get("growth_up_to_bytes")
    return minutes if size is None else f"{minutes} to {human_bytes(size)}"


def register(subparsers: Any) -> None:
    """Add the ``clients`` subcommand."""
    parser = subparsers.add_parser(
        "clients",
        help="list training processes registered with the daemon",
        description="List the training processes attached to the daemon's control socket.",
    )
    add_socket_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON, one object per client")
    parser.set_defaults(func=run)


def rows(clients: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One table row per client."""
    return [
        (
            str(c["pid"]),
            text(c.get("job")),
            text(c.get("rank")),
            text(c.get("device")),
            text(c.get("step")),
            human_bytes(c.get("allocated_bytes")),
            human_bytes(c.get("reserved_bytes")),
            human_bytes(c.get("peak_allocated_bytes")),
            text(c.get("alloc_retries")),
            text(c.get("ooms")),
            human_bytes(c.get("rss_bytes")),
            f"{c.get('heartbeat_age_s', 0):.1f}s",
            planned(c),
        )
        for c in clients
    ]


def format_table(clients: list[dict[str, Any]]) -> str:
    """The aligned table ``clients`` prints."""
    table = [COLUMNS, *rows(clients)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def run(args: argparse.Namespace) -> int:
    """List the clients; exit 0, or 1 when the daemon cannot be reached."""
    with ControlRequester(socket_path(args)) as requester:
        clients = requester.list_clients()
    if args.json:
        print(json.dumps(clients, indent=2))
    elif not clients:
        print("no training process is registered")
    else:
        print(format_table(clients))
    return 0
