"""A blocking requester for the control socket: what ``gpu-watchdog clients`` and ``send`` use."""

from __future__ import annotations

import itertools
import socket
from typing import Any

from watchdog.control.protocol import (
    HARD_MAX_MESSAGE_BYTES,
    FrameDecoder,
    ProtocolError,
    recv_message,
    send_message,
)
from watchdog.errors import WatchdogError


class RequestError(WatchdogError):
    """The daemon could not be reached, or refused the request; the message says which."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ControlRequester:
    """One connection to the daemon for list and send requests."""

    def __init__(self, socket_path: str, connect_timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(connect_timeout_s)
        try:
            self._sock.connect(socket_path)
        except OSError as exc:
            self._sock.close()
            raise RequestError(
                f"cannot reach the daemon at {socket_path}: {exc.strerror or exc} "
                "(is gpu-watchdog running? set GPU_WATCHDOG_SOCKET or --socket)"
            ) from None
        self._decoder = FrameDecoder(HARD_MAX_MESSAGE_BYTES)
        self._pending: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> ControlRequester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and return its reply.

        Raises:
            RequestError: connection lost, timeout, protocol error, or an ``error`` reply.
        """
        request_id = next(self._ids)
        try:
            send_message(self._sock, {**message, "id": request_id}, HARD_MAX_MESSAGE_BYTES)
            while True:
                reply = recv_message(self._sock, self._decoder, self._pending, timeout_s)
                if reply.get("id") == request_id:
                    break
        except TimeoutError:
            raise RequestError(f"no reply from the daemon within {timeout_s:g} s") from None
        except (OSError, ProtocolError) as exc:
            raise RequestError(f"lost the connection to the daemon: {exc}") from None
        if reply["type"] == "error":
            raise RequestError(str(reply.get("message", "error")), str(reply.get("code", "")))
        return reply

    def list_clients(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every registered client, as the daemon describes it."""
        return list(self.request({"type": "list_clients"}, timeout_s)["clients"])

    def send(
        self,
        target: int | str,
        command: str,
        args: dict[str, Any] | None = None,
        timeout_s: float = 600.0,
    ) -> list[dict[str, Any]]:
        """Issue ``command`` to a pid or job and return one result per client."""
        reply = self.request(
            {
                "type": "send",
                "target": target,
                "command": command,
                "args": args or {},
                "timeout_s": timeout_s,
            },
            timeout_s + 10.0,
        )
        return list(reply["results"])
