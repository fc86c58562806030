"""A tiny sd_notify(3) client: tell systemd READY, STATUS, STOPPING and WATCHDOG pings.

No dependency: the protocol is one datagram of ``KEY=VALUE`` lines sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names a socket in
the abstract namespace). Outside systemd every method is a no-op, and a failed
send is logged once and never raised: a service manager that went away must
not take the daemon down with it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("watchdog.notify")


def _address(raw: str) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None if it is not a usable AF_UNIX path."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock: and relative paths are not supported (systemd never sets them for us)


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """``$WATCHDOG_USEC`` if the watchdog is meant for this process, else None."""
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    """``text`` as one line: a newline would start a new assignment in the datagram."""
    return " ".join(text.split())


class Notifier:
    """Sends sd_notify messages to ``address``; with ``address=None`` it does nothing.

    Args:
        address: The notify socket (a path, or bytes starting with NUL for an
            abstract socket), or None when not running under systemd.
        watchdog_usec: The service's ``WatchdogSec=`` in microseconds, or None.
    """

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier that ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` ask for."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _address(raw) if raw else None
        if raw and address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        usec = _watchdog_usec(env, os.getpid() if pid is None else pid)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self._address is not None

    def ready(self) -> None:
        """Start-up finished: NVML initialised and the listeners bound."""
        self.send(READY="1", STATUS="ready")

    def status(self, text: str) -> None:
        """A one-line status, shown by ``systemctl status``."""
        self.send(STATUS=_one_line(text))

    def stopping(self) -> None:
        """Shutdown began."""
        self.send(STOPPING="1", STATUS="stopping")

    def watchdog_ping(self) -> None:
        """The poll loop made progress; resets systemd's watchdog timer."""
        if self._watchdog_usec is not None:
            self.send(WATCHDOG="1")

    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of ``WatchdogSec=``, or None when no watchdog is set."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, **fields: str) -> bool:
        """Send ``fields`` as one datagram; True if it was sent, False otherwise (never raises)."""
        if self._address is None or not fields:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            if not self._failed:  # log once: a missing manager would otherwise flood the log
                log.warning("notify_failed", error=str(exc), fields=sorted(fields))
            self._failed = True
            return False
        return True
