"""Hung jobs, for real: a 2-rank gloo group attached to the real daemon (simulated GPU).

One rank sleeps where it should join an all_reduce while the other blocks in
it. The daemon must report both as ``stalled`` and log where each thread is
(the blocked ``all_reduce`` frame), asking each for its stacks once; a rank
killed with SIGKILL must be reported at once as lost, naming the rank the
other one waits on; and with ``policy.group_restart`` on, torchrun must
restart the hung group, which then finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from control_helpers import REPO, TESTS, wait_for
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

pytest.importorskip("torch.distributed")

pytest_plugins = ["control_fixtures"]

pytestmark = pytest.mark.timeout(240)

STALL_MIN_S = 3.0


class LiveDaemon:
    """``gpu-watchdog run --simulate healthy`` with fast heartbeats and a short stall floor."""

    def __init__(self, root: Path, env: dict[str, str], **policy: object) -> None:
        self.root = root
        self.socket = str(root / "run" / "wd.sock")
        self.port = free_port()
        policy_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in policy.items())
        config = root / "config.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{root / "state"}"\nlog_format = "json"\n'
            f'[control]\nsocket_path = "{self.socket}"\nheartbeat_s = 0.2\n'
            f"[detection]\nstall_min_s = {STALL_MIN_S}\nstall_step_factor = 10.0\n"
            f"[policy]\n{policy_lines}"
        )
        self.log_path = root / "daemon.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "watchdog",
                "run",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--simulate",
                "healthy",
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # The config file places socket and state here (cli_env's variables would win).
            env={k: v for k, v in env.items() if not k.startswith("GPU_WATCHDOG_")},
        )
        wait_for(
            lambda: Path(self.socket).exists() or self.process.poll() is not None,
            30,
            "the control socket",
        )
        assert self.process.poll() is None, self.log_path.read_text()

    def events(self, name: str | None = None, **fields: object) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (named ``name``, with ``fields``), oldest first."""
        found = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if name is not None and entry.get("event") != name:
                    continue
                if all(entry.get(k) == v for k, v in fields.items()):
                    found.append(entry)
        return found

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample on /metrics, or None."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def daemon_factory(short_dir: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., LiveDaemon]]:
    """Start live daemons in ``short_dir``; stopped after the test."""
    started: list[LiveDaemon] = []

    def make(**policy: object) -> LiveDaemon:
        started.append(LiveDaemon(short_dir, cli_env, **policy))
        return started[-1]

    yield make
    for daemon in started:
        daemon.stop()


class Ranks:
    """Two ranks of tests/hang_loop.py started by hand (no launcher watches them)."""

    def __init__(self, daemon: LiveDaemon, mode: str) -> None:
        port = free_port()
        self.procs = []
        for rank in (0, 1):
            env = {
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "PYTHONUNBUFFERED": "1",
            }
            env.pop("TORCHELASTIC_RESTART_COUNT", None)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(TESTS / "hang_loop.py"), daemon.socket, "100", mode],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        self.pids = [p.pid for p in self.procs]

    def wait_hanging(self) -> None:
        """Until both ranks print that they hang (rank 1 asleep, rank 0 in the all_reduce)."""
        for proc in self.procs:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("hanging"):
                    break
            else:
                pytest.fail(f"rank pid {proc.pid} exited {proc.wait()} before hanging")

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def ranks_factory() -> Iterator[Callable[[LiveDaemon, str], Ranks]]:
    """Start rank pairs; every rank is killed after the test."""
    started: list[Ranks] = []

    def make(daemon: LiveDaemon, mode: str) -> Ranks:
        started.append(Ranks(daemon, mode))
        return started[-1]

    yield make
    for ranks in started:
        ranks.kill()


def test_hung_collective_is_stalled_and_its_stacks_show_the_all_reduce(
    daemon_factory: Callable[..., LiveDaemon], ranks_factory: Callable[[LiveDaemon, str], Ranks]
) -> None:
    """Both ranks are raised as stalled once; rank 0's logged stacks show the blocked frame."""
    daemon = daemon_factory()
    ranks = ranks_factory(daemon, "hang")
    ranks.wait_hanging()
    hung_at = time.monotonic()
    for pid in ranks.pids:
        wait_for(lambda pid=pid: daemon.events("stalled_raised", pid=pid), 30, f"stall of {pid}")
    assert time.monotonic() - hung_at >= STALL_MIN_S - 1.0  # not before the floor
    stacks = wait_for(lambda: daemon.events("stacks", pid=ranks.pids[0]), 30, "rank 0's stacks")
    main = [t for t in stacks[0]["threads"] if t.startswith("MainThread")]
    assert main, stacks[0]["threads"]
    assert "all_reduce" in main[0], stacks[0]["threads"]
    assert daemon.metric("gpu_watchdog_client_stalled", pid=str(ranks.pids[0])) == 1
    time.sleep(2.0)  # more ticks of the stall: no second finding, no second dump
    for pid in ranks.pids:
        assert len(daemon.events("stalled_raised", pid=pid)) == 1
        sent = daemon.events("control_command_sent", command="dump_stacks", pid=pid)
        assert len(sent) == 1, sent
    journal = (daemon.root / "state" / "journal.jsonl").read_text()
    assert '"type": "stacks"' in journal or '"type":"stacks"' in journal


def test_killed_rank_is_reported_at_once_as_lost_with_the_rank_waiting_on_it(
    daemon_factory: Callable[..., LiveDaemon], ranks_factory: Callable[[LiveDaemon, str], Ranks]
) -> None:
    """SIGKILL to rank 1 raises rank_lost naming rank 1 and its pid within a second or two."""
    daemon = daemon_factory()
    ranks = ranks_factory(daemon, "survive")
    ranks.wait_hanging()
    survivor, victim = ranks.pids
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    lost = wait_for(lambda: daemon.events("rank_lost_raised", pid=victim), 10, "rank_lost")
    latency = time.monotonic() - killed_at
    assert latency < 2.0, latency  # at once, not after gloo's 30 min or NCCL's 10 min timeout
    assert lost[0]["rank"] == 1
    assert lost[0]["how"] == "gone"
    assert lost[0]["waiting"] == [survivor]
    assert f"rank 1 (pid {victim}) died without detaching" in lost[0]["message"]
    value = daemon.metric("gpu_watchdog_rank_lost", training_job="hang-job", pid=str(victim))
    assert value == 1
    assert daemon.metric("gpu_watchdog_rank_lost", rank="0") is None
    wait_for(
        lambda: daemon.events("control_command_sent", command="dump_stacks", pid=survivor),
        10,
        "the survivor's stacks asked for",
    )


def test_cleanly_finished_ranks_are_not_lost(
    daemon_factory: Callable[..., LiveDaemon], short_dir: Path
) -> None:
    """Ranks that end normally say goodbye at exit: no rank_lost when one ends before the other."""
    daemon = daemon_factory()
    script = (
        "import sys, time, watchdog\n"
        "wd = watchdog.attach(socket_path=sys.argv[1], job='done-job', rank=int(sys.argv[2]),"
        " world_size=2, heartbeat_s=0.2)\n"
        "wd.step(); wd.link.connected.wait(10); time.sleep(float(sys.argv[3]))\n"
    )
    ranks = [
        subprocess.Popen([sys.executable, "-c", script, daemon.socket, str(r), str(s)], cwd=REPO)
        for r, s in ((0, 0.5), (1, 3.0))
    ]
    assert [p.wait(timeout=60) for p in ranks] == [0, 0]
    wait_for(lambda: len(daemon.events("control_client_left")) >= 2, 10, "both ranks leaving")
    assert daemon.events("rank_lost_raised") == []


@pytest.mark.slow
def test_group_restart_lets_torchrun_restart_the_hung_group(
    daemon_factory: Callable[..., LiveDaemon], short_dir: Path
) -> None:
    """With policy.group_restart, both stalled ranks exit 75 and torchrun's restart finishes."""
    daemon = daemon_factory(group_restart=True)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_")}
    result = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "localhost:0",
            "--monitor-interval",
            "0.2",
            str(TESTS / "hang_loop.py"),
            daemon.socket,
            "30",
            "hang",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # Both ranks share torchrun's stdout, so one's line may land inside the other's.
    done = sorted(re.findall(r"done \d+ \d+", result.stdout))
    assert done == ["done 0 30", "done 1 30"], result.stdout + result.stderr[-2000:]
    actions = daemon.events("action", action="restart_group", outcome="send")
    assert len(actions) == 1, actions
    results = daemon.events("action_result", action="restart_group")
    assert len(results) == 2, daemon.events("action_failed")
    assert daemon.events("rank_lost_raised") == []  # they left on purpose, saying so
