"""How a client leaves: a goodbye on close and at exit (naming a fatal exception), none when killed;
and when a training process agrees to exit for a group restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from control_helpers import REPO, RawPeer, wait_for

from watchdog.client.commands import group_restart_refusal
from watchdog.control import ControlServer

pytest_plugins = ["control_fixtures"]

SCRIPT = """
import os, sys, time, watchdog
wd = watchdog.attach(socket_path=sys.argv[1], job="detach-test", heartbeat_s=0.1)
wd.link.connected.wait(10)
print("ready", flush=True)
mode = sys.argv[2]
if mode == "close":
    wd.close()
    time.sleep(0.5)
elif mode == "raise":
    raise RuntimeError("boom: CUDA out of memory")
elif mode == "hang":
    time.sleep(600)
"""


def leaving(server: ControlServer) -> list[tuple[int, bool, str]]:
    """Record every on_leave call of ``server`` as (pid, detached, error)."""
    calls: list[tuple[int, bool, str]] = []
    lock = threading.Lock()

    def on_leave(info: Any, detached: bool, error: str, peer_gone: bool) -> None:
        assert peer_gone  # every client here closes its own connection
        with lock:
            calls.append((info.pid, detached, error))

    server.on_leave = on_leave
    return calls


def run_client(path: str, mode: str) -> subprocess.Popen[str]:
    """Start the client script and wait until it has registered."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, path, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


@pytest.mark.parametrize(
    ("mode", "error"),
    [("close", ""), ("exit", ""), ("raise", "RuntimeError: boom: CUDA out of memory")],
)
def test_goodbye_on_close_and_at_exit_names_a_fatal_exception(
    server_factory: Callable[..., ControlServer], mode: str, error: str
) -> None:
    """wd.close(), a normal exit and an uncaught exception all detach; the last says why."""
    server = server_factory()
    calls = leaving(server)
    proc = run_client(server.socket_path, mode)
    proc.wait(timeout=30)
    wait_for(lambda: calls, 10, "the client to leave")
    assert calls == [(proc.pid, True, error)]


def test_killed_client_leaves_without_a_goodbye(
    server_factory: Callable[..., ControlServer],
) -> None:
    """SIGKILL leaves no chance to detach: the daemon sees a silent departure."""
    server = server_factory()
    calls = leaving(server)
    proc = run_client(server.socket_path, "hang")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: calls, 10, "the client to leave")
    assert calls == [(proc.pid, False, "")]


TORCHRUN = {"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_RESTART_COUNT": "0"}


@pytest.mark.parametrize(
    ("env", "step", "args", "refused"),
    [
        ({}, 5, {}, "not started by torchrun"),
        ({**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "2"}, 5, {}, "restarts are spent (2 of 2)"),
        (TORCHRUN, 7, {"steps": {"42": 5}}, "training moved on: at step 7"),
        (TORCHRUN, 5, {"steps": {"42": 5}}, ""),
        (TORCHRUN, 5, {}, ""),
    ],
    ids=["no-torchrun", "restarts-spent", "moved-on", "stuck", "no-steps-given"],
)
def test_group_restart_only_where_torchrun_restarts_a_hung_rank(
    env: dict[str, str], step: int, args: dict[str, Any], refused: str
) -> None:
    """A rank exits for a group restart only under torchrun, with restarts left, still stuck."""
    reason = group_restart_refusal(env, step, 42, args)
    assert (refused in reason) if refused else reason == ""


def test_refused_group_restart_answers_an_error_and_keeps_running(
    server_factory: Callable[..., ControlServer],
) -> None:
    """Outside torchrun the rank answers restart_group with an error and stays registered."""
    server = server_factory()
    proc = run_client(server.socket_path, "hang")
    try:
        results = server.send_command(proc.pid, "restart_group", 0, timeout_s=10)
        assert [r.ok for r in results] == [False]
        assert "not started by torchrun" in results[0].error
        assert proc.poll() is None
        assert [c.pid for c in server.clients()] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_a_client_the_daemon_drops_is_not_reported_as_gone(
    server_factory: Callable[..., ControlServer],
) -> None:
    """A registered peer dropped for breaking the protocol leaves with peer_gone False."""
    server = server_factory()
    calls: list[tuple[bool, bool]] = []
    server.on_leave = lambda info, detached, error, peer_gone: calls.append((detached, peer_gone))
    peer = RawPeer(server.socket_path)
    assert peer.register()["type"] == "registered"
    peer.sock.sendall(b"\x00\x00\x00\x00")  # a zero-length frame: malformed
    assert peer.closed_by_server()
    wait_for(lambda: calls, 10, "the drop")
    assert calls == [(False, False)]
    peer.close()
