"""The control channel's wire format: versioned, length-prefixed JSON frames.

A frame is a 4-byte big-endian unsigned length ``N`` followed by ``N`` bytes
of UTF-8 JSON holding one object. Every object carries ``"v": 1`` (the
protocol version) and ``"type"``. The length is checked against the maximum
before any buffer for the body is grown, so a frame announcing 0xFFFFFFFF
bytes costs four bytes of memory. docs/protocol.md is the specification.

Nothing here touches a socket except the two small blocking helpers at the
end, used by the client library and the command line.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
HARD_MAX_MESSAGE_BYTES = 16 << 20
"""No peer ever accepts more than this, whatever it is configured to."""

COMMANDS = (
    "empty_cache",
    "dump_snapshot",
    "dump_stacks",
    "checkpoint",
    "checkpoint_and_restart",
    "restart_group",
)
"""Commands the daemon may send to a training process."""

MAX_TEXT = 256
"""Longest identity string (job, device, host) a client may register."""
MAX_ERROR_CHARS = 4096
"""Longest error text a result or a farewell may carry; a client cuts its own to fit."""
MAX_SOCKET_PATH_BYTES = 103
"""A Unix socket's path must fit ``sun_path`` (108 bytes on Linux, 104 elsewhere) with its NUL."""
MAX_LIST_ITEMS = 64
"""Most entries a list of names (``register``'s ``commands``) may hold."""
MAX_GROWTH_PLANNED_S = 6 * 3600.0
"""The longest growth plan the daemon honours at once (the detection engine's
``MAX_PLANNED_GROWTH_S``): a report planning longer is read as planning this long."""
_LONGEST_WAIT_S = 3600.0
"""Longest single wait on a socket: ``settimeout`` overflows past about 2^63 ns."""
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0, DEL and C1 (Unicode category Cc): what moves a terminal's cursor or starts an escape."""
_SURROGATES = re.compile("[\ud800-\udfff]")
"""Lone UTF-16 surrogates: valid as JSON escapes (``"\\ud800"``), yet no UTF-8 can encode one.
A pair of escapes makes one character when decoded, so any surrogate left is lone."""


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol; the connection that sent it is dropped."""


def encode(message: dict[str, Any], max_bytes: int = HARD_MAX_MESSAGE_BYTES) -> bytes:
    """Return one frame holding ``message`` (``"v"`` is added).

    Raises:
        ProtocolError: if the encoded body is longer than ``max_bytes``.
    """
    body = json.dumps(
        {"v": VERSION, **message}, separators=(",", ":"), allow_nan=False, ensure_ascii=False
    ).encode()
    if len(body) > max_bytes:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the maximum of {max_bytes}")
    return HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    # ``1e999`` is valid JSON and parses to inf, which no reply could echo back.
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text[:32]} is out of range")
    return value


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse one frame body into a message; raise ProtocolError if it is not one."""
    try:
        message = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except ProtocolError:
        raise
    # ValueError holds JSONDecodeError, UnicodeDecodeError and an integer past
    # Python's digit limit (``sys.set_int_max_str_digits``).
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"body is not UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"body is a JSON {type(message).__name__}, expected an object")
    if _SURROGATE_ESCAPE.search(body) and _holds_lone_surrogate(message):
        # Every reply echoes the id, and names reach logs and metrics: none can hold one.
        raise ProtocolError("body holds a lone surrogate escape (\\ud800-\\udfff): not text")
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this side speaks {VERSION})"
        )
    if not isinstance(message.get("type"), str):
        raise ProtocolError("message has no string 'type'")
    return message


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate; a pair of them (an emoji) is one character."""


def _holds_lone_surrogate(message: dict[str, Any]) -> bool:
    try:
        json.dumps(message, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class FrameDecoder:
    """Turns a byte stream into messages, checking every frame's length before buffering it."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame in progress

    @property
    def partial(self) -> bool:
        """True while part of a frame has arrived but not all of it (a bare header counts)."""
        return bool(self._buffer) or self._need is not None

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        """Add ``data`` and yield every message it completes.

        Raises:
            ProtocolError: on a zero or oversized length, or a body that is not a message.
        """
        self._buffer += data
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return
                (length,) = HEADER.unpack_from(self._buffer)
                if length == 0 or length > self.max_bytes:
                    raise ProtocolError(f"frame length {length} outside 1..{self.max_bytes} bytes")
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return
            body = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            self._need = None
            yield decode_body(body)


# --- field checks shared by both sides ------------------------------------------------------


def opt_int(message: dict[str, Any], key: str) -> int | None:
    """The non-negative integer at ``key``, or None when absent or null; else ProtocolError."""
    value = message.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ProtocolError(f"{key} must be a non-negative integer or null, got {value!r}")
    return value


def opt_float(message: dict[str, Any], key: str) -> float | None:
    """The finite number at ``key``, or None when absent or null; else ProtocolError."""
    value = message.get(key)
    if value is None:
        return None
    problem = f"{key} must be a finite number or null, got {value!r:.32}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(problem)
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits: valid JSON, no double
        raise ProtocolError(problem) from None
    if not math.isfinite(number):
        raise ProtocolError(problem)
    return number


def opt_text(
    message: dict[str, Any], key: str, limit: int = MAX_TEXT, *, one_line: bool = False
) -> str:
    """The string at ``key`` (empty when absent), at most ``limit`` characters; else error.

    Lone surrogates (U+D800 to U+DFFF) are refused in any text: no UTF-8 can
    encode one, so a job name holding one would fail every reply echoing it,
    every log line and every scrape of the metrics that label it.

    ``one_line`` also refuses control characters (C0, DEL, C1): names that
    ``gpu-watchdog clients`` and the logs print must not move the cursor of
    whoever reads them, nor start a terminal escape sequence.
    """
    value = message.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{key} must be a string of at most {limit} characters")
    if _SURROGATES.search(value):
        # repr escapes the surrogate, so the error itself stays encodable.
        raise ProtocolError(f"{key} must hold no lone surrogates, got {value[:64]!r}")
    if one_line and _CONTROL_CHARS.search(value):
        raise ProtocolError(f"{key} must hold no control characters, got {value[:64]!r}")
    return value


def opt_names(message: dict[str, Any], key: str, limit: int = MAX_LIST_ITEMS) -> list[str]:
    """The list of names at ``key`` (empty when absent or null); else ProtocolError.

    At most ``limit`` entries, each a string of 1 to 64 characters with no
    control characters and no lone surrogates. Names this side does not know
    are kept: a newer peer may know more.
    """
    value = message.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"{key} must be a list of at most {limit} names")
    for item in value:
        if (
            not isinstance(item, str)
            or not 0 < len(item) <= 64
            or _CONTROL_CHARS.search(item)
            or _SURROGATES.search(item)
        ):
            raise ProtocolError(f"{key} must hold names (strings of 1 to 64 characters)")
    return list(value)


# --- blocking helpers (client library, command line) ----------------------------------------


def send_message(sock: socket.socket, message: dict[str, Any], max_bytes: int) -> None:
    """Write one message to a blocking socket."""
    sock.sendall(encode(message, max_bytes))


def recv_message(
    sock: socket.socket, decoder: FrameDecoder, pending: list[dict[str, Any]], timeout_s: float
) -> dict[str, Any]:
    """Read the next message from a blocking socket within ``timeout_s`` seconds.

    ``pending`` holds messages already decoded but not yet returned (one read
    may complete several); pass the same list on every call.

    Raises:
        TimeoutError: nothing complete arrived in time.
        ConnectionError: the peer closed the connection.
        ProtocolError: the peer sent something that is not a message.
    """
    deadline = time.monotonic() + timeout_s
    while not pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete message within {timeout_s:g} s")
        sock.settimeout(min(remaining, _LONGEST_WAIT_S))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue  # the deadline, checked above, says whether time is up
        if not data:
            raise ConnectionError("connection closed by the peer")
        pending.extend(decoder.feed(data))
    return pending.pop(0)
