"""The host source and process attribution: real processes, vanished ones, forbidden ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from watchdog.samples import Owner
from watchdog.sources.attribution import owner_of, parse_cgroup, parse_environ
from watchdog.sources.host import HostSource, _kernel_children

CONTAINER = "3f1b2c4d5e6f" + "a" * 52
POD = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def parent_with_child() -> Iterator[subprocess.Popen[bytes]]:
    """A process holding 64 MiB whose child holds 32 MiB, like a trainer and its DataLoader."""
    code = (
        "import subprocess, sys, time\n"
        "block = bytearray(64 << 20)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import time; b = bytearray(32 << 20); time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()
    yield process
    for child in psutil.Process(process.pid).children(recursive=True):
        child.kill()
    process.kill()
    process.wait()


def test_rss_includes_children(parent_with_child: subprocess.Popen[bytes]) -> None:
    """A GPU process's host memory counts its children (DataLoader workers) too."""
    import time

    source = HostSource(lambda: [parent_with_child.pid])
    deadline = time.monotonic() + 10
    while True:
        [sample] = source.poll().host_processes or []
        if (sample.children_rss_bytes or 0) > 30 << 20 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sample.rss_bytes is not None
    assert sample.rss_bytes > 60 << 20
    assert sample.children_rss_bytes is not None
    assert sample.children_rss_bytes > 30 << 20
    assert sample.total_rss_bytes == sample.rss_bytes + sample.children_rss_bytes
    assert sample.command.startswith("python")


def test_a_thread_exiting_mid_read_hides_no_other_thread_s_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread 101 is listed but gone before its ``children`` is read; 102's workers still count."""
    for tid, children in (("100", "201 "), ("102", "202 203 ")):
        (tmp_path / "100" / "task" / tid).mkdir(parents=True)
        (tmp_path / "100" / "task" / tid / "children").write_text(children)
    listdir = os.listdir
    monkeypatch.setattr(
        os,
        "listdir",
        lambda path: ["100", "101", "102"] if str(path).endswith("100/task") else listdir(path),
    )
    assert _kernel_children(tmp_path, 100) == [201, 202, 203]


def test_host_memory_is_reported() -> None:
    """Host total and available memory come with every poll."""
    reading = HostSource(list).poll()
    assert reading.host_memory is not None
    assert 0 < reading.host_memory.available_bytes <= reading.host_memory.total_bytes
    assert reading.host_processes == []


def test_vanished_process_is_skipped() -> None:
    """A pid that exited between the GPU query and the host query is left out, no error."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    reading = HostSource(lambda: [process.pid, os.getpid()]).poll()
    assert [s.pid for s in reading.host_processes or []] == [os.getpid()]


class _Forbidden:
    """A psutil.Process stand-in whose memory may not be read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def oneshot(self) -> psutil.Process:
        return psutil.Process(os.getpid()).oneshot()

    def name(self) -> str:
        return "secret"

    def create_time(self) -> float:
        return 1.0

    def username(self) -> str:
        raise psutil.AccessDenied(self.pid)

    def memory_info(self) -> SimpleNamespace:
        raise psutil.AccessDenied(self.pid)

    def children(self, recursive: bool = False) -> list[object]:
        raise psutil.AccessDenied(self.pid)


def test_forbidden_process_has_unknown_rss_not_zero() -> None:
    """AccessDenied gives an unknown RSS (None), never 0 and never a crash."""
    reading = HostSource(lambda: [1234], process_factory=_Forbidden).poll()
    [sample] = reading.host_processes or []
    assert (sample.pid, sample.command, sample.username) == (1234, "secret", "")
    assert sample.rss_bytes is None
    assert sample.total_rss_bytes is None


def test_process_factory_denied_outright_still_reports_the_pid() -> None:
    """A process that cannot even be opened is reported with unknown figures."""

    def deny(pid: int) -> object:
        raise psutil.AccessDenied(pid)

    [sample] = HostSource(lambda: [77], process_factory=deny).poll().host_processes or []
    assert sample.pid == 77
    assert sample.rss_bytes is None


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ("0::/system.slice/train.service\n", Owner(systemd_unit="train.service")),
        (
            "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n",
            Owner(systemd_unit="", slurm_job_id="4242"),
        ),
        ("4:memory:/slurm/uid_1000/job_77/step_batch\n", Owner(slurm_job_id="77")),
        (f"0::/system.slice/docker-{CONTAINER}.scope\n", Owner(container_id=CONTAINER)),
        (f"12:pids:/docker/{CONTAINER}\n", Owner(container_id=CONTAINER)),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope\n",
            Owner(container_id=CONTAINER, pod_uid=POD),
        ),
        (
            f"0::/kubepods/besteffort/pod{POD}/{CONTAINER}\n",
            Owner(container_id=CONTAINER, pod_uid=POD),
        ),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", Owner(systemd_unit="session-3.scope")),
        ("0::/\n", Owner()),
        ("", Owner()),
    ],
)
def test_cgroup_attribution(cgroup: str, expected: Owner) -> None:
    """systemd units, Slurm jobs, containers and pods are read from cgroup v1 and v2 paths."""
    assert parse_cgroup(cgroup) == expected


def test_owner_label_prefers_the_most_specific() -> None:
    """The metric label names the pod before the Slurm job, container and unit."""
    assert Owner(container_id=CONTAINER, pod_uid=POD).label() == f"pod:{POD}"
    assert Owner(slurm_job_id="7", systemd_unit="x.service").label() == "slurm:7"
    assert Owner(container_id=CONTAINER).label() == f"container:{CONTAINER[:12]}"
    assert Owner().label() == ""


def test_slurm_job_from_environment_on_a_fixture_procfs(tmp_path: Path) -> None:
    """Without a Slurm cgroup, SLURM_JOB_ID in the process environment names the job."""
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-3.scope\n")
    (tmp_path / "42" / "environ").write_bytes(b"HOME=/root\0SLURM_JOB_ID=991\0")
    assert owner_of(42, tmp_path) == Owner(systemd_unit="session-3.scope", slurm_job_id="991")


def test_unreadable_procfs_entries_give_an_empty_owner(tmp_path: Path) -> None:
    """A pid with no readable cgroup or environ has no owner, and raises nothing."""
    assert owner_of(99, tmp_path) == Owner()


def test_parse_environ_tolerates_junk() -> None:
    """Entries without '=' and undecodable bytes do not break parsing."""
    assert parse_environ(b"A=1\0junk\0B=\xff\0") == {"A": "1", "B": "\ufffd"}


def test_owner_is_read_once_per_process_and_not_inherited_by_a_reused_pid(tmp_path: Path) -> None:
    """The owner is cached by pid and start time: a new process with the same pid is read anew."""
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text("0::/system.slice/a.service\n")
    started = [1.0]

    class Stub(_Forbidden):
        def username(self) -> str:
            return "bob"

        def memory_info(self) -> SimpleNamespace:
            return SimpleNamespace(rss=1)

        def children(self, recursive: bool = False) -> list[object]:
            return []

        def create_time(self) -> float:
            return started[0]

    source = HostSource(lambda: [7], proc_root=tmp_path, process_factory=Stub, parent_map=dict)
    assert source.poll().host_processes[0].owner.systemd_unit == "a.service"  # type: ignore[index]
    (tmp_path / "7" / "cgroup").write_text("0::/system.slice/b.service\n")
    assert source.poll().host_processes[0].owner.systemd_unit == "a.service"  # type: ignore[index]
    started[0] = 2.0  # the pid was reused by a new process
    assert source.poll().host_processes[0].owner.systemd_unit == "b.service"  # type: ignore[index]


def test_polling_interns_no_strings(
    parent_with_child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll interns none of the pids and thread ids it reads (pathlib would, each time).

    Every interned string takes a slot in the interpreter's interned-string table
    until the table is rebuilt; the rebuild that came of this churn doubled the
    table (1 MiB more RSS, kept for good) in a daemon 25 minutes after start.
    """
    source = HostSource(lambda: [parent_with_child.pid, os.getpid()])
    source.poll()  # owners are read once per process; the steady state is what counts
    interned: list[str] = []

    def counting_intern(value: str) -> str:
        interned.append(value)
        return value

    monkeypatch.setattr(sys, "intern", counting_intern)
    reading = source.poll()
    assert len(reading.host_processes or []) == 2
    assert interned == []
