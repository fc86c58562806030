"""What bench_footprint.py and soak_clients.py share: run the real daemon, watch it from outside.

- ``DaemonRun`` starts ``python -m watchdog run`` (what ``gpu-watchdog run``
  runs) on a simulated source with its own temporary socket, state directory
  and metrics port, and stops it again;
- ``ProcWatch`` samples a process's RSS (``/proc/<pid>/status``) and CPU time
  (``/proc/<pid>/stat``) from outside, as an operator's tools would see them;
- ``scrape`` / ``metric`` read ``/metrics`` the way Prometheus does;
- ``Check`` rows make the pass/fail table each benchmark prints.

Every long-lived child process is started with ``PR_SET_PDEATHSIG`` so that it dies with
the benchmark even when the benchmark itself is killed with SIGKILL, and
``stop`` ends each one by its own pid (or process group) only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
MIB = float(1 << 20)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent exits (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks clean up on either."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0, group: bool = False) -> int:
    """SIGTERM ``process`` (its whole process group with ``group``), SIGKILL if it lingers."""
    if process.poll() is not None:
        return process.returncode
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


# -- the daemon --------------------------------------------------------------------------------


def daemon_env(
    workdir: Path, interval_s: float, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment of a benchmark daemon: no stray settings, its own socket and state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    env.update(
        {
            "GPU_WATCHDOG_SOCKET": str(workdir / "run" / "watchdog.sock"),
            "GPU_WATCHDOG_DAEMON_STATE_DIR": str(workdir / "state"),
            "GPU_WATCHDOG_DAEMON_LOG_FORMAT": "json",
            "GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S": str(interval_s),
            # The fleet trace is 10 minutes long and periodic: loop it for longer runs.
            "GPU_WATCHDOG_SIMULATION_LOOP": "true",
            # The daemon runs this checkout, installed or not.
            "PYTHONPATH": os.pathsep.join(
                path for path in (str(REPO), os.environ.get("PYTHONPATH")) if path
            ),
        }
    )
    env.update(extra or {})
    return env


class DaemonRun:
    """The real daemon on a simulated source, in ``workdir``; a context manager that stops it.

    ``python`` is the interpreter it runs under: another virtual environment
    (say one with only the daemon's dependencies) runs this checkout too.
    """

    def __init__(
        self,
        workdir: Path,
        scenario: str,
        interval_s: float,
        extra_env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = daemon_env(workdir, interval_s, extra_env)
        self.socket_path = self.env["GPU_WATCHDOG_SOCKET"]
        self.log_path = workdir / "daemon.log"
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            python,
            "-m",
            "watchdog",
            "run",
            "--simulate",
            scenario,
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - daemons start before our threads do
        )
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        """The daemon's pid (the Python process itself: no wrapper in between)."""
        return self.process.pid

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until ``/healthz`` says ok; raise RuntimeError (with the log's tail) if not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"the daemon exited with {code}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + "/healthz", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the daemon was not healthy within {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        """The end of the daemon's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        """True while the daemon runs."""
        return self.process.poll() is None

    def close(self) -> None:
        """Stop the daemon (SIGTERM, as systemd would) and remember its exit status."""
        self.exit_code = stop(self.process)
        self._log.close()

    def __enter__(self) -> DaemonRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- /proc -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """One look at a process: when (monotonic s), RSS (bytes), CPU time used so far (s)."""

    t: float
    rss_bytes: int
    cpu_s: float


def read_proc(pid: int, proc_root: Path = Path("/proc")) -> ProcSample:
    """RSS from ``status`` (VmRSS) and user+system CPU time from ``stat``, read now.

    Raises:
        OSError: the process is gone.
    """
    t = time.monotonic()
    rss = 0
    for line in (proc_root / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    stat = (proc_root / str(pid) / "stat").read_text()
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return ProcSample(t, rss, (utime + stime) / CLOCK_TICKS)


@dataclass
class ProcWatch:
    """The samples of one process over a run, and what they say."""

    pid: int
    samples: list[ProcSample] = field(default_factory=list)

    def sample(self) -> ProcSample:
        """Take one sample now (raises OSError once the process is gone)."""
        taken = read_proc(self.pid)
        self.samples.append(taken)
        return taken

    def cpu_percent(self) -> float:
        """CPU time over wall time between the first and the last sample, in % of one core."""
        first, last = self.samples[0], self.samples[-1]
        return 100.0 * (last.cpu_s - first.cpu_s) / max(1e-9, last.t - first.t)

    def rss_mib(self) -> tuple[float, float, float]:
        """RSS at the first sample, its maximum and at the last sample, in MiB."""
        values = [s.rss_bytes / MIB for s in self.samples]
        return values[0], max(values), values[-1]

    def second_half(self) -> list[ProcSample]:
        """The samples the growth is judged on: early growth (imports, caches) is left out."""
        return self.samples[len(self.samples) // 2 :]

    def growth_mib_per_h(self) -> float:
        """Slope of a least-squares line through the second half of the RSS samples, MiB/h."""
        half = self.second_half()
        if len(half) < 2:
            return 0.0
        slope, _ = statistics.linear_regression(
            [s.t for s in half], [s.rss_bytes / MIB for s in half]
        )
        return slope * 3600.0


# -- /metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One scrape: when (monotonic s), how long it took, and the samples by name and labels."""

    t: float
    duration_s: float
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, have), value in self.values.items()
            if sample == name and wanted <= have
        )


def scrape(url: str, timeout_s: float = 10.0) -> Scrape:
    """GET ``url``/metrics and parse it as Prometheus would.

    Raises:
        OSError: the endpoint did not answer (urllib's errors are OSErrors).
    """
    started = time.monotonic()
    with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    duration = time.monotonic() - started
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(started, duration, values)


def polls_done(scrape_: Scrape, collector: str) -> float:
    """Polls of ``collector`` run so far, successful or not."""
    return scrape_.metric("gpu_watchdog_collector_polls_total", collector=collector)


def missed_runs(scrape_: Scrape, collector: str) -> float:
    """Polls of ``collector`` the scheduler reported as missed so far."""
    return scrape_.metric("gpu_watchdog_collector_missed_runs_total", collector=collector)


def tracked_series(scrape_: Scrape) -> int:
    """Memory series the daemon's detectors track (one growth gauge each)."""
    return sum(
        1 for name, _ in scrape_.values if name == "gpu_watchdog_memory_growth_bytes_per_second"
    )


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One row of the table: a figure for the daemon, the baseline's, and the target."""

    figure: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    passed: bool | None = None
    """None: informative only, no target."""


def ratio(ours: float, baseline: float) -> str:
    """``ours / baseline`` formatted, or "-" when the baseline is zero."""
    return f"{ours / baseline:.2f}x" if baseline > 0 else "-"


def print_table(title: str, rows: Sequence[Check], write: Callable[[str], None] = print) -> None:
    """A fixed-width table with a PASS/FAIL column."""
    head = ("figure", "daemon", "baseline", "ratio", "target", "result")
    cells = [
        (
            r.figure,
            r.ours,
            r.baseline,
            r.ratio,
            r.target,
            "" if r.passed is None else ("PASS" if r.passed else "FAIL"),
        )
        for r in rows
    ]
    # Columns no row fills (no baseline in a soak) are left out.
    keep = [0, *(i for i in range(1, len(head)) if any(row[i] for row in cells))]
    rows_ = [[row[i] for i in keep] for row in [head, *cells]]
    widths = [max(len(row[i]) for row in rows_) for i in range(len(keep))]
    write(title)
    for row in [rows_[0], ["-" * w for w in widths], *rows_[1:]]:
        write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def all_passed(rows: Sequence[Check]) -> bool:
    """True when no row with a target failed."""
    return all(row.passed is not False for row in rows)
