"""The systemd unit: systemd-analyze verifies it, its sandbox is in budget, it fits the daemon."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, require_tool
from watchdog.cli import build_parser
from watchdog.errors import EXIT_NVML_UNAVAILABLE, EXIT_USAGE

SYSTEMD = REPO / "deploy" / "systemd"
UNIT = SYSTEMD / "gpu-watchdog.service"
SYSUSERS = SYSTEMD / "gpu-watchdog.sysusers.conf"
EXPOSURE_BUDGET = 15
"""`systemd-analyze security` exposure x10 that the unit may not exceed (1.5 "OK" today)."""


def _settings(path: Path = UNIT) -> dict[tuple[str, str], list[str]]:
    """Every (section, key) of a unit file with all its values, in order."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def _one(section: str, key: str) -> str:
    values = _settings()[(section, key)]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def _fake_root(tmp_path: Path) -> Path:
    """A root with systemd's units, the unit, and a stand-in for the ExecStart binary."""
    root = tmp_path / "root"
    units = root / "usr" / "lib" / "systemd"
    units.mkdir(parents=True)
    system = Path("/usr/lib/systemd/system")
    if not system.is_dir():
        system = Path("/lib/systemd/system")
    shutil.copytree(system, units / "system", symlinks=True)
    etc = root / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    shutil.copy(UNIT, etc / UNIT.name)
    for command in ("ExecStart", "ExecReload"):
        binary = root / _one("Service", command).split()[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return root


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit with no warning (unknown keys only warn)."""
    tool = require_tool("systemd-analyze")
    root = _fake_root(tmp_path)
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


def test_security_exposure_stays_within_budget() -> None:
    """`systemd-analyze security --offline` rates the sandbox at most 1.5 (OK)."""
    tool = require_tool("systemd-analyze")
    result = subprocess.run(
        [
            tool,
            "security",
            "--offline=true",
            f"--threshold={EXPOSURE_BUDGET}",
            "--no-pager",
            str(UNIT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = (result.stdout.strip().splitlines() or [""])[-1]
    assert result.returncode == 0, last
    assert "Overall exposure level" in last


def test_sysusers_file_is_valid() -> None:
    """systemd-sysusers would create the gpu-watchdog user and group from the shipped file."""
    tool = require_tool("systemd-sysusers")
    with_root = subprocess.run(
        [tool, "--dry-run", f"--root={REPO / 'build-nonexistent-root'}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert with_root.returncode == 0, with_root.stderr
    assert "Creating user 'gpu-watchdog'" in with_root.stdout + with_root.stderr


def test_unit_is_a_notify_service_restarted_on_failure() -> None:
    """Type=notify with a watchdog; restarted on failure, but not for bad config or missing NVML."""
    assert _one("Service", "Type") == "notify"
    assert _one("Service", "NotifyAccess") == "main"
    assert _one("Service", "Restart") == "on-failure"
    assert _one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"  # systemctl reload
    assert int(_one("Service", "WatchdogSec").rstrip("s")) >= 10
    assert set(_one("Service", "RestartPreventExitStatus").split()) == {
        str(EXIT_USAGE),
        str(EXIT_NVML_UNAVAILABLE),
    }
    # StartLimit* belong to [Unit]; in [Service] systemd ignores them (with a warning).
    assert ("Unit", "StartLimitBurst") in _settings()
    assert ("Service", "StartLimitBurst") not in _settings()


def test_unit_keeps_what_the_daemon_needs() -> None:
    """/dev/nvidia* and other users' /proc stay reachable; socket and state directories exist."""
    settings = _settings()
    assert ("Service", "PrivateDevices") not in settings
    assert _one("Service", "DevicePolicy") == "closed"
    allowed = " ".join(settings[("Service", "DeviceAllow")])
    assert "/dev/nvidiactl" in allowed
    assert "char-nvidia-frontend" in allowed
    assert _one("Service", "ProtectProc") == "default"
    assert ("Service", "PrivateUsers") not in settings
    assert _one("Service", "RuntimeDirectory") == "gpu-watchdog"
    assert _one("Service", "RuntimeDirectoryMode") == "0750"
    assert _one("Service", "StateDirectory") == "gpu-watchdog"
    assert _one("Service", "ProtectSystem") == "strict"
    assert _one("Service", "NoNewPrivileges") == "yes"
    assert _one("Service", "PrivateTmp") == "yes"
    assert _one("Service", "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"


def test_exec_start_is_a_valid_command_line() -> None:
    """ExecStart parses as `gpu-watchdog run --config ...` with the default config path."""
    argv = _one("Service", "ExecStart").split()
    assert argv[0].endswith("/gpu-watchdog")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert str(args.config) == "/etc/gpu-watchdog/config.toml"


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/run/systemd/system").is_dir() or os.geteuid() != 0,
    reason="needs systemd as the running init and root",
)
def test_a_stopped_daemon_is_aborted_and_restarted_by_the_watchdog(tmp_path: Path) -> None:
    """SIGSTOP under WatchdogSec=5: systemd aborts the silent daemon and starts it again."""
    binary = shutil.which("gpu-watchdog")
    assert binary, "gpu-watchdog is not on PATH"
    unit = f"gpu-watchdog-test-{os.getpid()}"
    subprocess.run(
        [
            "systemd-run",
            f"--unit={unit}",
            "-p",
            "Type=notify",
            "-p",
            "WatchdogSec=5",
            "-p",
            "Restart=on-failure",
            "-p",
            "RestartSec=1",
            binary,
            "run",
            "--simulate",
            "healthy",
            "--listen",
            "127.0.0.1:0",
        ],
        check=True,
        timeout=60,
    )
    try:
        first = _main_pid(unit)
        os.kill(first, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _main_pid(unit) in (first, 0):
            time.sleep(1)
        assert _main_pid(unit) not in (first, 0), "the stopped daemon was not restarted"
    finally:
        subprocess.run(["systemctl", "stop", unit], timeout=60)
        subprocess.run(["systemctl", "reset-failed", unit], timeout=60)


def _main_pid(unit: str) -> int:
    out = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", unit],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return int(out or 0)


def _syscall_groups(tool: str) -> dict[str, set[str]]:
    """systemd's system call groups, as `systemd-analyze syscall-filter` lists them."""
    out = subprocess.run(
        [tool, "syscall-filter", "--no-pager"], capture_output=True, text=True, timeout=60
    ).stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = set()
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].add(line.strip())
    return groups


def _expand(groups: dict[str, set[str]], name: str) -> set[str]:
    calls: set[str] = set()
    for item in groups.get(name, set()):
        calls |= _expand(groups, item) if item.startswith("@") else {item}
    return calls


@pytest.mark.slow
def test_daemon_system_calls_fit_the_unit_filter(tmp_path: Path) -> None:
    """Under strace, the running daemon only makes calls SystemCallFilter= lets through."""
    strace = require_tool("strace")
    tool = require_tool("systemd-analyze")
    allowed_groups, denied_groups = [], []
    for value in _settings()[("Service", "SystemCallFilter")]:
        target = denied_groups if value.startswith("~") else allowed_groups
        target.extend(value.lstrip("~").split())
    groups = _syscall_groups(tool)
    allowed = set().union(*(_expand(groups, g) for g in allowed_groups))
    denied = set().union(*(_expand(groups, g) for g in denied_groups))
    short = Path(tempfile.mkdtemp(prefix="wd-sc-"))
    config = short / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{short / "state"}"\n'
        f'[control]\nsocket_path = "{short / "run" / "watchdog.sock"}"\n'
    )
    trace = tmp_path / "trace"
    port = free_port()
    process = subprocess.Popen(
        [
            strace,
            "-f",
            "-qq",
            "-o",
            str(trace),
            sys.executable,
            "-m",
            "watchdog",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--simulate",
            "leak",
            "--speed",
            "60",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemon_pid = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        time.sleep(5)  # polls, detection, a few more scrapes
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
            pass
        daemon_pid = int(trace.read_text().split(None, 1)[0])  # the first traced process
        os.kill(daemon_pid, signal.SIGTERM)  # to the daemon itself: strace then exits with it
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()  # strace: its tracee is detached, not killed, so end that too
            process.wait(timeout=10)
            if not daemon_pid and trace.exists() and trace.read_text().strip():
                daemon_pid = int(trace.read_text().split(None, 1)[0])
            if daemon_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon_pid, signal.SIGKILL)
        shutil.rmtree(short, ignore_errors=True)
    used = set(re.findall(r"^\d+ +(\w+)\(", trace.read_text(), re.MULTILINE))
    assert "socket" in used  # the trace did catch the daemon
    assert not used - allowed, f"refused by SystemCallFilter=: {sorted(used - allowed)}"
    assert not used & denied, f"refused by SystemCallFilter=~: {sorted(used & denied)}"


MDWE_WRAPPER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)  # kernel before 6.3: no PR_SET_MDWE
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(78)  # W+X still allowed: the test would prove nothing
except OSError:
    pass
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.mark.slow
def test_daemon_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes holds: the daemon (ctypes, pynvml) serves with W+X refused."""
    short = Path(tempfile.mkdtemp(prefix="wd-mdwe-"))
    config = short / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{short / "state"}"\n'
        f'[control]\nsocket_path = "{short / "run" / "watchdog.sock"}"\n'
    )
    port = free_port()
    # pynvml is loaded through ctypes first (it fails without a driver, which is fine here).
    script = (
        "import pynvml, contextlib\n"
        "with contextlib.suppress(pynvml.NVMLError):\n    pynvml.nvmlInit()\n"
        "from watchdog.cli import main\nimport sys\n"
        f"sys.exit(main(['run', '--config', {str(config)!r}, '--listen', '127.0.0.1:{port}',"
        " '--simulate', 'leak']))\n"
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", MDWE_WRAPPER, "-c", script],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        served = False
        while time.monotonic() < deadline and process.poll() is None and not served:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    served = r.status == 200
            except OSError:
                time.sleep(0.5)
        if process.poll() == 77:
            pytest.skip("kernel without PR_SET_MDWE (before 6.3)")
        assert process.poll() != 78, "W+X mapping still allowed under PR_SET_MDWE"
        assert served, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(short, ignore_errors=True)
