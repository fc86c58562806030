"""The daemon side of the control channel: one thread, one selector, hundreds of clients.

Training processes connect, register themselves and send heartbeats; the
command line connects to list clients or send a command. Every connection's
pid and uid come from SO_PEERCRED. A connection that breaks the protocol,
sends an oversized frame, stalls mid-frame, stays silent or stops reading is
dropped with one log line; nothing a peer sends can stop the loop.

Other threads talk to the loop through ``_call_soon`` (a queue and a wake-up
socket); only the loop thread touches connections.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import math
import os
import queue
import re
import resource
import selectors
import socket
import stat
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from watchdog import __version__
from watchdog.config import ConfigError, ControlSettings
from watchdog.control.protocol import (
    COMMANDS,
    MAX_ERROR_CHARS,
    MAX_SOCKET_PATH_BYTES,
    FrameDecoder,
    ProtocolError,
    encode,
    opt_float,
    opt_int,
    opt_text,
)
from watchdog.control.registry import (
    AllocatorReport,
    ClientInfo,
    CommandResult,
    PeerCred,
    Registration,
    may_command,
    result_from_message,
)
from watchdog.errors import WatchdogError
from watchdog.identity import start_ticks

_CRED = struct.Struct("3i")
_TICK_S = 0.2
_PID_TEXT = re.compile(r"[0-9]{1,10}")
"""A send target given as text that names a pid (ASCII digits; ``"²".isdigit()`` is true)."""
_ACCEPTS_PER_EVENT = 64
# Out of file descriptors, the listener stays readable: accepting again at once would spin.
_ACCEPT_PAUSE_S = 1.0
# Descriptors the daemon needs besides its clients: NVML, /proc reads, scrapes, the journal.
_FD_RESERVE = 256
_SYNCED_COMMANDS = frozenset({"checkpoint", "checkpoint_and_restart"})

ReportCallback = Callable[[ClientInfo, AllocatorReport], None]
RequestSentCallback = Callable[[int, str, list[ClientInfo]], None]
"""Called when a command someone requested over the socket (``gpu-watchdog send``), not the
policy, is sent: (requester uid, command, the clients it went to)."""
RequestDoneCallback = Callable[[int, list[CommandResult]], None]
"""Called when that command's results are in: (requester uid, one per client)."""
LeaveCallback = Callable[[ClientInfo, bool, str, bool], None]
"""Called when a registered client's connection closes: (client, detached, error, peer_gone):
``detached`` says it sent ``detach`` first, ``error`` is the exception it reported dying of,
``peer_gone`` that the peer closed the connection (the daemon did not drop it)."""


class ControlError(WatchdogError):
    """The control socket cannot be set up, or a command cannot be sent."""


class UnknownTargetError(ControlError):
    """No registered client matches the pid or job given."""


class CommandPermissionError(ControlError):
    """The requester is neither root nor the owner of the target process."""


def peer_cred(sock: socket.socket, proc_root: Path = Path("/proc")) -> PeerCred:
    """The kernel's view of who is on the other end of a Unix socket, and when it started."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return PeerCred(pid, uid, gid, start_ticks(pid, proc_root))


@dataclass(eq=False)
class _Client:
    peer: PeerCred
    registration: Registration
    registered_at: float
    last_seen: float
    report: AllocatorReport = field(default_factory=AllocatorReport)
    reported_at: float | None = None
    steps_per_s: float | None = None
    commands: Counter[str] = field(default_factory=Counter)
    farewell: dict[str, str] | None = None  # its `detach` message, once sent

    def info(self, now: float) -> ClientInfo:
        return ClientInfo(
            pid=self.peer.pid,
            uid=self.peer.uid,
            gid=self.peer.gid,
            registration=self.registration,
            registered_at=self.registered_at,
            last_seen=self.last_seen,
            report=self.report,
            heartbeat_age_s=max(0.0, now - (self.reported_at or self.registered_at)),
            commands=dict(self.commands),
            started=self.peer.started,
        )


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: PeerCred
    decoder: FrameDecoder
    opened_at: float
    last_seen: float
    out: bytearray = field(default_factory=bytearray)
    frame_started: float | None = None
    client: _Client | None = None
    requests: int = 0  # `send` requests still waiting for results
    closed: bool = False
    peer_gone: bool = False  # the peer closed (or broke) it, not the daemon


@dataclass(eq=False)
class _Pending:
    conn: _Conn
    client: _Client
    command: str
    deadline: float
    done: Callable[[CommandResult], None]


def sync_step(clients: Iterable[_Client], now: float, lead_s: float) -> int | None:
    """A step every client has not reached yet, ``lead_s`` seconds ahead; None if unknown.

    Used so that all ranks of a job checkpoint at the same step: the latest
    reported step, plus what each rank's rate says it did since, plus margin.
    """
    ahead = []
    for client in clients:
        if client.report.step is None or client.reported_at is None:
            return None
        rate = client.steps_per_s or 0.0
        ahead.append(client.report.step + rate * (now - client.reported_at + lead_s))
    return math.ceil(max(ahead)) + 1 if ahead else None


STOPPING_ERROR = "daemon stopping"
"""The error of every command still unanswered when the daemon stops: the process may
still be running it (a checkpoint takes minutes), so it is not over."""


def room_for_clients(max_clients: int) -> int:
    """How many clients the open-file limit leaves room for, raising it where it can.

    systemd starts services with a soft limit of 1024: ``max_clients`` connections
    and the daemon's own files would not fit, and an accept failing with EMFILE
    fails the host source's /proc reads with it. The soft limit is raised towards
    the hard one; where even that is short, fewer clients are served.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_clients + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return max_clients
    return max(1, min(max_clients, soft - _FD_RESERVE))


def check_settings(settings: ControlSettings) -> None:
    """What only this machine can tell of the socket settings: checked by ``check-config``
    and by ``run`` before anything starts.

    Raises:
        ConfigError: the socket path is empty or too long, or its group does not exist here.
    """
    if not settings.socket_path:
        # Else binding fails on whatever the empty path resolves to, as a runtime error.
        raise ConfigError("control.socket_path: socket path is empty")
    size = len(os.fsencode(settings.socket_path))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"control.socket_path: {size} bytes, a Unix socket's path takes at most "
            f"{MAX_SOCKET_PATH_BYTES}"
        )
    if settings.socket_group:
        try:
            grp.getgrnam(settings.socket_group)
        except KeyError:
            raise ConfigError(
                f"control.socket_group: no such group {settings.socket_group!r} on this machine"
            ) from None


class ControlServer:
    """Serves the control socket in its own thread. ``start()``/``stop()``; see docs/protocol.md."""

    def __init__(
        self,
        settings: ControlSettings,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self.settings = settings
        # The host source's procfs: both must see the same start time for the same process.
        self._proc_root = proc_root
        self.on_report: ReportCallback | None = None
        self.on_leave: LeaveCallback | None = None
        self.on_request_sent: RequestSentCallback | None = None
        self.on_request_done: RequestDoneCallback | None = None
        self._log = logger if logger is not None else structlog.get_logger("watchdog.control")
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._conns: dict[int, _Conn] = {}
        self._clients: dict[int, _Client] = {}  # by pid
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._command_counts: Counter[tuple[str, str]] = Counter()
        self._drops: Counter[str] = Counter()
        self._report_errors = 0
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inode: tuple[int, int] | None = None
        self._max_clients = settings.max_clients
        self._accept_paused_until: float | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        """Where the socket is bound."""
        return self.settings.socket_path

    def start(self) -> None:
        """Bind the socket and start serving in a background thread.

        Raises:
            ControlError: the path is unusable or another daemon already listens there.
        """
        if self._thread is not None:
            raise ControlError("control server already started")
        self._max_clients = room_for_clients(self.settings.max_clients)
        if self._max_clients < self.settings.max_clients:
            self._log.warning(
                "control_max_clients_lowered",
                max_clients=self._max_clients,
                configured=self.settings.max_clients,
                reason="the open-file limit (RLIMIT_NOFILE) leaves no room for more",
            )
        self._listener = self._bind(Path(self.settings.socket_path))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="watchdog-control", daemon=True)
        self._thread.start()
        self._log.info("control_listening", path=self.settings.socket_path)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection, fail pending commands, remove the socket file."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self, path: Path) -> socket.socket:
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ControlError(f"socket path too long (at most {MAX_SOCKET_PATH_BYTES} bytes)")
        directory = path.parent
        if not directory.exists():
            try:
                directory.mkdir(mode=0o750, parents=True)
                os.chmod(directory, 0o750)
            except OSError as exc:
                raise ControlError(f"{directory}: cannot create socket directory: {exc}") from None
        self._remove_stale(path)
        gid = -1
        if self.settings.socket_group:
            try:
                gid = grp.getgrnam(self.settings.socket_group).gr_gid
            except KeyError:
                raise ControlError(
                    f"control.socket_group: no such group {self.settings.socket_group!r}"
                ) from None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no moment where the socket is more open than asked
        try:
            listener.bind(str(path))
        except OSError as exc:
            listener.close()
            raise ControlError(f"{path}: cannot bind control socket: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        try:
            os.chmod(path, int(self.settings.socket_mode, 8))
            if gid != -1:
                os.chown(path, -1, gid)
        except OSError as exc:
            listener.close()
            raise ControlError(f"{path}: cannot set socket mode or group: {exc}") from None
        listener.listen(min(self.settings.max_clients, socket.SOMAXCONN))
        listener.setblocking(False)
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        return listener

    @staticmethod
    def _remove_stale(path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path}: exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # a socket nobody listens on: left by a dead daemon
            return
        finally:
            probe.close()
        raise ControlError(f"{path}: another daemon is already listening on this socket")

    # --- public queries and commands ------------------------------------------------------

    def clients(self) -> list[ClientInfo]:
        """A snapshot of the registered clients, ordered by job, rank and pid."""
        now = self._clock()
        with self._lock:
            infos = [client.info(now) for client in self._clients.values()]
        return sorted(infos, key=lambda c: (c.job, c.registration.rank or 0, c.pid))

    def stats(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Commands by (kind, result) and dropped connections by reason, since start."""
        with self._lock:
            return dict(self._command_counts), dict(self._drops)

    def collector(self) -> Any:
        """A prometheus_client collector exporting per-client and per-command metrics."""
        from watchdog.control.metrics import ControlCollector

        return ControlCollector(self)

    def send_command(
        self,
        target: int | str,
        command: str,
        requester_uid: int,
        *,
        args: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> list[CommandResult]:
        """Send ``command`` to a pid or to every rank of a job and wait for the results.

        A result per matching client, ``ok=False`` where it failed, timed out or
        disconnected. Blocks; never call it from ``on_report``.

        Raises:
            UnknownTargetError: no registered client is that pid or job.
            CommandPermissionError: ``requester_uid`` is neither 0 nor the target's uid.
            ControlError: unknown command, or the server is not running.
        """
        wait = (timeout_s or self.settings.command_timeout_s) + 5.0
        return self.send_command_async(
            target, command, requester_uid, args=args, timeout_s=timeout_s
        ).result(wait)

    def send_command_async(
        self,
        target: int | str,
        command: str,
        requester_uid: int,
        *,
        args: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Future[list[CommandResult]]:
        """Like ``send_command`` but returns a Future (errors are set on it)."""
        outer: Future[list[CommandResult]] = Future()

        def dispatch() -> None:
            try:
                inner = self._dispatch(target, command, requester_uid, args or {}, timeout_s)
            except ControlError as exc:
                outer.set_exception(exc)
                return
            inner.add_done_callback(lambda f: outer.set_result(f.result()))

        if self._thread is None or self._stopping.is_set():
            outer.set_exception(ControlError("control server is not running"))
        elif threading.current_thread() is self._thread:
            dispatch()
        else:
            self._call_soon(dispatch)
        return outer

    # --- the loop ---------------------------------------------------------------------------

    def _call_soon(self, call: Callable[[], None]) -> None:
        self._calls.put(call)
        self._wake()

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")

    def _serve(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping.is_set():
                for key, mask in self._selector.select(_TICK_S):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._on_event(key.data, mask)
                self._run_calls()
                self._check_deadlines()
                self._resume_accepting()
        except Exception:  # pragma: no cover - a bug; logged so the daemon can report it
            self._log.exception("control_loop_failed")
        finally:
            self._shutdown()

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _run_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call()
            except Exception:  # pragma: no cover - a bug in a queued call
                self._log.exception("control_call_failed")

    def _shutdown(self) -> None:
        for pending in list(self._pending.values()):
            self._finish(pending, error=STOPPING_ERROR)
        for conn in list(self._conns.values()):
            self._close(conn, None)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()
        self._remove_own_socket()
        while not self._calls.empty():  # fail what arrived too late
            with contextlib.suppress(Exception):
                self._calls.get_nowait()()
        self._log.debug("control_closed", path=self.settings.socket_path)

    def _remove_own_socket(self) -> None:
        try:
            st = os.stat(self.settings.socket_path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.socket_path)

    # --- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        assert self._selector is not None
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving who is connected
                self._count_drop("accept_error")
                self._log.warning("control_accept_failed", error=str(exc), paused_s=_ACCEPT_PAUSE_S)
                self._selector.unregister(self._listener)
                self._accept_paused_until = self._clock() + _ACCEPT_PAUSE_S
                return
            try:
                peer = peer_cred(sock, self._proc_root)
            except OSError as exc:
                self._count_drop("no_credentials")
                sock.close()
                self._log.warning("control_peer_credentials_unreadable", error=str(exc))
                continue
            reason = self._refusal(peer)
            if reason:
                self._count_drop(reason)
                self._log.warning("control_connection_refused", reason=reason, **_who(peer))
                sock.close()
                continue
            sock.setblocking(False)
            now = self._clock()
            conn = _Conn(sock, peer, FrameDecoder(self.settings.max_message_bytes), now, now)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _resume_accepting(self) -> None:
        """Listen again once a pause after a failed accept is over."""
        if self._accept_paused_until is None or self._clock() < self._accept_paused_until:
            return
        assert self._selector is not None
        assert self._listener is not None
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._accept_paused_until = None

    def _refusal(self, peer: PeerCred) -> str:
        if len(self._conns) >= self._max_clients:
            return "connection_cap"
        same_uid = sum(1 for conn in self._conns.values() if conn.peer.uid == peer.uid)
        if same_uid >= self.settings.max_clients_per_uid:
            return "per_uid_cap"
        return ""

    def _on_event(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(conn)
        if mask & selectors.EVENT_WRITE and not conn.closed:
            self._flush(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            conn.peer_gone = True
            self._drop(conn, "read_error", str(exc))
            return
        if not data:
            conn.peer_gone = True
            self._close(conn, "closed by peer")
            return
        now = self._clock()
        conn.last_seen = now
        try:
            for message in conn.decoder.feed(data):
                self._handle(conn, message)
                if conn.closed:
                    return
        except ProtocolError as exc:
            self._drop(conn, "malformed", str(exc))
            return
        except Exception as exc:
            # A message this server mishandles costs its sender the connection, never
            # the loop every other client and the daemon's commands depend on.
            self._log.exception("control_message_failed", **_who(conn.peer))
            self._drop(conn, "internal_error", f"{type(exc).__name__}: {exc}"[:512])
            return
        if not conn.decoder.partial:
            conn.frame_started = None
        elif conn.frame_started is None:
            conn.frame_started = now

    def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        if conn.closed:
            return
        try:
            frame = encode(message, self.settings.max_message_bytes)
        except (ProtocolError, ValueError, TypeError) as exc:
            request_id = message.get("id")
            if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
                request_id = None
            frame = encode({"type": "error", "id": request_id, "message": str(exc)[:512]})
        conn.out += frame
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        assert self._selector is not None
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._drop(conn, "write_error", str(exc))
            return
        if len(conn.out) > 4 * self.settings.max_message_bytes:
            self._drop(conn, "not_reading", f"{len(conn.out)} bytes unread")
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self._selector.modify(conn.sock, events, conn)

    def _drop(self, conn: _Conn, reason: str, detail: str) -> None:
        """Close a misbehaving connection with one warning."""
        self._count_drop(reason)
        self._log.warning(
            "control_client_dropped", reason=reason, error=detail, job=_job(conn), **_who(conn.peer)
        )
        self._close(conn, None)

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self._drops[reason] += 1

    def _close(self, conn: _Conn, why: str | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        client = conn.client
        if client is not None:
            with self._lock:
                current = self._clients.get(client.peer.pid) is client
                if current:
                    del self._clients[client.peer.pid]
            if why:
                self._log.info(
                    "control_client_left",
                    reason=why,
                    job=client.registration.job,
                    **_who(client.peer),
                )
            if current:
                self._left(client, conn.peer_gone)
        for command_id, pending in list(self._pending.items()):
            if pending.conn is conn:
                del self._pending[command_id]
                self._finish(pending, error="client disconnected before answering")

    def _check_deadlines(self) -> None:
        now = self._clock()
        timeout = self.settings.read_timeout_s
        for conn in list(self._conns.values()):
            if conn.frame_started is not None and now - conn.frame_started > timeout:
                self._drop(conn, "stalled", f"frame incomplete after {timeout:g} s")
            elif conn.client is None and not conn.requests and now - conn.last_seen > timeout:
                self._drop(conn, "idle", f"no request within {timeout:g} s")
            elif conn.client is not None and now - conn.last_seen > self.settings.client_timeout_s:
                self._drop(conn, "silent", f"no heartbeat for {self.settings.client_timeout_s:g} s")
        for command_id, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[command_id]
                self._finish(pending, error="no result before the command timed out")

    # --- messages ---------------------------------------------------------------------------

    def _handle(self, conn: _Conn, message: dict[str, Any]) -> None:
        kind = message["type"]
        handlers: dict[str, Callable[[_Conn, dict[str, Any]], None]] = {
            "register": self._on_register,
            "report": self._on_report,
            "result": self._on_result,
            "list_clients": self._on_list,
            "send": self._on_send,
            "detach": self._on_detach,
            "ping": lambda c, m: self._send(c, {"type": "pong", "id": m.get("id")}),
        }
        handler = handlers.get(kind)
        if handler is None:
            self._send(
                conn,
                {
                    "type": "error",
                    "id": message.get("id"),
                    "code": "unknown_type",
                    "message": f"unknown type {kind!r}",
                },
            )
            return
        handler(conn, message)

    def _on_register(self, conn: _Conn, message: dict[str, Any]) -> None:
        if conn.client is not None:
            raise ProtocolError("register sent twice on one connection")
        registration = Registration.from_message(message, conn.peer)
        owners = self._job_owners(registration.job, conn.peer.pid)
        if conn.peer.uid != 0 and owners - {conn.peer.uid}:
            # The policy and `send JOB` act on a job by its name: a process of another user
            # joining it could have that user's job checkpointed, restarted, or its budget
            # spent. A job belongs to the user of its registered processes; root may join any.
            self._send(
                conn,
                {
                    "type": "error",
                    "id": message.get("id"),
                    "code": "job_taken",
                    "message": f"job {registration.job!r} is registered by another user "
                    f"(uid {min(owners - {conn.peer.uid})}); pick another job name",
                },
            )
            self._log.warning(
                "control_register_refused",
                job=registration.job,
                reason="job_taken",
                **_who(conn.peer),
            )
            self._close(conn, None)
            return
        now = self._clock()
        client = _Client(conn.peer, registration, now, now)
        old = self._clients.get(conn.peer.pid)
        if old is not None:
            # Its pending commands fail with it: they were meant for that connection's
            # process, which may not be this one (a reused pid), so none is passed on.
            reused = None not in (old.peer.started, conn.peer.started) and (
                old.peer.started != conn.peer.started
            )
            why = "pid reused by a new process" if reused else "replaced by a new registration"
            for other in list(self._conns.values()):
                if other.client is old:
                    self._close(other, why)
        conn.client = client
        with self._lock:
            self._clients[conn.peer.pid] = client
        self._send(
            conn,
            {
                "type": "registered",
                "heartbeat_s": self.settings.heartbeat_s,
                "max_message_bytes": self.settings.max_message_bytes,
                "server_version": __version__,
            },
        )
        self._log.info(
            "control_client_registered",
            job=registration.job,
            rank=registration.rank,
            device=registration.device,
            **_who(conn.peer),
        )

    def _job_owners(self, job: str, pid: int) -> set[int]:
        """The uids of the registered processes of ``job``, other than ``pid``."""
        with self._lock:
            return {
                c.peer.uid
                for c in self._clients.values()
                if c.registration.job == job and c.peer.pid != pid
            }

    def _on_report(self, conn: _Conn, message: dict[str, Any]) -> None:
        client = _registered(conn)
        report = AllocatorReport.from_message(message)
        device = opt_text(message, "device", one_line=True)
        uuid = opt_text(message, "device_uuid", one_line=True)
        now = self._clock()
        with self._lock:
            if device and (device, uuid) != (
                client.registration.device,
                client.registration.device_uuid,
            ):
                client.registration = replace(client.registration, device=device, device_uuid=uuid)
            previous, previous_t = client.report.step, client.reported_at
            if (
                report.step is not None
                and previous is not None
                and previous_t is not None
                and now > previous_t
                and report.step >= previous
            ):
                client.steps_per_s = (report.step - previous) / (now - previous_t)
            client.report, client.reported_at, client.last_seen = report, now, now
            info = client.info(now)
        if self.on_report is not None:
            try:
                self.on_report(info, report)
            except Exception:
                self._report_errors += 1
                if self._report_errors in (1, 10, 100) or self._report_errors % 1000 == 0:
                    self._log.exception("control_on_report_failed", failures=self._report_errors)

    def _on_detach(self, conn: _Conn, message: dict[str, Any]) -> None:
        """A client says goodbye before closing: it is leaving on purpose, or dying of an error."""
        client = _registered(conn)
        client.farewell = {
            "reason": opt_text(message, "reason", one_line=True),
            "error": opt_text(message, "error", MAX_ERROR_CHARS),
        }

    def _left(self, client: _Client, peer_gone: bool) -> None:
        """Tell ``on_leave`` that a registered client is gone, and how it went.

        Not while the server stops: every connection closes then, and no client left.
        """
        if self.on_leave is None or self._stopping.is_set():
            return
        farewell = client.farewell or {}
        try:
            self.on_leave(
                client.info(self._clock()),
                client.farewell is not None,
                farewell.get("error", ""),
                peer_gone,
            )
        except Exception:
            self._report_errors += 1
            self._log.exception("control_on_leave_failed", **_who(client.peer))

    def _on_result(self, conn: _Conn, message: dict[str, Any]) -> None:
        client = _registered(conn)
        command_id = opt_int(message, "id")
        pending = self._pending.get(command_id) if command_id is not None else None
        if pending is None or pending.conn is not conn:
            self._log.info("control_result_ignored", id=command_id, **_who(conn.peer))
            return
        del self._pending[command_id]  # type: ignore[arg-type]
        try:
            result = result_from_message(message, client.info(self._clock()), pending.command)
        except ProtocolError as exc:
            # Whoever asked still gets an answer; the connection is dropped as malformed.
            self._finish(pending, error=f"malformed result: {exc}")
            raise
        self._record(pending, result)

    def _on_list(self, conn: _Conn, message: dict[str, Any]) -> None:
        self._send(
            conn,
            {
                "type": "clients",
                "id": message.get("id"),
                "clients": [c.to_dict() for c in self.clients()],
            },
        )

    def _on_send(self, conn: _Conn, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        target = message.get("target")
        command = message.get("command")
        args = message.get("args") or {}
        if not isinstance(target, (int, str)) or isinstance(target, bool):
            raise ProtocolError("send needs a target: a pid or a job id")
        if not isinstance(command, str) or not isinstance(args, dict):
            raise ProtocolError("send needs a string command and an object args")
        timeout_s = opt_float(message, "timeout_s")
        if timeout_s is not None and not timeout_s > 0:
            raise ProtocolError(f"timeout_s must be > 0, got {timeout_s:g}")
        try:
            done = self._dispatch(target, command, conn.peer.uid, args, timeout_s)
        except ControlError as exc:
            self._send(
                conn,
                {"type": "error", "id": request_id, "code": _error_code(exc), "message": str(exc)},
            )
            return
        conn.requests += 1
        uid, on_sent, on_done = conn.peer.uid, self.on_request_sent, self.on_request_done
        if on_sent is not None:
            now = self._clock()
            sent_to = [client.info(now) for client in self._resolve(target)]
            self._contain(lambda: on_sent(uid, command, sent_to))

        def reply(future: Future[list[CommandResult]]) -> None:
            conn.requests -= 1
            results = future.result()
            if on_done is not None:  # first: once `send` returns, `history` shows the result
                self._contain(lambda: on_done(uid, results))
            self._send(
                conn,
                {
                    "type": "send_result",
                    "id": request_id,
                    "results": [r.to_dict() for r in results],
                },
            )

        done.add_done_callback(reply)

    def _contain(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:  # the audit trail failing must not take the command with it
            self._log.exception("control_on_request_failed")

    # --- commands ---------------------------------------------------------------------------

    def _resolve(self, target: int | str) -> list[_Client]:
        if isinstance(target, int) or _PID_TEXT.fullmatch(target):
            client = self._clients.get(int(target))
            if client is not None:
                return [client]
        matches = [c for c in self._clients.values() if c.registration.job == str(target)]
        return sorted(matches, key=lambda c: (c.registration.rank or 0, c.peer.pid))

    def _dispatch(
        self,
        target: int | str,
        command: str,
        requester_uid: int,
        args: dict[str, Any],
        timeout_s: float | None,
    ) -> Future[list[CommandResult]]:
        if command not in COMMANDS:
            raise ControlError(f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
        clients = self._resolve(target)
        if not clients:
            raise UnknownTargetError(f"no registered client is pid or job {target!r}")
        refused = [c.peer.pid for c in clients if not may_command(requester_uid, c.peer.uid)]
        if refused:
            raise CommandPermissionError(
                f"uid {requester_uid} may not command pid {refused[0]}: "
                "only root and the process's own user may"
            )
        now = self._clock()
        args = dict(args)
        if command in _SYNCED_COMMANDS and len(clients) > 1 and "at_step" not in args:
            at_step = sync_step(clients, now, lead_s=max(1.0, self.settings.heartbeat_s))
            if at_step is not None:
                args["at_step"] = at_step
        timeout = timeout_s or self.settings.command_timeout_s
        combined: Future[list[CommandResult]] = Future()
        results: list[CommandResult | None] = [None] * len(clients)

        def collect(index: int) -> Callable[[CommandResult], None]:
            def done(result: CommandResult) -> None:
                results[index] = result
                if all(r is not None for r in results):
                    combined.set_result([r for r in results if r is not None])

            return done

        conns = {id(c): conn for conn in self._conns.values() if (c := conn.client) is not None}
        for index, client in enumerate(clients):
            command_id = next(self._ids)
            pending = _Pending(conns[id(client)], client, command, now + timeout, collect(index))
            self._pending[command_id] = pending
            self._send(
                pending.conn,
                {"type": "command", "id": command_id, "command": command, "args": args},
            )
            self._log.info(
                "control_command_sent",
                command=command,
                id=command_id,
                job=client.registration.job,
                requester_uid=requester_uid,
                **_who(client.peer),
            )
        return combined

    def _finish(self, pending: _Pending, *, error: str) -> None:
        client = pending.client
        self._record(
            pending,
            CommandResult(
                pid=client.peer.pid,
                job=client.registration.job,
                rank=client.registration.rank,
                command=pending.command,
                ok=False,
                error=error,
            ),
        )

    def _record(self, pending: _Pending, result: CommandResult) -> None:
        with self._lock:
            self._command_counts[(result.command, result.outcome)] += 1
            pending.client.commands[f"{result.command}:{result.outcome}"] += 1
        log = self._log.info if result.ok else self._log.warning
        log(
            "control_command_finished",
            command=result.command,
            ok=result.ok,
            duration_s=result.duration_s,
            error=result.error or None,
            job=result.job,
            pid=result.pid,
        )
        pending.done(result)


def _registered(conn: _Conn) -> _Client:
    if conn.client is None:
        raise ProtocolError("register first")
    return conn.client


def _who(peer: PeerCred) -> dict[str, int]:
    return {"pid": peer.pid, "uid": peer.uid}


def _job(conn: _Conn) -> str | None:
    return conn.client.registration.job if conn.client is not None else None


def _error_code(exc: ControlError) -> str:
    if isinstance(exc, UnknownTargetError):
        return "unknown_target"
    if isinstance(exc, CommandPermissionError):
        return "permission_denied"
    return "bad_request"


__all__ = [
    "ClientInfo",
    "CommandPermissionError",
    "CommandResult",
    "ControlError",
    "ControlServer",
    "UnknownTargetError",
]
