"""The client's background thread: connect, register, heartbeat, receive commands, send results.

It never runs on the training thread and never raises into it. Without a
daemon it warns once and keeps retrying with backoff; when the daemon
restarts it reconnects and registers again. Results of commands received on
an earlier connection are dropped (the new daemon never asked for them).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from watchdog import __version__
from watchdog.control.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    HARD_MAX_MESSAGE_BYTES,
    MAX_ERROR_CHARS,
    FrameDecoder,
    ProtocolError,
    encode,
    recv_message,
)

log = logging.getLogger("watchdog.client")

MIN_BACKOFF_S = 0.2
MAX_BACKOFF_S = 30.0
REGISTER_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0
DEFAULT_HEARTBEAT_S = 5.0
MIN_HEARTBEAT_S = 0.05
MAX_HEARTBEAT_S = 3600.0
"""Bounds of the heartbeat, given to ``attach()`` or told by the daemon (whose own
setting allows 0.1 to 3600 s): shorter would spin the thread, longer than a float
that ``select`` takes would fail every session."""


class Link:
    """Owns the socket. ``deliver(message, generation)`` hands each command to the handle."""

    def __init__(
        self,
        socket_path: str,
        registration: Callable[[], dict[str, Any]],
        report: Callable[[], dict[str, Any]],
        deliver: Callable[[dict[str, Any], int], None],
        heartbeat_s: float | None = None,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.socket_path = socket_path
        self._registration = registration
        self._report = report
        self._deliver = deliver
        self._heartbeat_override = heartbeat_s
        self.heartbeat_s = (
            clamp_heartbeat(heartbeat_s) if heartbeat_s is not None else DEFAULT_HEARTBEAT_S
        )
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._max_backoff_s = max_backoff_s
        self._outbox: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._handshake: socket.socket | None = None
        """The socket while it connects and registers: ``stop()`` shuts it down, as a
        daemon that accepts and never answers would hold the thread for the full timeout."""
        self._handshake_lock = threading.Lock()
        self._report_now = False
        self._flushed = threading.Condition()
        self.generation = 0
        self.connected = threading.Event()
        self._warned = False
        self.farewell: dict[str, Any] = {"reason": "close"}
        """Sent as a ``detach`` message when the link stops: the daemon then knows the
        process left on purpose (or, with ``error``, what it died of) rather than being killed."""
        self._thread = threading.Thread(target=self._run, name="watchdog-client", daemon=True)

    # --- called from any thread -------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and close the socket (pending results are sent first if possible)."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():  # not in a forked child, where the lock may be stuck held
            with self._handshake_lock:
                if self._handshake is not None:
                    with contextlib.suppress(OSError):
                        self._handshake.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def forget_in_child(self) -> None:
        """In a forked child: close its copies of the sockets, sending nothing.

        The child shares the connection with its parent; holding it open would let a
        parent killed with SIGKILL look alive to the daemon until the child exits. Only
        ``close()``: a ``shutdown()`` would end the parent's connection too. No lock is
        taken: one held by the parent's thread at the fork stays held in the child.
        """
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def post(self, message: dict[str, Any], generation: int) -> None:
        """Queue ``message`` for the connection of ``generation`` and wake the thread."""
        self._outbox.append((generation, message))
        self._wake()

    def report_soon(self) -> None:
        """Send a report now rather than at the next heartbeat (a plan changed)."""
        self._report_now = True
        self._wake()

    def wait_flushed(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (sent or dropped); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._flushed:
            while self._outbox:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive() or not self.connected.is_set():
                    return False
                self._flushed.wait(min(remaining, 0.1))
        return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        while not self._stop.is_set():
            generation = self.generation
            unexpected = False
            try:
                self._session()
            except (OSError, ProtocolError, TimeoutError, ConnectionError) as exc:
                if not self._stop.is_set():  # closing ends the session on purpose
                    self._lost(exc)
            except Exception:  # a bug here must never reach the training loop
                unexpected = True
                log.exception("watchdog client: unexpected error; reconnecting")
            finally:
                self.connected.clear()
            if self.generation != generation and not unexpected:
                # It registered: a session lost after that (a daemon restart) starts the
                # backoff over, or every restart would make the next reconnect slower. Not
                # after a bug of ours: it would fail the same way at once, in a hot loop.
                backoff = MIN_BACKOFF_S
            self._stop.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._max_backoff_s)

    def _lost(self, exc: BaseException) -> None:
        if self.generation == 0 and not self._warned:
            self._warned = True
            log.warning(
                "gpu-watchdog: no daemon at %s (%s); training continues, "
                "retrying in the background",
                self.socket_path,
                exc,
            )
        elif self.connected.is_set():
            log.warning("gpu-watchdog: lost the daemon (%s); reconnecting", exc)
        else:
            log.debug("gpu-watchdog: still no daemon at %s: %s", self.socket_path, exc)

    def _session(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        try:
            sock.settimeout(REGISTER_TIMEOUT_S)
            sock.connect(self.socket_path)
            with self._handshake_lock:
                if self._stop.is_set():  # stopped before stop() could see this socket
                    return
                self._handshake = sock
            decoder = FrameDecoder(HARD_MAX_MESSAGE_BYTES)
            pending: list[dict[str, Any]] = []
            sock.sendall(
                encode({"type": "register", "client_version": __version__, **self._registration()})
            )
            reply = recv_message(sock, decoder, pending, REGISTER_TIMEOUT_S)
            if reply["type"] != "registered":
                raise ProtocolError(f"registration refused: {reply.get('message', reply)}")
            self._accept_settings(reply)
            with self._handshake_lock:
                self._handshake = None
            self.generation += 1
            if self.generation > 1 or self._warned:
                log.warning("gpu-watchdog: connected to the daemon at %s", self.socket_path)
            else:
                log.info("gpu-watchdog: registered with the daemon at %s", self.socket_path)
            self.connected.set()
            self._drop_stale_results()
            self._serve(sock, decoder, pending)
        finally:
            with self._handshake_lock:
                self._handshake = None
            sock.close()

    def _accept_settings(self, reply: dict[str, Any]) -> None:
        heartbeat = reply.get("heartbeat_s")
        if (
            self._heartbeat_override is None
            and isinstance(heartbeat, (int, float))
            and not isinstance(heartbeat, bool)
        ):
            self.heartbeat_s = clamp_heartbeat(heartbeat)
        limit = reply.get("max_message_bytes")
        if isinstance(limit, int) and 0 < limit <= HARD_MAX_MESSAGE_BYTES:
            self.max_message_bytes = limit

    def _serve(
        self, sock: socket.socket, decoder: FrameDecoder, pending: list[dict[str, Any]]
    ) -> None:
        sock.settimeout(SEND_TIMEOUT_S)
        for message in pending:
            self._deliver(message, self.generation)
        pending.clear()
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ, "sock")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            next_beat = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_beat or self._report_now:
                    self._report_now = False
                    self._send(sock, {"type": "report", **self._report()})
                    next_beat = now + self.heartbeat_s
                for key, _ in selector.select(max(0.0, next_beat - time.monotonic())):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError, OSError):
                            self._wake_r.recv(4096)
                    else:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("daemon closed the connection")
                        for message in decoder.feed(data):
                            self._deliver(message, self.generation)
                self._send_outbox(sock)
            self._send_outbox(sock)
            self._send(sock, {"type": "detach", **self.farewell})

    def _send(self, sock: socket.socket, message: dict[str, Any]) -> None:
        sock.sendall(encode(message, self.max_message_bytes))

    def _send_outbox(self, sock: socket.socket) -> None:
        while self._outbox:
            generation, message = self._outbox[0]
            if generation == self.generation:
                try:
                    frame = encode(message, self.max_message_bytes)
                except (ProtocolError, ValueError, TypeError) as exc:
                    # Too large, or not JSON: the command still gets an answer, without
                    # the details that could not be sent.
                    frame = encode(
                        {
                            "type": message.get("type"),
                            "id": message.get("id"),
                            "ok": False,
                            "details": {},
                            "error": f"result not sent: {exc}"[:MAX_ERROR_CHARS],
                        },
                        self.max_message_bytes,
                    )
                sock.sendall(frame)
            self._outbox.popleft()
            with self._flushed:
                self._flushed.notify_all()

    def _drop_stale_results(self) -> None:
        while self._outbox and self._outbox[0][0] != self.generation:
            _, message = self._outbox.popleft()
            log.info(
                "gpu-watchdog: dropped the result of command %s: the daemon restarted",
                message.get("id"),
            )
        with self._flushed:
            self._flushed.notify_all()


def clamp_heartbeat(seconds: float) -> float:
    """``seconds`` within ``MIN_HEARTBEAT_S`` to ``MAX_HEARTBEAT_S`` (the default if not finite)."""
    try:
        value = float(seconds)
    except OverflowError:  # an integer of hundreds of digits
        return MAX_HEARTBEAT_S
    if not math.isfinite(value):
        return DEFAULT_HEARTBEAT_S
    return min(max(value, MIN_HEARTBEAT_S), MAX_HEARTBEAT_S)
