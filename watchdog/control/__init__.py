"""The control channel: wire format, the daemon-side server and its client registry.

The daemon starts one ``ControlServer``; training processes reach it through
``watchdog.client``, people through ``gpu-watchdog clients`` and ``send``.
docs/protocol.md specifies the wire format.
"""

from __future__ import annotations

from watchdog.control.registry import AllocatorReport, ClientInfo, CommandResult, PeerCred
from watchdog.control.server import (
    CommandPermissionError,
    ControlError,
    ControlServer,
    UnknownTargetError,
)

__all__ = [
    "AllocatorReport",
    "ClientInfo",
    "CommandPermissionError",
    "CommandResult",
    "ControlError",
    "ControlServer",
    "PeerCred",
    "UnknownTargetError",
]
