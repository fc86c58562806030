"""The real ``gpu-watchdog run`` end to end on the fake libnvidia-ml: NVML source, not simulated.

The daemon runs as a subprocess that loads the fake through ``LD_LIBRARY_PATH``
(the real pynvml, the real loader path). Its GPUs' processes are real child
processes, so host RSS and attribution are read from /proc as in production.
Each test changes the fake's state while the daemon runs and scrapes /metrics.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import dataclasses
import getpass
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PYTHON, free_port, require_tool
from tests.fake_libnvml import GIB, MIB, FakeNvml, FakeProcess, FakeState, Fault, compiler, gpus
from watchdog.errors import EXIT_NVML_UNAVAILABLE

pytestmark = pytest.mark.slow

INTERVAL_S = 0.2
STALL_AFTER_S = 1.0
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

# A "training job": holds 64 MiB and has one "DataLoader worker" child holding 32 MiB.
JOB = """
import os, subprocess, sys, time
data = bytearray(64 << 20)
for i in range(0, len(data), 4096):
    data[i] = 1
worker = subprocess.Popen([sys.executable, "-c",
    "import time; d = bytearray(32 << 20)\\nfor i in range(0, len(d), 4096): d[i] = 1\\n"
    "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
worker.stdout.readline()
print("ready", flush=True)
time.sleep(600)
"""


def _config_text(tmp_path: Path, detection: dict[str, float] | None = None) -> str:
    """A config with fast polls; runtime paths in tmp_path where this version has them."""
    from watchdog.config import sections

    known = {name: {f.name for f in dataclasses.fields(kind)} for name, kind in sections().items()}
    wanted: dict[str, dict[str, float | str]] = {
        "sources": {
            "device_interval_s": INTERVAL_S,
            "process_interval_s": INTERVAL_S,
            "host_interval_s": INTERVAL_S,
            "stall_after_s": STALL_AFTER_S,
        },
        "daemon": {"state_dir": str(tmp_path / "state"), "log_level": "info"},
        "control": {"socket_path": str(tmp_path / "run" / "watchdog.sock")},
        "detection": {"near_oom_clear_after_s": 0.0, **(detection or {})},  # 0: clear at once
    }
    lines = []
    for section, values in wanted.items():
        present = {k: v for k, v in values.items() if k in known.get(section, set())}
        if present:
            lines.append(f"[{section}]")
            lines += [f"{k} = {v!r}".replace("'", '"') for k, v in present.items()]
    return "\n".join(lines) + "\n"


class Daemon:
    """``gpu-watchdog run`` on a fake NVML, with helpers to scrape and wait."""

    def __init__(
        self,
        fake: FakeNvml,
        tmp_path: Path,
        env: dict[str, str],
        detection: dict[str, float] | None = None,
    ) -> None:
        self.fake = fake
        self.port = free_port()
        config = tmp_path / "config.toml"
        config.write_text(_config_text(tmp_path, detection))
        self.log = (tmp_path / "daemon.log").open("w+")
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "watchdog",
                "run",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=fake.env(env),
        )

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of one GET."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=timeout
            ) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> Series:
        """Every sample on /metrics, by name and labels."""
        _, body = self.get("/metrics")
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def wait_for(self, check: Callable[[Series], bool], timeout: float = 15.0) -> Series:
        """Scrape until ``check`` holds; fail with the daemon's log otherwise."""
        deadline = time.monotonic() + timeout
        series: Series = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"daemon exited {self.process.returncode}:\n{self.output()}"
            )
            try:
                series = self.scrape()
            except OSError:
                series = {}
            if series and check(series):
                return series
            time.sleep(0.1)
        pytest.fail(
            f"condition not met in {timeout}s ({len(series)} samples scraped)\n"
            + self.output()[-3000:]
        )

    def output(self) -> str:
        """What the daemon logged so far."""
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; kill (and fail) if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.log.close()


def samples(scraped: Series, name: str, /, **labels: str) -> list[float]:
    """The values of every sample ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return [v for (n, ls), v in scraped.items() if n == name and wanted <= ls]


def value(scraped: Series, name: str, /, **labels: str) -> float | None:
    """The sample ``name`` whose labels include ``labels``; None if there is none."""
    found = samples(scraped, name, **labels)
    assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
    return found[0] if found else None


@pytest.fixture
def jobs() -> Iterator[list[subprocess.Popen[str]]]:
    """Two running "training jobs", each with a DataLoader-like child; all killed afterwards."""
    started: list[subprocess.Popen[str]] = []
    workers: list[int] = []
    try:
        for _ in range(2):
            job = subprocess.Popen([PYTHON, "-c", JOB], stdout=subprocess.PIPE, text=True)
            started.append(job)
            assert job.stdout is not None
            assert job.stdout.readline().strip() == "ready"
            workers += _children_of(job.pid)
        yield started
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for job in started:
            job.kill()
            job.wait()


def _children_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def start(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Callable[[FakeState], Daemon]]:
    """Start the daemon on a fake NVML with the given state; always stopped afterwards."""
    require_tool(Path(compiler() or "cc").name)
    started: list[Daemon] = []

    def _start(
        state: FakeState, omit: tuple[str, ...] = (), detection: dict[str, float] | None = None
    ) -> Daemon:
        fake = FakeNvml(tmp_path / "nvml.json", state, omit)
        daemon = Daemon(fake, tmp_path, cli_env, detection)
        started.append(daemon)
        return daemon

    yield _start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop()


def _four_gpus(jobs: list[subprocess.Popen[str]]) -> FakeState:
    state = FakeState(gpus=gpus(4))
    for index, gpu in enumerate(state.gpus):
        gpu.memory_used = (index + 1) * GIB
    state.gpus[0].processes = [
        FakeProcess(pid=jobs[0].pid, used_memory=3 * GIB),
        FakeProcess(pid=999_999_1, used_memory=GIB, vanishes=True),  # exits between NVML's calls
    ]
    state.gpus[1].processes = [FakeProcess(pid=jobs[1].pid, used_memory=None)]  # hidden (MIG)
    return state


def _ready(series: Series) -> bool:
    return (
        all(
            value(series, "gpu_watchdog_collector_success", collector=c) == 1
            for c in ("nvml_devices", "nvml_processes", "host")
        )
        and len(samples(series, "gpu_watchdog_process_host_rss_bytes")) == 2  # both jobs
    )


def test_metrics_figures_and_per_process_attribution(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """GPU figures, versions and per-process GPU memory, host RSS with children and identity."""
    daemon = start(_four_gpus(jobs))
    series = daemon.wait_for(_ready)
    assert value(series, "gpu_watchdog_build_info", driver_version="550.54.15") == 1
    assert value(series, "gpu_watchdog_build_info", nvml_version="12.550.54.15") == 1
    for gpu in range(4):
        g = str(gpu)
        assert value(series, "gpu_watchdog_gpu_info", gpu=g, source="nvml") == 1
        assert value(series, "gpu_watchdog_gpu_memory_total_bytes", gpu=g) == 80 * GIB
        assert value(series, "gpu_watchdog_gpu_memory_used_bytes", gpu=g) == (gpu + 1) * GIB
        assert value(series, "gpu_watchdog_gpu_memory_reserved_bytes", gpu=g) == 512 * MIB
        free = 80 * GIB - (gpu + 1) * GIB - 512 * MIB
        assert value(series, "gpu_watchdog_gpu_memory_free_bytes", gpu=g) == free
        assert value(series, "gpu_watchdog_gpu_utilization_ratio", gpu=g) == 0.5
        assert value(series, "gpu_watchdog_gpu_temperature_celsius", gpu=g) == 40
        assert value(series, "gpu_watchdog_gpu_power_watts", gpu=g) == 250
        assert value(series, "gpu_watchdog_gpu_lost", gpu=g) == 0
    uuid = "GPU-fa4e0000-0000-4000-8000-000000000003"
    assert value(series, "gpu_watchdog_gpu_info", gpu="3", uuid=uuid) == 1

    first, second = (str(job.pid) for job in jobs)
    assert value(series, "gpu_watchdog_process_gpu_memory_bytes", pid=first, gpu="0") == 3 * GIB
    assert value(series, "gpu_watchdog_process_gpu_memory_bytes", pid=first, type="compute")
    assert value(series, "gpu_watchdog_process_gpu_memory_bytes", pid=second) is None  # hidden
    assert value(series, "gpu_watchdog_process_gpu_memory_bytes", pid="9999991") is None
    for pid in (first, second):  # both are GPU processes, the hidden one too
        rss = value(series, "gpu_watchdog_process_host_rss_bytes", pid=pid)
        assert rss is not None
        assert rss >= 96 * MIB  # its own 64 MiB and its worker's 32 MiB
        assert value(series, "gpu_watchdog_process_info", pid=pid, user=getpass.getuser()) == 1
    command = {dict(ls).get("command") for (n, ls) in series if n == "gpu_watchdog_process_info"}
    assert command == {Path(PYTHON).name} or all(c and "python" in c for c in command)
    assert value(series, "gpu_watchdog_host_memory_total_bytes")


def test_metrics_pass_promtool(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """The /metrics page of a daemon on NVML passes ``promtool check metrics``."""
    promtool = require_tool("promtool")
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    _, body = daemon.get("/metrics")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_lost_gpu_is_marked_others_still_export_then_it_recovers(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """GPU 2 falls off the bus: gpu_lost 1 and no figures; 0, 1, 3 still export; then it returns."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    daemon.fake.state.gpus[2].lost = True
    daemon.fake.write()
    series = daemon.wait_for(lambda s: value(s, "gpu_watchdog_gpu_lost", gpu="2") == 1)
    assert value(series, "gpu_watchdog_gpu_memory_used_bytes", gpu="2") is None
    assert value(series, "gpu_watchdog_gpu_temperature_celsius", gpu="2") is None
    for gpu in ("0", "1", "3"):
        assert value(series, "gpu_watchdog_gpu_lost", gpu=gpu) == 0
        assert value(series, "gpu_watchdog_gpu_memory_used_bytes", gpu=gpu) is not None
    first = str(jobs[0].pid)
    assert value(series, "gpu_watchdog_process_gpu_memory_bytes", pid=first) == 3 * GIB
    assert value(series, "gpu_watchdog_gpu_info", gpu="2") == 1  # identity known before the loss
    lost_errors = [
        v
        for (n, ls), v in series.items()
        if n == "gpu_watchdog_nvml_errors_total" and ("error", "GpuIsLost") in ls
    ]
    assert lost_errors
    assert sum(lost_errors) >= 1
    assert value(series, "gpu_watchdog_collector_success", collector="nvml_devices") == 1

    daemon.fake.state.gpus[2].lost = False
    daemon.fake.write()
    series = daemon.wait_for(lambda s: value(s, "gpu_watchdog_gpu_lost", gpu="2") == 0)
    assert value(series, "gpu_watchdog_gpu_memory_used_bytes", gpu="2") == 3 * GIB


def test_not_supported_figures_are_absent_not_zero(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """A GPU without temperature and power sensors exports no such series, and no error."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    daemon.fake.state.gpus[1].temperature = None
    daemon.fake.state.gpus[1].power_mw = None
    daemon.fake.write()
    series = daemon.wait_for(
        lambda s: value(s, "gpu_watchdog_gpu_temperature_celsius", gpu="1") is None
    )
    assert value(series, "gpu_watchdog_gpu_power_watts", gpu="1") is None
    assert value(series, "gpu_watchdog_gpu_temperature_celsius", gpu="0") == 40
    assert value(series, "gpu_watchdog_gpu_lost", gpu="1") == 0
    assert value(series, "gpu_watchdog_gpu_memory_used_bytes", gpu="1") == 2 * GIB
    not_supported = [
        ls
        for (n, ls) in series
        if n.startswith("gpu_watchdog_nvml_errors") and ("error", "NotSupported") in ls
    ]
    assert not_supported == []


def test_unknown_and_timeout_errors_on_one_gpu_only_touch_that_gpu(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """Unknown on GPU 0's memory and Timeout on GPU 3's handle: both lost, 1 and 2 fine, counted."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    daemon.fake.state.faults = [
        Fault("nvmlDeviceGetMemoryInfo_v2", "UNKNOWN", gpu=0),
        Fault("nvmlDeviceGetHandleByIndex_v2", "TIMEOUT", gpu=3),
        Fault("nvmlDeviceGetMemoryInfo_v2", "TIMEOUT", gpu=3),
    ]
    daemon.fake.write()
    series = daemon.wait_for(
        lambda s: (
            value(s, "gpu_watchdog_gpu_lost", gpu="0") == 1
            and value(s, "gpu_watchdog_gpu_lost", gpu="3") == 1
        )
    )
    assert value(series, "gpu_watchdog_gpu_lost", gpu="1") == 0
    assert value(series, "gpu_watchdog_gpu_lost", gpu="2") == 0
    errors = {dict(ls)["error"] for (n, ls) in series if n == "gpu_watchdog_nvml_errors_total"}
    assert {"Unknown", "Timeout"} <= errors


def test_process_that_exits_loses_its_series(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """A job that leaves the GPU and exits: its label sets disappear from /metrics."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    first = str(jobs[0].pid)
    daemon.fake.state.gpus[0].processes = []
    daemon.fake.write()
    jobs[0].kill()
    jobs[0].wait()
    series = daemon.wait_for(
        lambda s: (
            value(s, "gpu_watchdog_process_gpu_memory_bytes", pid=first) is None
            and value(s, "gpu_watchdog_process_info", pid=first) is None
        )
    )
    assert value(series, "gpu_watchdog_process_host_rss_bytes", pid=first) is None
    assert value(series, "gpu_watchdog_process_info", pid=str(jobs[1].pid)) == 1


def test_hung_nvml_call_keeps_metrics_answering_and_flags_the_stall(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """One NVML call blocks: scrapes answer within a second, the stall is exported, then clears."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    daemon.fake.state.faults = [Fault("nvmlDeviceGetMemoryInfo_v2", gpu=1, delay_ms=-1)]
    daemon.fake.write()
    series = daemon.wait_for(
        lambda s: value(s, "gpu_watchdog_collector_stalled", collector="nvml_devices") == 1,
        timeout=STALL_AFTER_S + 10,
    )
    for _ in range(5):
        started = time.monotonic()
        status, _ = daemon.get("/metrics", timeout=1.0)
        assert status == 200
        assert time.monotonic() - started < 1.0
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:  # more than max_concurrent_scrapes
        statuses = list(pool.map(lambda _: daemon.get("/metrics", timeout=5.0)[0], range(40)))
    assert statuses == [200] * 40
    assert time.monotonic() - started < 3.0
    status, body = daemon.get("/healthz", timeout=1.0)
    assert status == 503
    assert "nvml_devices" in body
    assert value(series, "gpu_watchdog_collector_stalled", collector="nvml_processes") == 0

    daemon.fake.state.faults = []
    daemon.fake.write()  # releases the blocked call
    daemon.wait_for(
        lambda s: value(s, "gpu_watchdog_collector_stalled", collector="nvml_devices") == 0
    )
    assert daemon.stop() == 0


def test_daemon_stops_on_sigterm_even_while_an_nvml_call_hangs(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """SIGTERM during a driver call that never returns still ends the daemon promptly."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    daemon.fake.state.faults = [Fault("nvmlDeviceGetMemoryInfo_v2", gpu=1, delay_ms=-1)]
    daemon.fake.write()
    daemon.wait_for(
        lambda s: value(s, "gpu_watchdog_collector_stalled", collector="nvml_devices") == 1,
        timeout=STALL_AFTER_S + 10,
    )
    daemon.stop(timeout=5)


@pytest.mark.parametrize(
    ("error", "name"),
    [("DRIVER_NOT_LOADED", "DriverNotLoaded"), ("LIB_RM_VERSION_MISMATCH", "LibRmVersionMismatch")],
)
def test_init_failure_exits_3_with_one_line(
    start: Callable[[FakeState], Daemon], error: str, name: str
) -> None:
    """NVML init failing (driver not loaded, library/driver mismatch): exit 3, one-line error."""
    daemon = start(FakeState(gpus=gpus(1), init_error=error))
    code = daemon.process.wait(timeout=30)
    output = daemon.output()
    daemon.log.close()
    assert code == EXIT_NVML_UNAVAILABLE
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert name in lines[0]
    assert "NVML unavailable" in lines[0]


def test_library_not_found_exits_3(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """No libnvidia-ml.so.1 anywhere on the search path: exit 3 naming the missing library."""
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has a real libnvidia-ml")
    env = dict(cli_env, LD_LIBRARY_PATH=str(tmp_path))
    done = subprocess.run(
        [PYTHON, "-m", "watchdog", "run", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == EXIT_NVML_UNAVAILABLE
    assert done.stderr.strip().count("\n") == 0
    assert "LibraryNotFound" in done.stderr


def test_memory_v1_driver_end_to_end(
    start: Callable[..., Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """A driver without memory v2 and process v3: used includes reserved; no reserved series."""
    omit = (
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
    )
    daemon = start(_four_gpus(jobs), omit)
    series = daemon.wait_for(_ready)
    assert value(series, "gpu_watchdog_gpu_memory_used_bytes", gpu="0") == GIB + 512 * MIB
    assert value(series, "gpu_watchdog_gpu_memory_reserved_bytes", gpu="0") is None
    first = str(jobs[0].pid)
    assert value(series, "gpu_watchdog_process_gpu_memory_bytes", pid=first) == 3 * GIB


if sys.platform != "linux":  # the fake is an ELF shared library
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="Linux only")]


def _near_oom(series: Series, gpu: str) -> list[float]:
    return samples(series, "gpu_watchdog_finding_active", kind="near_oom", gpu=gpu)


def test_detection_sees_nvml_readings_near_oom_raised_and_cleared(
    start: Callable[[FakeState], Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """A GPU filled to 94 % raises near_oom on that GPU only; freeing memory clears it."""
    daemon = start(_four_gpus(jobs))
    daemon.wait_for(_ready)
    daemon.fake.state.gpus[0].memory_used = 75 * GIB
    daemon.fake.write()
    series = daemon.wait_for(lambda s: 1.0 in _near_oom(s, "0"))
    assert 1.0 not in _near_oom(series, "3")
    daemon.fake.state.gpus[0].memory_used = 1 * GIB
    daemon.fake.write()
    daemon.wait_for(lambda s: _near_oom(s, "0") != [] and 1.0 not in _near_oom(s, "0"))


def _grow_until_leak(daemon: Daemon, pid: str, rate: float, within_s: float) -> tuple[Series, int]:
    """Grow GPU 0's first process from 3 GiB at ``rate`` bytes/s until a leak is raised on
    ``pid``; return the scrape that shows it and the process's memory then."""
    state = daemon.fake.state
    started = time.monotonic()
    while time.monotonic() < started + within_s:
        used = int(3 * GIB + rate * (time.monotonic() - started))
        state.gpus[0].processes[0].used_memory = used
        state.gpus[0].memory_used = 10 * GIB + used
        daemon.fake.write()
        series = daemon.scrape()
        if 1.0 in samples(series, "gpu_watchdog_finding_active", kind="leak", pid=pid):
            return series, used
        time.sleep(INTERVAL_S)
    pytest.fail(f"no leak finding on pid {pid} in {within_s:.0f} s\n{daemon.output()[-3000:]}")


def test_a_leaking_job_is_detected_from_nvml_process_memory(
    start: Callable[..., Daemon], jobs: list[subprocess.Popen[str]]
) -> None:
    """A job whose GPU memory climbs 2 GiB/s gets a leak finding on its pid, with a time to OOM."""
    detection = {"warmup_s": 0.0, "bucket_s": 1.0}
    daemon = start(_four_gpus(jobs), detection=detection)
    daemon.wait_for(_ready)
    pid = str(jobs[0].pid)
    series, _ = _grow_until_leak(daemon, pid, 2 * GIB, 40.0)
    time_to_oom = samples(series, "gpu_watchdog_time_to_oom_seconds", pid=pid)
    assert time_to_oom
    assert 0 < time_to_oom[0] < 60
    assert 1.0 not in samples(series, "gpu_watchdog_finding_active", kind="leak", gpu="3")


PLANNER = """
import sys, time, watchdog
wd = watchdog.attach(socket_path=sys.argv[1], device="cuda:0", job="planner", heartbeat_s=0.5)
wd.expect_growth(600, up_to_bytes=int(sys.argv[2]))
print("ready", flush=True)
time.sleep(600)
"""


def test_a_job_s_planned_growth_holds_its_leak_until_it_outgrows_the_plan(
    start: Callable[..., Daemon], jobs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """The client's expect_growth reaches detection: held (and shown) below its size, not above."""
    detection = {"warmup_s": 0.0, "bucket_s": 1.0}
    daemon = start(_four_gpus(jobs), detection=detection)
    daemon.wait_for(_ready)
    up_to = 3 * GIB + 36 * GIB
    planner = subprocess.Popen(
        [PYTHON, "-c", PLANNER, str(tmp_path / "run" / "watchdog.sock"), str(up_to)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert planner.stdout is not None
        assert planner.stdout.readline().strip() == "ready"
        pid = str(planner.pid)
        state = daemon.fake.state
        state.gpus[0].processes[0] = FakeProcess(pid=planner.pid, used_memory=3 * GIB)
        daemon.fake.write()
        daemon.wait_for(
            lambda s: (
                value(s, "gpu_watchdog_growth_planned", series="process", pid=pid) == 1
                and value(s, "gpu_watchdog_growth_planned", series="gpu", gpu="0") == 1
            )
        )
        # 1 GiB/s: 36 s under the planned size (unplanned, it is raised within
        # about 20 s), then past it, towards the OOM at 70 s.
        series, used = _grow_until_leak(daemon, pid, GIB, 75.0)
        assert used > up_to, "a leak was raised while the job's growth was as planned"
        assert value(series, "gpu_watchdog_growth_planned", series="process", pid=pid) == 0
    finally:
        planner.kill()
        planner.wait()


def _status(
    tmp_path: Path, env: dict[str, str], state: FakeState, *command: str
) -> subprocess.CompletedProcess[str]:
    """``gpu-watchdog status`` (or ``command``) on the fake NVML in ``state``."""
    require_tool(Path(compiler() or "cc").name)
    fake = FakeNvml(tmp_path / "nvml.json", state)
    config = tmp_path / "status.toml"
    config.write_text(_config_text(tmp_path))
    return subprocess.run(
        [PYTHON, "-m", "watchdog", *(command or ("status",)), "--config", str(config)],
        capture_output=True,
        text=True,
        env=fake.env(env),
        timeout=60,
    )


def test_status_prints_only_the_table_on_stdout(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Figures the GPU does not support (retired pages on Ampere) leave no log line in it."""
    state = FakeState(gpus=gpus(2))
    state.faults = [Fault("nvmlDeviceGetRetiredPages*", "NOT_SUPPORTED")]
    done = _status(tmp_path, cli_env, state)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[:2] == ["GPU", "NAME"], done.stdout


@pytest.mark.parametrize(
    "fault",
    [
        Fault("nvmlDeviceGetCount*", "UNKNOWN"),
        Fault("nvmlDeviceGetMemoryInfo*", None, delay_ms=-1),
        Fault("nvmlInit*", None, delay_ms=-1),
    ],
    ids=["unknown_error", "hung_call", "hung_init"],
)
def test_status_on_a_failing_driver_is_one_line(
    tmp_path: Path, cli_env: dict[str, str], fault: Fault
) -> None:
    """A driver error, or a call that never returns: one line and exit 1, no traceback, no hang."""
    state = FakeState(gpus=gpus(2))
    state.faults = [fault]
    done = _status(tmp_path, cli_env, state)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert ("hung" if fault.delay_ms else "Unknown") in done.stderr


@pytest.mark.parametrize("hung", ["nvmlDeviceGetMemoryInfo*", "nvmlInit*"])
def test_record_on_a_hung_driver_ends_in_one_line_keeping_its_rows(
    tmp_path: Path, cli_env: dict[str, str], hung: str
) -> None:
    """A call that never returns: record gives up within its deadline, exit 1, one line."""
    state = FakeState(gpus=gpus(1))
    state.faults = [Fault(hung, None, delay_ms=-1)]
    out = tmp_path / "rec.csv"
    done = _status(tmp_path, cli_env, state, "record", "--out", str(out), "--duration", "30")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "a driver call is hung" in done.stderr
    if hung != "nvmlInit*":
        assert out.read_text().startswith("t,gpu,pid,used_bytes,total_bytes")
