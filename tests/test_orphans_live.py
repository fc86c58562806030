"""Orphaned GPU memory with real processes: a child that outlives its launcher, and a zombie.

The host source reads their parent and state from /proc; the GPU side comes
from a made-up process list (unit level) or the fake libnvidia-ml that the
real daemon loads (end to end), listing the real pids with GPU memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from control_helpers import wait_for

from tests.conftest import PYTHON, descriptors_past_select_limit
from watchdog.detectors.orphans import REPARENTED, UNATTRIBUTED, ZOMBIE, OrphanDetector
from watchdog.samples import DeviceSample, GpuProcessSample
from watchdog.sources.host import HostSource, process_exited, sees_host_pids

GIB = 1 << 30

# Starts a "worker" that sleeps, prints its pid, then exits when its stdin closes: the worker
# lives on, reparented to init (or the nearest subreaper), as after a launcher crash.
LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(worker.pid, flush=True)
sys.stdin.read()
"""


class Family:
    """A launcher and its worker; ``orphan()`` ends the launcher and leaves the worker."""

    def __init__(self) -> None:
        self.launcher = subprocess.Popen(
            [PYTHON, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.launcher.stdout is not None
        self.worker = int(self.launcher.stdout.readline())

    def orphan(self) -> None:
        assert self.launcher.stdin is not None
        self.launcher.stdin.close()
        self.launcher.wait(timeout=30)

    def end(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.worker, signal.SIGKILL)
        self.launcher.kill()
        self.launcher.wait()


@pytest.fixture
def family() -> Iterator[Family]:
    """A launcher with one worker; both killed afterwards."""
    made = Family()
    yield made
    made.end()


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child of this test that has exited and is not reaped (until the test ends)."""
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    wait_for(lambda: _state(child.pid) == "Z", 30, "the child to become a zombie")
    yield child.pid
    child.wait()  # reaped: the zombie is gone


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def test_host_source_reports_parent_and_state(family: Family, zombie: int) -> None:
    """ppid follows a reparenting, a zombie says so: both read from /proc by the host source."""
    source = HostSource(lambda: [family.worker, zombie])
    before = {s.pid: s for s in source.poll().host_processes or []}
    assert before[family.worker].ppid == family.launcher.pid
    assert before[zombie].state == "zombie"
    assert before[zombie].ppid == os.getpid()
    family.orphan()
    after = wait_for(
        lambda: next(
            (
                s
                for s in source.poll().host_processes or []
                if s.pid == family.worker and s.ppid != family.launcher.pid
            ),
            None,
        ),
        30,
        "the worker's reparenting",
    )
    assert after.state in ("sleeping", "running")
    assert after.started == before[family.worker].started  # the same process, not a new one


def test_orphans_found_from_real_processes(family: Family, zombie: int) -> None:
    """The detector, fed by the host source, reports the reparented worker and the zombie."""
    source = HostSource(lambda: [family.worker, zombie])
    gpu = [
        GpuProcessSample(gpu=0, pid=family.worker, used_bytes=GIB),
        GpuProcessSample(gpu=0, pid=zombie, used_bytes=2 * GIB),
    ]
    device = [DeviceSample(gpu=0, total_bytes=80 * GIB, used_bytes=3 * GIB)]
    detector = OrphanDetector(min_age_s=0, unattributed_min_bytes=GIB)
    events = detector.observe(0, device, gpu, source.poll().host_processes)
    assert [(e.reason, e.pid) for e in events] == [(ZOMBIE, zombie)]
    family.orphan()
    found = wait_for(
        lambda: detector.observe(1, device, gpu, source.poll().host_processes),
        30,
        "the reparented worker",
    )
    assert [(e.state, e.reason, e.pid, e.parent) for e in found] == [
        ("raised", REPARENTED, family.worker, family.launcher.pid)
    ]


def test_process_exited_tells_dead_from_alive(zombie: int) -> None:
    """A zombie or a reaped pid has exited; this process has not (after the short wait)."""
    assert process_exited(zombie, None)
    assert not process_exited(os.getpid(), None, within_s=0.05)
    assert not process_exited(0, None)  # a pid from another namespace: claim nothing
    assert sees_host_pids() == Path("/proc/2/stat").exists()


def test_process_exited_works_past_1024_descriptors(zombie: int) -> None:
    """The daemon raises its file limit for its clients: a pidfd past 1,024 still waits."""
    with descriptors_past_select_limit():
        assert process_exited(zombie, None)
        assert not process_exited(os.getpid(), None, within_s=0.05)


# --- end to end: the real daemon on the fake libnvidia-ml -------------------------------


@pytest.fixture
def fake_daemon(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., object]]:
    """Start ``gpu-watchdog run`` on the fake NVML (tests/fake_libnvml); stopped afterwards."""
    from tests.conftest import require_tool
    from tests.fake_libnvml import FakeNvml, compiler
    from tests.test_e2e_fake_nvml import Daemon

    require_tool(Path(compiler() or "cc").name)
    started: list[Daemon] = []

    def start(state: object) -> Daemon:
        fake = FakeNvml(tmp_path / "nvml.json", state)  # type: ignore[arg-type]
        daemon = Daemon(
            fake,
            tmp_path,
            cli_env,
            detection={
                "orphan_min_age_s": 1.0,
                "orphan_unattributed": "on",
                "orphan_unattributed_min_bytes": GIB,
            },
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop()


def test_daemon_reports_orphaned_memory_on_real_processes(
    fake_daemon: Callable[..., object], family: Family, zombie: int
) -> None:
    """Zombie, reparented worker and unattributed memory: metrics, log lines, and clears."""
    from tests.fake_libnvml import FakeProcess, FakeState, gpus
    from tests.test_e2e_fake_nvml import value

    state = FakeState(gpus=gpus(2))
    state.gpus[0].processes = [
        FakeProcess(pid=family.worker, used_memory=GIB),
        FakeProcess(pid=zombie, used_memory=2 * GIB),
    ]
    state.gpus[0].memory_used = 8 * GIB  # 5 GiB more than its processes hold
    state.gpus[1].processes = [FakeProcess(pid=family.worker, used_memory=None)]  # hidden
    state.gpus[1].memory_used = 8 * GIB
    daemon = fake_daemon(state)
    # The worker must be seen under its launcher first: only a change of parent proves anything.
    daemon.wait_for(
        lambda s: (
            value(s, "gpu_watchdog_process_info", pid=str(family.worker)) is not None
            and value(s, "gpu_watchdog_orphaned_memory_bytes", reason=ZOMBIE) is not None
        ),
        timeout=30,
    )
    family.orphan()
    series = daemon.wait_for(
        lambda s: value(s, "gpu_watchdog_orphaned_memory_bytes", reason=REPARENTED) is not None,
        timeout=30,
    )
    orphaned = "gpu_watchdog_orphaned_memory_bytes"
    assert value(series, orphaned, gpu="0", pid=str(family.worker), reason=REPARENTED) == GIB
    assert value(series, orphaned, gpu="0", pid=str(zombie), reason=ZOMBIE) == 2 * GIB
    assert value(series, orphaned, gpu="0", pid="", reason=UNATTRIBUTED) == 5 * GIB
    assert value(series, "gpu_watchdog_gpu_memory_unattributed_bytes", gpu="0") == 5 * GIB
    assert value(series, "gpu_watchdog_gpu_memory_unattributed_bytes", gpu="1") is None
    assert value(series, orphaned, gpu="1") is None  # hidden memory: nothing claimed
    log = daemon.output()
    assert "orphaned_memory_raised" in log
    assert "its parent (pid" in log
    # The worker ends: its finding clears; the GPU's sum no longer counts it either.
    os.kill(family.worker, signal.SIGKILL)
    state.gpus[0].processes = [FakeProcess(pid=zombie, used_memory=2 * GIB)]
    state.gpus[0].memory_used = 2 * GIB
    daemon.fake.write(state)
    series = daemon.wait_for(
        lambda s: (
            value(s, orphaned, reason=REPARENTED) is None
            and value(s, orphaned, reason=UNATTRIBUTED) is None
        ),
        timeout=30,
    )
    assert value(series, orphaned, pid=str(zombie)) == 2 * GIB
    assert "orphaned_memory_cleared" in daemon.output()
