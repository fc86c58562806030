"""What the daemon can read without root, and the drop-in that grants the rest.

docs/security.md ("Running unprivileged") says which /proc files of another
user's process an unprivileged daemon can read and which capabilities each
other file needs; these tests check those claims against the running kernel
(as an unprivileged user made with setpriv) and check the shipped drop-in with
systemd's own tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.test_deploy_systemd import UNIT, _fake_root

DROPIN = UNIT.parent / "gpu-watchdog-environ.conf"
NOBODY = "65534"


def _root_with_dropin(tmp_path: Path) -> Path:
    root = _fake_root(tmp_path)
    directory = root / "etc" / "systemd" / "system" / f"{UNIT.name}.d"
    directory.mkdir()
    shutil.copy(DROPIN, directory / "environ.conf")
    return root


def test_environ_dropin_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit with the drop-in installed verifies with no warning at all."""
    tool = require_tool("systemd-analyze")
    root = _root_with_dropin(tmp_path)
    result = subprocess.run(
        [
            tool,
            "verify",
            f"--root={root}",
            "--man=no",
            "--generators=no",
            str(root / "etc" / "systemd" / "system" / UNIT.name),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_environ_dropin_grants_exactly_the_two_capabilities(tmp_path: Path) -> None:
    """systemd sees the drop-in: ptrace and DAC-read capabilities, and nothing else new."""
    tool = require_tool("systemd-analyze")
    root = _root_with_dropin(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=true", f"--root={root}", "--no-pager", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    granted = {
        line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("✗") and "CapabilityBoundingSet" in line
    }
    assert granted == {
        "CapabilityBoundingSet=~CAP_SYS_PTRACE",
        "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
    }, result.stdout
    assert any(line.startswith("✗ AmbientCapabilities=") for line in result.stdout.splitlines())


@pytest.fixture
def root_process() -> Iterator[int]:
    """A process of root's with SLURM_JOB_ID in its environment (what the daemon looks for)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to look at a root process as another user")
    process = subprocess.Popen(
        ["sleep", "60"], env={"SLURM_JOB_ID": "4242", "PATH": os.environ["PATH"]}
    )
    yield process.pid
    process.kill()
    process.wait(timeout=10)


def _readable_as_nobody(pid: int, name: str, caps: str) -> bool:
    """Whether user nobody, with ambient capabilities ``caps``, can read /proc/PID/NAME."""
    setpriv = require_tool("setpriv")
    args = [
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        f"--inh-caps={caps or '-all'}",
    ]
    if caps:
        args.append(f"--ambient-caps={caps}")
    result = subprocess.run([*args, "cat", f"/proc/{pid}/{name}"], capture_output=True, timeout=30)
    if not caps and result.returncode != 0 and b"Permission denied" not in result.stderr:
        pytest.skip(f"setpriv cannot drop to nobody here: {result.stderr!r}")
    return result.returncode == 0 and (name != "environ" or b"SLURM_JOB_ID=4242" in result.stdout)


def test_unprivileged_reads_memory_and_cgroup_but_environ_needs_two_capabilities(
    root_process: int,
) -> None:
    """statm/status/stat/cgroup need nothing; environ needs CAP_SYS_PTRACE and DAC_READ_SEARCH."""
    for name in ("statm", "status", "stat", "cgroup", f"task/{root_process}/children"):
        assert _readable_as_nobody(root_process, name, ""), name
    assert not _readable_as_nobody(root_process, "environ", "")
    assert not _readable_as_nobody(root_process, "environ", "+sys_ptrace")
    assert not _readable_as_nobody(root_process, "environ", "+dac_read_search")
    assert _readable_as_nobody(root_process, "environ", "+sys_ptrace,+dac_read_search")
