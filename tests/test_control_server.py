"""The daemon side of the control channel, driven by raw peers over a real socket."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import threading
import time

import pytest
from control_helpers import RawPeer, wait_for
from prometheus_client import CollectorRegistry, generate_latest

from watchdog.config import ConfigError, ControlSettings
from watchdog.control import (
    CommandPermissionError,
    ControlError,
    ControlServer,
    UnknownTargetError,
)
from watchdog.control import server as server_module
from watchdog.control.protocol import COMMANDS, MAX_GROWTH_PLANNED_S
from watchdog.control.registry import AllocatorReport, PeerCred, Registration
from watchdog.control.server import _Client, check_settings, sync_step

pytest_plugins = ["control_fixtures"]


def framed(body: bytes) -> bytes:
    """``body`` behind its length header, whatever it holds."""
    return struct.pack(">I", len(body)) + body


def answer_commands(peer: RawPeer, stop: threading.Event, ok: bool = True) -> threading.Thread:
    """Answer every command on ``peer`` in a thread, as a training process would."""

    def run() -> None:
        while not stop.is_set():
            try:
                message = peer.recv(0.2)
            except (TimeoutError, OSError):
                continue
            if message["type"] == "command":
                peer.send(
                    {
                        "type": "result",
                        "id": message["id"],
                        "ok": ok,
                        "duration_s": 0.01,
                        "details": {"args": message["args"]},
                        "error": "" if ok else "boom",
                    }
                )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_socket_directory_and_mode(server_factory, short_dir):
    """The directory is created 0750 and the socket is 0660 (or as configured)."""
    server = server_factory(socket_mode="0600")
    st = os.stat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(short_dir / "run").st_mode) == 0o750
    server.stop()
    assert not os.path.exists(server.socket_path)


def test_stale_socket_replaced_live_one_refused_file_kept(short_dir):
    """A dead daemon's socket is replaced; a live one or a regular file is never touched."""
    path = short_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with (
        ControlServer(ControlSettings(socket_path=str(path))),
        pytest.raises(ControlError, match="already listening"),
    ):
        ControlServer(ControlSettings(socket_path=str(path))).start()
    regular = short_dir / "file"
    regular.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(ControlSettings(socket_path=str(regular))).start()
    assert regular.read_text() == "keep me"


def test_register_uses_kernel_identity(server_factory):
    """The registered pid and uid are the kernel's (SO_PEERCRED), and are listed."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    reply = peer.register(rank=1, local_rank=1, world_size=2, device="cuda:1")
    assert reply["type"] == "registered"
    assert reply["max_message_bytes"] == server.settings.max_message_bytes
    (client,) = wait_for(server.clients)
    assert (client.pid, client.uid) == (os.getpid(), os.getuid())
    assert client.registration.rank == 1
    assert client.registration.device == "cuda:1"


def test_register_as_another_pid_is_dropped(server_factory):
    """A process may register only itself: a foreign pid drops the connection."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.send({"type": "register", "job": "x", "pid": os.getpid() + 1})
    assert peer.closed_by_server()
    assert server.clients() == []
    assert server.stats()[1] == {"malformed": 1}


def reporting_peer(server_factory) -> tuple[ControlServer, list[AllocatorReport], RawPeer]:
    """A server whose on_report collects every report, and a registered peer of it."""
    server = server_factory()
    seen: list[AllocatorReport] = []
    server.on_report = lambda client, report: seen.append(report)
    peer = RawPeer(server.socket_path)
    peer.register()
    return server, seen, peer


def test_reports_keep_unknown_as_none_and_feed_callback(server_factory):
    """Null allocator figures stay None, and on_report sees each heartbeat."""
    server, seen, peer = reporting_peer(server_factory)
    peer.send(
        {
            "type": "report",
            "step": 12,
            "allocated_bytes": None,
            "reserved_bytes": 4096,
            "rss_bytes": 1000,
        }
    )
    wait_for(lambda: seen)
    assert seen[0] == AllocatorReport(step=12, reserved_bytes=4096, rss_bytes=1000)
    assert server.clients()[0].report.allocated_bytes is None


def test_a_report_carries_the_growth_the_process_plans(server_factory):
    """expect_growth's fields arrive as numbers; a negative or text one drops the client."""
    server, seen, peer = reporting_peer(server_factory)
    peer.send(
        {"type": "report", "step": 1, "growth_planned_s": 90.5, "growth_up_to_bytes": 1 << 30}
    )
    wait_for(lambda: seen)
    assert (seen[0].growth_planned_s, seen[0].growth_up_to_bytes) == (90.5, 1 << 30)
    for bad in (
        {"growth_planned_s": -1},
        {"growth_planned_s": "soon"},
        {"growth_up_to_bytes": 1.5},
    ):
        other = RawPeer(server.socket_path)
        other.register(job=f"bad-{len(bad)}")
        other.send({"type": "report", "step": 1, **bad})
        assert other.closed_by_server()
    assert server.stats()[1] == {"malformed": 3}


def test_raising_on_report_is_contained(server_factory):
    """A callback that raises is logged; the client stays registered and reports keep flowing."""
    server = server_factory()
    calls = []

    def broken(client, report):
        calls.append(report.step)
        raise RuntimeError("detector bug")

    server.on_report = broken
    peer = RawPeer(server.socket_path)
    peer.register()
    for step in range(3):
        peer.send({"type": "report", "step": step})
    wait_for(lambda: len(calls) == 3)
    assert server.clients()[0].report.step == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff\xff", "malformed"),
        (b"\x00\x00\x00\x05hello", "malformed"),
        (struct.pack(">I", 3) + b"[1]", "malformed"),
        (b"GET / HTTP/1.1\r\n\r\n", "malformed"),
        # Valid JSON that no reply could echo, and an integer past Python's digit limit.
        (framed(b'{"v":1,"type":"ping","id":1e999}'), "malformed"),
        (framed(b'{"v":1,"type":"ping","x":' + b"1" * 5000 + b"}"), "malformed"),
        # An id no UTF-8 can hold: a lone surrogate (valid JSON), echoed by every reply.
        (framed(b'{"v":1,"type":"ping","id":"\\ud800"}'), "malformed"),
        (framed(b'{"v":1,"type":"send","id":"\\udcff","target":"x","command":"c"}'), "malformed"),
    ],
)
def test_garbage_drops_only_that_connection(server_factory, payload, reason):
    """Garbage and oversized frames drop their sender; a registered client keeps working."""
    server = server_factory()
    good = RawPeer(server.socket_path)
    good.register()
    bad = RawPeer(server.socket_path)
    bad.sock.sendall(payload)
    assert bad.closed_by_server()
    assert server.stats()[1].get(reason) == 1
    (dropped,) = [c for c in server.log_calls if c.kwargs.get("event") == "control_client_dropped"]
    assert dropped.method_name == "warning"
    assert dropped.kwargs["reason"] == reason
    good.send({"type": "ping", "id": 1})
    assert good.recv()["type"] == "pong"
    assert len(server.clients()) == 1


def test_stalled_frame_and_silent_connection_dropped(server_factory):
    """Half a frame, or a connection that never speaks, is dropped after the read timeout."""
    server = server_factory(read_timeout_s=0.3)
    good = RawPeer(server.socket_path)
    good.register()
    half = RawPeer(server.socket_path)
    half.sock.sendall(encode_prefix := struct.pack(">I", 100) + b'{"v":1')
    assert encode_prefix
    silent = RawPeer(server.socket_path)
    assert half.closed_by_server(3)
    assert silent.closed_by_server(3)
    assert {"stalled", "idle"} <= set(server.stats()[1])
    good.send({"type": "report", "step": 5})
    wait_for(lambda: server.clients()[0].report.step == 5)


def test_a_header_without_its_body_is_dropped(server_factory):
    """A peer that sends a frame's length and then nothing is dropped after the read timeout."""
    server = server_factory(read_timeout_s=0.3)
    peer = RawPeer(server.socket_path)
    peer.register()
    peer.sock.sendall(struct.pack(">I", 100))
    assert peer.closed_by_server(3)
    assert server.stats()[1].get("stalled") == 1


def test_a_handler_bug_drops_its_sender_and_the_loop_serves_on(server_factory, monkeypatch):
    """An exception a handler did not expect costs its sender the connection, not the loop."""
    server = server_factory()

    def broken(conn, message):
        raise RuntimeError("handler bug")

    monkeypatch.setattr(server, "_on_list", broken)
    bad = RawPeer(server.socket_path)
    bad.send({"type": "list_clients", "id": 1})
    assert bad.closed_by_server()
    assert server.stats()[1].get("internal_error") == 1
    (logged,) = [c for c in server.log_calls if c.kwargs.get("event") == "control_message_failed"]
    assert logged.method_name == "error"  # structlog logs .exception() at error
    good = RawPeer(server.socket_path)
    good.send({"type": "ping", "id": 2})
    assert good.recv()["type"] == "pong"


def test_a_target_of_other_digits_is_no_pid(server_factory):
    """``"²"`` passes ``str.isdigit`` but is no pid: an unknown target, answered as an error."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.send({"type": "send", "id": 1, "target": "\u00b2", "command": "checkpoint"})
    reply = peer.recv()
    assert (reply["type"], reply["code"]) == ("error", "unknown_target")
    peer.send({"type": "ping", "id": 2})
    assert peer.recv()["type"] == "pong"


@pytest.mark.parametrize("timeout_s", [0, -5])
def test_a_send_with_no_time_to_answer_is_refused(server_factory, timeout_s):
    """timeout_s 0 would wait the default 600 s, a negative one time out unanswered: refused."""
    server = server_factory()
    client = RawPeer(server.socket_path)
    client.register()
    wait_for(server.clients)
    requester = RawPeer(server.socket_path)
    requester.send(
        {
            "type": "send",
            "id": 1,
            "target": os.getpid(),
            "command": "checkpoint",
            "timeout_s": timeout_s,
        }
    )
    assert requester.closed_by_server()
    assert server.stats() == ({}, {"malformed": 1})


def test_a_malformed_result_still_answers_the_command(server_factory):
    """A result the server cannot read ends the command with an error, and drops its sender."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    wait_for(server.clients)
    future = server.send_command_async(os.getpid(), "checkpoint", requester_uid=0, timeout_s=30)
    command = peer.recv()
    peer.send({"type": "result", "id": command["id"], "ok": "yes"})
    (result,) = future.result(5)
    assert not result.ok
    assert "malformed result" in result.error
    assert peer.closed_by_server()


def test_half_closed_client_is_removed(server_factory):
    """A client that shuts its side down is unregistered at once."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    wait_for(server.clients)
    peer.sock.shutdown(socket.SHUT_WR)
    wait_for(lambda: server.clients() == [], what="client removed")


def test_connection_cap(server_factory):
    """Connections beyond max_clients are closed at once; earlier ones keep working."""
    server = server_factory(max_clients=3)
    peers = [RawPeer(server.socket_path) for _ in range(3)]
    for peer in peers:
        peer.send({"type": "ping", "id": 1})
        assert peer.recv()["type"] == "pong"
    extra = RawPeer(server.socket_path)
    assert extra.closed_by_server()
    assert server.stats()[1]["connection_cap"] == 1, server.stats()


def test_out_of_file_descriptors_pauses_accepting_instead_of_spinning(server_factory, monkeypatch):
    """accept() failing with EMFILE leaves the listener readable: the loop must not spin.

    It stops listening for a second, logs once per pause, then takes the waiting
    connection as usual once descriptors are back.
    """
    server = server_factory()
    calls = []

    def out_of_descriptors(self):
        calls.append(1)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket.socket, "accept", out_of_descriptors)
    peer = RawPeer(server.socket_path)
    wait_for(lambda: calls, what="a failed accept")
    time.sleep(1.5)
    failed = len(calls)
    assert failed <= 3, f"{failed} accepts in 1.5 s: the control loop spins"
    logged = [c for c in server.log_calls if c.kwargs.get("event") == "control_accept_failed"]
    assert 1 <= len(logged) <= 3  # one line per pause, not per turn of the loop
    monkeypatch.undo()
    peer.send({"type": "ping", "id": 1})
    assert peer.recv(timeout_s=5)["type"] == "pong"


def test_max_clients_fits_the_open_file_limit(server_factory, monkeypatch):
    """A soft limit below max_clients is raised to the hard one; short of that, fewer are served."""
    limits = {"soft": 200, "hard": 258}
    monkeypatch.setattr(
        server_module.resource, "getrlimit", lambda _: (limits["soft"], limits["hard"])
    )
    monkeypatch.setattr(
        server_module.resource, "setrlimit", lambda _, new: limits.update(soft=new[0])
    )
    assert server_module.room_for_clients(1024) == 2  # raised to 258, less 256 of its own
    assert limits["soft"] == 258
    limits.update(soft=1024, hard=1 << 20)
    assert server_module.room_for_clients(1024) == 1024
    assert limits["soft"] == 1024 + 256
    limits.update(soft=258, hard=258)
    server = server_factory(max_clients=3)
    events = [c.kwargs for c in server.log_calls]
    (lowered,) = [e for e in events if e.get("event") == "control_max_clients_lowered"]
    assert lowered["max_clients"] == 2
    peers = [RawPeer(server.socket_path) for _ in range(2)]
    for peer in peers:
        peer.send({"type": "ping", "id": 1})
        assert peer.recv()["type"] == "pong"
    assert RawPeer(server.socket_path).closed_by_server()
    assert server.stats()[1]["connection_cap"] == 1


def test_per_uid_cap(server_factory):
    """One user cannot hold more than max_clients_per_uid connections."""
    server = server_factory(max_clients_per_uid=2)
    kept = [RawPeer(server.socket_path) for _ in range(2)]
    for peer in kept:
        peer.send({"type": "ping", "id": 1})
        assert peer.recv()["type"] == "pong"
    assert RawPeer(server.socket_path).closed_by_server()
    assert server.stats()[1] == {"per_uid_cap": 1}


def _forked_client(path: str, rank: int) -> None:
    """Child body: register, report, answer commands until the server goes away."""
    try:
        peer = RawPeer(path)
        peer.register(job="big", rank=rank)
        peer.send({"type": "report", "step": rank})
        while True:
            message = peer.recv(30)
            if message["type"] == "command":
                peer.send(
                    {"type": "result", "id": message["id"], "ok": True, "details": {"rank": rank}}
                )
    finally:
        os._exit(0)


@pytest.mark.slow
def test_hundreds_of_clients(server_factory):
    """Two hundred processes register at once; all are listed and answer one job-wide command."""
    count = 200
    server = server_factory(max_clients=400, max_clients_per_uid=400, client_timeout_s=60)
    children = []
    for rank in range(count):
        pid = os.fork()
        if pid == 0:
            _forked_client(server.socket_path, rank)
        children.append(pid)
    try:
        wait_for(lambda: len(server.clients()) == count, timeout_s=30, what="all registered")
        wait_for(lambda: all(c.report.step is not None for c in server.clients()), timeout_s=30)
        results = server.send_command("big", "empty_cache", requester_uid=0, timeout_s=30)
        assert len(results) == count
        assert all(r.ok for r in results)
        assert sorted(r.details["rank"] for r in results) == list(range(count))
        assert server.stats()[1] == {}
    finally:
        server.stop()
        for pid in children:
            os.waitpid(pid, 0)


def test_send_command_round_trip_and_counters(server_factory):
    """A command reaches the client and its result comes back, counted by kind and result."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    stop = threading.Event()
    answer_commands(peer, stop)
    try:
        (result,) = server.send_command(os.getpid(), "empty_cache", requester_uid=0)
        assert result.ok
        assert result.duration_s == 0.01
        (by_job,) = server.send_command("raw", "checkpoint", requester_uid=os.getuid())
        assert by_job.ok
    finally:
        stop.set()
    assert server.stats()[0] == {("empty_cache", "ok"): 1, ("checkpoint", "ok"): 1}
    assert server.clients()[0].commands == {"empty_cache:ok": 1, "checkpoint:ok": 1}


def test_send_permissions_and_errors(server_factory):
    """Only root or the owner may command; unknown targets and commands are refused."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    wait_for(server.clients)
    with pytest.raises(CommandPermissionError, match="may not command"):
        server.send_command(os.getpid(), "checkpoint", requester_uid=os.getuid() + 4242)
    with pytest.raises(UnknownTargetError):
        server.send_command(999_999_999, "checkpoint", requester_uid=0)
    with pytest.raises(UnknownTargetError):
        server.send_command("no-such-job", "checkpoint", requester_uid=0)
    with pytest.raises(ControlError, match="unknown command"):
        server.send_command(os.getpid(), "rm -rf", requester_uid=0)


def test_command_timeout_and_disconnect_give_error_results(server_factory):
    """A client that never answers times out; one that leaves mid-command reports disconnect."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    wait_for(server.clients)
    (late,) = server.send_command(os.getpid(), "checkpoint", requester_uid=0, timeout_s=0.3)
    assert not late.ok
    assert "timed out" in late.error
    future = server.send_command_async(os.getpid(), "checkpoint", requester_uid=0)
    assert peer.recv()["type"] == "command"  # the timed-out one
    assert peer.recv()["type"] == "command"
    peer.close()
    (gone,) = future.result(5)
    assert not gone.ok
    assert "disconnected" in gone.error


def test_socket_requests_list_and_send(server_factory):
    """The list and send requests the command line uses work over the socket."""
    from watchdog.control.requests import ControlRequester, RequestError

    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register(rank=0)
    stop = threading.Event()
    answer_commands(peer, stop)
    try:
        with ControlRequester(server.socket_path) as requester:
            (listed,) = requester.list_clients()
            assert listed["pid"] == os.getpid()
            assert listed["allocated_bytes"] is None
            (result,) = requester.send("raw", "dump_snapshot", {"dir": "/x"}, timeout_s=5)
            assert result["ok"]
            assert result["details"]["args"] == {"dir": "/x"}
            with pytest.raises(RequestError, match="no registered client"):
                requester.send(1, "checkpoint")
    finally:
        stop.set()


def test_unknown_message_type_answered_not_dropped(server_factory):
    """A message type from a newer client gets an error reply; the connection stays."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.send({"type": "from_the_future", "id": 3})
    reply = peer.recv()
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "unknown_type", 3)
    peer.send({"type": "ping", "id": 4})
    assert peer.recv()["id"] == 4


def test_collector_exports_known_figures_and_forgets_departed(server_factory):
    """Unknown figures have no series; a client's series vanish when it leaves."""
    server = server_factory()
    registry = CollectorRegistry()
    registry.register(server.collector())
    peer = RawPeer(server.socket_path)
    peer.register(rank=0, device="cpu")
    peer.send({"type": "report", "step": 7, "reserved_bytes": 1024})
    wait_for(lambda: server.clients() and server.clients()[0].report.step == 7)
    text = generate_latest(registry).decode()
    labels = f'device="cpu",pid="{os.getpid()}",rank="0",training_job="raw"'
    assert f"gpu_watchdog_client_step{{{labels}}} 7.0" in text
    assert "gpu_watchdog_client_reserved_bytes{" in text
    assert "gpu_watchdog_client_allocated_bytes{" not in text
    peer.close()
    wait_for(lambda: not server.clients())
    assert "gpu_watchdog_client_step{" not in generate_latest(registry).decode()


def test_sync_step_looks_ahead_of_every_rank():
    """All ranks get one future step: past the fastest rank's expected position."""
    peer = PeerCred(1, 0, 0)
    slow = _Client(peer, Registration("j"), 0.0, 10.0, AllocatorReport(step=100), 10.0, 1.0)
    fast = _Client(peer, Registration("j"), 0.0, 10.0, AllocatorReport(step=104), 10.0, 10.0)
    assert sync_step([slow, fast], now=11.0, lead_s=1.0) == 104 + 20 + 1
    unknown = _Client(peer, Registration("j"), 0.0, 10.0)
    assert sync_step([slow, unknown], now=11.0, lead_s=1.0) is None


def test_report_updates_the_device(server_factory):
    """A model moved to the GPU after registration shows its new device from the next report."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register(device="cpu")
    peer.send({"type": "report", "step": 1, "device": "cuda:2", "device_uuid": "GPU-abc"})
    wait_for(lambda: server.clients()[0].registration.device == "cuda:2")
    assert server.clients()[0].registration.device_uuid == "GPU-abc"


def test_commands_requested_over_the_socket_are_told_apart_from_the_policys(server_factory):
    """on_request_sent/done see `send` requests only; one that raises costs no result."""
    from watchdog.control.requests import ControlRequester

    server = server_factory()
    seen: list[tuple[str, int, object]] = []

    def sent(uid: int, command: str, clients: list) -> None:
        seen.append(("sent", uid, (command, [c.job for c in clients])))
        raise RuntimeError("audit trail broken")

    server.on_request_sent = sent
    server.on_request_done = lambda uid, results: seen.append(
        ("done", uid, [(r.command, r.ok) for r in results])
    )
    peer = RawPeer(server.socket_path)
    peer.register(rank=0)
    stop = threading.Event()
    answer_commands(peer, stop)
    try:
        server.send_command(os.getpid(), "empty_cache", requester_uid=0, timeout_s=5)
        assert seen == []  # the policy's own commands are journalled by the supervisor
        with ControlRequester(server.socket_path) as requester:
            (result,) = requester.send("raw", "empty_cache", timeout_s=5)
        assert result["ok"]
        assert seen == [
            ("sent", os.getuid(), ("empty_cache", ["raw"])),
            ("done", os.getuid(), [("empty_cache", True)]),
        ]
    finally:
        stop.set()


@pytest.mark.parametrize(
    "fields",
    [
        {"commands": "x"},
        {"commands": [1, 2]},
        {"commands": {"empty_cache": True}},
        {"commands": ["n"] * 65},
        {"job": "evil\n\x1b[31mRED\x00"},
        {"device": "cuda:0\r\nX"},
        {"device_uuid": "GPU-\x1b]0;title\x07"},
        {"hostname": "node\x00"},
        {"client_version": "0.1\x9b2J"},
        {"rank": "0"},
        {"restart_count": 1.5},
    ],
)
def test_register_with_a_bad_field_is_dropped(server_factory, fields):
    """A wrongly typed field, or a control character in a printed name, is malformed."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.send({"type": "register", "job": "raw", **fields})
    assert peer.closed_by_server()
    assert server.clients() == []
    assert server.stats()[1] == {"malformed": 1}


def test_register_lists_commands_the_daemon_may_not_know(server_factory):
    """``commands`` names this daemon does not know are a newer client's: accepted."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    assert peer.register(commands=[*COMMANDS, "from_the_future"])["type"] == "registered"


@pytest.mark.parametrize(
    "fields",
    [
        {"device": "cuda:1\x1b[2J"},
        {"device": "cuda:1", "device_uuid": "GPU-\n"},
        {"growth_planned_s": 10**400},
        {"step": 10**400},
    ],
)
def test_a_report_with_a_bad_field_is_malformed(server_factory, fields):
    """Control characters in a reported device, or a number no double holds: malformed."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    peer.send({"type": "report", "step": 1, **fields})
    assert peer.closed_by_server()
    assert server.stats()[1] == {"malformed": 1}  # not internal_error


def test_an_absurd_growth_plan_is_capped(server_factory):
    """growth_planned_s 1e300 is read as the longest plan honoured, not dropped or kept."""
    server, seen, peer = reporting_peer(server_factory)
    peer.send({"type": "report", "step": 1, "growth_planned_s": 1e300})
    wait_for(lambda: seen)
    assert seen[0].growth_planned_s == MAX_GROWTH_PLANNED_S
    assert server.clients()[0].to_dict()["growth_planned_s"] == MAX_GROWTH_PLANNED_S


def test_a_detach_reason_with_control_characters_is_malformed(server_factory):
    """A farewell's reason is logged as a word: a control character in it is malformed."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    peer.register()
    peer.send({"type": "detach", "reason": "close\n\x1b[2J"})
    assert peer.closed_by_server()
    assert server.stats()[1] == {"malformed": 1}


def test_an_empty_socket_path_is_a_config_error():
    """check-config and run refuse an empty control.socket_path before binding anything."""
    with pytest.raises(ConfigError, match="socket path is empty"):
        check_settings(ControlSettings(socket_path=""))
