"""Real processes: a CPU PyTorch loop attached to a daemon process that tests kill and restart."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from control_helpers import REPO, TESTS, RawPeer, start_harness, wait_for

from watchdog.control.requests import ControlRequester

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

pytest_plugins = ["control_fixtures"]


class Loop:
    """tests/client_loop.py in a subprocess, with its output read in the background."""

    def __init__(self, socket_path: str, checkpoint_dir: Path, steps: int, pause: float = 0.002):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "client_loop.py"),
                socket_path,
                str(checkpoint_dir),
                str(steps),
                str(pause),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line.strip())

    def last_step(self) -> int:
        steps = [int(line.split()[1]) for line in self.stdout if line.startswith("step ")]
        return steps[-1] if steps else 0

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        self.proc.wait(timeout)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture
def daemon(short_dir):
    procs = []

    def start():
        proc = start_harness(str(short_dir / "wd.sock"))
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_loop_survives_daemon_kill_and_restart(daemon, short_dir):
    """Commands run in a real loop; the daemon is SIGKILLed and restarted; the loop never stops."""
    socket_path = str(short_dir / "wd.sock")
    first = daemon()
    loop = Loop(socket_path, short_dir / "ck", steps=100_000)
    with ControlRequester(socket_path) as requester:
        (client,) = wait_for(requester.list_clients, what="registration")
        assert client["job"] == "test-job"
        assert client["pid"] == loop.proc.pid
        (result,) = requester.send("test-job", "checkpoint", timeout_s=20)
        assert result["ok"], result
        assert Path(result["details"]["path"]).exists()
        (stacks,) = requester.send(loop.proc.pid, "dump_stacks", timeout_s=20)
        assert "client_loop.py" in stacks["details"]["stacks"]
    first.kill()
    first.wait()
    step_at_kill = loop.last_step()
    wait_for(lambda: loop.last_step() > step_at_kill + 100, what="training without a daemon")
    second = daemon()
    with ControlRequester(socket_path) as requester:
        wait_for(requester.list_clients, what="re-registration")
        (result,) = requester.send(loop.proc.pid, "empty_cache", timeout_s=20)
        assert result["ok"]
        (restart,) = requester.send(loop.proc.pid, "checkpoint_and_restart", timeout_s=20)
        assert restart["ok"]
    code, stderr = loop.finish()
    assert code == 75
    assert "lost the daemon" in stderr
    assert "Traceback" not in stderr
    assert loop.proc.returncode == 75
    checkpoint_step = restart["details"]["step"]
    # the restarted run resumes from that checkpoint
    rerun = Loop(socket_path, short_dir / "ck", steps=checkpoint_step + 10)
    code, stderr = rerun.finish()
    assert code == 0, stderr
    assert f"resumed {checkpoint_step}" in rerun.stdout
    assert rerun.stdout[-1] == f"done {checkpoint_step + 10}"
    second.send_signal(signal.SIGTERM)


def test_abuse_while_a_real_client_keeps_working(daemon, short_dir):
    """Garbage, a 0xFFFFFFFF frame and half-open connections leave a real client unharmed."""
    socket_path = str(short_dir / "wd.sock")
    server = daemon()
    loop = Loop(socket_path, short_dir / "ck", steps=100_000)
    with ControlRequester(socket_path) as requester:
        wait_for(requester.list_clients, what="registration")
    attackers = [RawPeer(socket_path) for _ in range(20)]
    attackers[0].sock.sendall(b"\xff\xff\xff\xff")
    attackers[1].sock.sendall(os.urandom(4096))
    attackers[2].sock.sendall(b"\x00\x00\x01\x00" + b'{"v":1,')  # never finished
    for peer in attackers[3:]:
        peer.sock.shutdown(1)  # half-open: write side closed, never a byte
    time.sleep(1.5)  # past the harness's 1 s read timeout
    with ControlRequester(socket_path) as requester:
        (client,) = requester.list_clients()
        assert client["heartbeat_age_s"] < 1.0
        (result,) = requester.send(loop.proc.pid, "checkpoint", timeout_s=20)
        assert result["ok"]
    assert all(peer.closed_by_server(1) for peer in attackers[:3])
    loop.proc.terminate()
    loop.finish()
    assert server.poll() is None


def test_kill_during_checkpoint_write_leaves_previous(short_dir):
    """SIGKILL between writing and renaming: the half checkpoint is ignored, the previous loads."""
    code = f"""
import os, time, torch
from watchdog.client import CheckpointStore
store = CheckpointStore({str(short_dir)!r})
store.save({{"step": 1}}, 1)
def hang(*args):
    print("written", flush=True)
    time.sleep(60)
os.replace = hang
store.save({{"step": 2, "blob": torch.zeros(1000)}}, 2)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "written"
    proc.kill()
    proc.wait()
    from watchdog.client import CheckpointStore

    names = sorted(p.name for p in short_dir.iterdir())
    assert any(".tmp." in name for name in names)
    store = CheckpointStore(short_dir)
    assert store.load_latest()[1]["step"] == 1
    store.prune()  # the dead writer's temporary is cleaned up
    assert sorted(p.name for p in short_dir.iterdir()) == ["ckpt-000000000001.pt"]
