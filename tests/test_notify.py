"""The sd_notify client: messages on a real AF_UNIX datagram socket, no-ops outside systemd."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchdog.daemon.notify import Notifier
from watchdog.daemon.service import ServiceNotifier


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket (short path: sun_path <= 108)."""
    directory = tempfile.mkdtemp(prefix="wd-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def _received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    """READY, STATUS and STOPPING arrive as KEY=VALUE datagrams on $NOTIFY_SOCKET."""
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    assert _received(sock)["READY"] == "1"
    notifier.status("polling 4 GPUs")
    assert _received(sock) == {"STATUS": "polling 4 GPUs"}
    notifier.stopping()
    assert _received(sock)["STOPPING"] == "1"


def test_status_is_kept_to_one_line(listener: tuple[socket.socket, str]) -> None:
    """A newline in a status cannot inject another assignment such as READY=1."""
    sock, path = listener
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("bad\nREADY=1")
    assert _received(sock) == {"STATUS": "bad READY=1"}


def test_abstract_socket_is_supported() -> None:
    """A NOTIFY_SOCKET starting with '@' names a socket in the abstract namespace."""
    name = f"wd-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _received(sock)["READY"] == "1"


def test_watchdog_interval_is_half_of_watchdog_usec(listener: tuple[socket.socket, str]) -> None:
    """With WatchdogSec=10 the daemon pings every 5 s, and each ping sends WATCHDOG=1."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval_s() == 5.0
    notifier.watchdog_ping()
    assert _received(sock) == {"WATCHDOG": "1"}


def test_watchdog_meant_for_another_pid_is_ignored(listener: tuple[socket.socket, str]) -> None:
    """WATCHDOG_PID naming another process (a parent's watchdog) disables pings here."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}
    notifier = Notifier.from_env(env, pid=4242)
    assert notifier.watchdog_interval_s() is None
    notifier.watchdog_ping()
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.mark.parametrize("usec", ["", "0", "-5", "ten"])
def test_bad_watchdog_usec_means_no_watchdog(usec: str) -> None:
    """An empty, zero, negative or non-numeric WATCHDOG_USEC means no watchdog."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval_s() is None


def test_outside_systemd_everything_is_a_no_op() -> None:
    """Without NOTIFY_SOCKET nothing is sent and no watchdog interval is reported."""
    notifier = Notifier.from_env({"WATCHDOG_USEC": "10000000"})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.watchdog_ping()
    notifier.stopping()
    assert notifier.watchdog_interval_s() is None
    assert notifier.send(READY="1") is False


def test_unsupported_socket_address_is_a_no_op() -> None:
    """A vsock: or relative NOTIFY_SOCKET is ignored rather than sent to a wrong path."""
    for raw in ("vsock:2:1234", "relative/notify"):
        assert not Notifier.from_env({"NOTIFY_SOCKET": raw}).enabled


def test_send_failure_never_raises(tmp_path: Path) -> None:
    """A notify socket that vanished makes every send return False, never raise."""
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "2000000"}
    )
    notifier.ready()
    notifier.watchdog_ping()
    notifier.status("still alive")
    notifier.stopping()
    assert notifier.send(WATCHDOG="1") is False


def test_notifier_fits_the_daemon_protocol() -> None:
    """Notifier provides every method the daemon's ServiceNotifier protocol asks for."""
    notifier: ServiceNotifier = Notifier(None)
    for name in ("ready", "status", "stopping", "watchdog_ping", "watchdog_interval_s"):
        assert callable(getattr(notifier, name))


def test_environment_is_read_by_default(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_env() without arguments reads os.environ and the current pid."""
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval_s() == 1.5
    notifier.watchdog_ping()
    assert _received(sock) == {"WATCHDOG": "1"}
