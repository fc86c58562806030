"""The HTTP endpoint and the poll loop: health, bounded scrapes, failing and hung sources."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from watchdog.daemon.poller import Poller
from watchdog.daemon.service import Daemon
from watchdog.daemon.state import DaemonState
from watchdog.exporter.collector import StateCollector
from watchdog.exporter.http import MetricsServer
from watchdog.samples import DeviceSample, Reading


class StubSource:
    """A source whose behaviour the test sets: return, raise, or block."""

    def __init__(self, name: str = "stub", interval_s: float = 0.05) -> None:
        self.name = name
        self.interval_s = interval_s
        self.fail = False
        self.block = threading.Event()
        self.blocking = False
        self.polls = 0

    def poll(self) -> Reading:
        self.polls += 1
        if self.blocking:
            self.block.wait(30)
        if self.fail:
            raise RuntimeError("driver said no")
        return Reading(t=float(self.polls), devices=[DeviceSample(0, "u", "n", 100, 10)])

    def close(self) -> None:
        self.block.set()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _daemon(source: StubSource) -> tuple[Daemon, MetricsServer, DaemonState]:
    state = DaemonState()
    registry = CollectorRegistry()
    registry.register(StateCollector(state.snapshot, stall_after_s=0.5))
    poller = Poller([source], state)
    daemon: Daemon | None = None

    def health() -> tuple[bool, str]:
        assert daemon is not None
        return daemon.health()

    server = MetricsServer("127.0.0.1:0", registry, health, max_concurrent=4)
    daemon = Daemon(state, poller, server, stall_after_s=0.5, progress_collector=source.name)
    return daemon, server, state


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def running():  # type: ignore[no-untyped-def]
    """A daemon serving a StubSource on a free port; stopped after the test."""
    source = StubSource()
    daemon, server, state = _daemon(source)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.serve, args=(stop,), daemon=True)
    thread.start()
    _wait_for(lambda: source.polls > 0)
    yield source, f"http://127.0.0.1:{server.port}", state
    stop.set()
    source.block.set()
    thread.join(10)


def test_metrics_and_health_served(running) -> None:  # type: ignore[no-untyped-def]
    """/metrics serves the snapshot and /healthz says ok while polls succeed."""
    _, base, _ = running
    _wait_for(lambda: _get(base + "/healthz")[0] == 200)
    status, body = _get(base + "/metrics")
    assert status == 200
    assert 'gpu_watchdog_gpu_memory_used_bytes{gpu="0",source="nvml"} 10.0' in body
    assert _get(base + "/nope")[0] == 404


def test_failing_source_is_counted_retried_and_unhealthy(running) -> None:  # type: ignore[no-untyped-def]
    """A source that raises is retried each interval, counted, and turns /healthz to 503."""
    source, _, state = running
    source.fail = True
    before = source.polls
    _wait_for(lambda: source.polls > before + 3)
    health = next(h for h in state.snapshot().collectors if h.name == "stub")
    assert health.failures >= 3
    assert not health.success
    assert "driver said no" in health.last_error
    source.fail = False
    _wait_for(lambda: next(h for h in state.snapshot().collectors if h.name == "stub").success)


def test_a_failing_source_s_figures_are_dropped_not_repeated(running) -> None:  # type: ignore[no-untyped-def]
    """While a source's polls fail, /metrics leaves its figures out; they return with it."""
    source, base, state = running
    used = 'gpu_watchdog_gpu_memory_used_bytes{gpu="0",source="nvml"}'
    _wait_for(lambda: used in _get(base + "/metrics")[1])
    source.fail = True
    _wait_for(lambda: used not in _get(base + "/metrics")[1])
    body = _get(base + "/metrics")[1]
    assert 'gpu_watchdog_collector_success{collector="stub"} 0.0' in body
    assert "gpu_watchdog_gpu_lost{" not in body
    assert state.snapshot().devices, "the detectors' context keeps the last figures"
    source.fail = False
    _wait_for(lambda: used in _get(base + "/metrics")[1])


def test_hung_source_keeps_scrapes_fast_and_reports_stall(running) -> None:  # type: ignore[no-untyped-def]
    """A poll blocked forever never blocks /metrics; it is flagged stalled and /healthz is 503."""
    source, base, _ = running
    source.blocking = True
    _wait_for(lambda: 'collector_stalled{collector="stub"} 1.0' in _get(base + "/metrics")[1])
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: _get(base + "/metrics")[0], range(100)))
    elapsed = time.monotonic() - started
    assert results == [200] * 100
    assert elapsed < 10  # generous: the point is "not blocked on the hung poll"
    status, body = _get(base + "/healthz")
    assert status == 503
    assert "stub: poll stalled" in body
    missed = _get(base + "/metrics")[1]
    assert 'gpu_watchdog_collector_missed_runs_total{collector="stub"}' in missed


def test_a_hung_sources_figures_leave_metrics_until_it_answers(running) -> None:  # type: ignore[no-untyped-def]
    """Figures as old as a hung poll are not shown as current; they return with the source.

    A hung NVML call on one GPU holds every figure of its source: 'success' still
    says 1 (the last poll that ended did succeed), so the figures are what must go.
    """
    source, base, _ = running
    used = 'gpu_watchdog_gpu_memory_used_bytes{gpu="0",source="nvml"}'
    _wait_for(lambda: used in _get(base + "/metrics")[1])
    source.blocking = True
    _wait_for(lambda: 'collector_stalled{collector="stub"} 1.0' in _get(base + "/metrics")[1])
    body = _get(base + "/metrics")[1]
    assert "gpu_watchdog_gpu_memory_used_bytes{" not in body
    assert 'gpu_watchdog_collector_success{collector="stub"} 1.0' in body
    source.blocking = False
    source.block.set()
    _wait_for(lambda: used in _get(base + "/metrics")[1])


def test_observer_failure_never_stops_polling() -> None:
    """An observer that raises is logged; the reading is still stored and polling goes on."""
    source = StubSource()
    state = DaemonState()

    def broken(reading: Reading) -> None:
        raise ValueError("observer bug")

    poller = Poller([source], state, observers=[broken])
    assert poller.poll_once(source) is not None
    assert state.snapshot().devices[0].used_bytes == 10


def test_health_reports_starting_before_the_first_poll() -> None:
    """Before any poll finished, /healthz explains that the daemon is starting."""
    daemon, server, _ = _daemon(StubSource())
    try:
        ok, reason = daemon.health()
        assert not ok
        assert reason.startswith("starting:")
    finally:
        server.stop()


def test_watchdog_pings_only_on_progress() -> None:
    """The service watchdog is pinged after a successful poll, not while polls stall."""

    class Notifier:
        pings = 0

        def ready(self) -> None: ...
        def status(self, text: str) -> None: ...
        def stopping(self) -> None: ...
        def watchdog_ping(self) -> None:
            Notifier.pings += 1

        def watchdog_interval_s(self) -> float | None:
            return 0.05

    source = StubSource()
    daemon, _, _ = _daemon(source)
    daemon._notifier = Notifier()  # type: ignore[assignment]
    stop = threading.Event()
    thread = threading.Thread(target=daemon.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait_for(lambda: Notifier.pings >= 2)
        source.blocking = True
        time.sleep(0.3)
        pings = Notifier.pings
        time.sleep(0.5)
        assert Notifier.pings == pings
    finally:
        stop.set()
        source.block.set()
        thread.join(10)


def test_wall_clock_jump_backwards_does_not_pause_polling() -> None:
    """After the wall clock is set back an hour, polls resume at once instead of an hour later."""
    source = StubSource(interval_s=0.2)
    state = DaemonState()
    wall_offset = [0.0]
    poller = Poller([source], state, wall=lambda: time.time() + wall_offset[0])
    poller.start()
    try:
        _wait_for(lambda: source.polls >= 2)
        assert poller.check_clock() is False
        # Move both the scheduler's view and ours back: freeze_time is not needed, a job far
        # in the future stands for the wall-clock distance APScheduler would wait out.
        from datetime import datetime, timedelta, timezone

        for job in poller.scheduler.get_jobs():
            job.modify(next_run_time=datetime.now(timezone.utc) + timedelta(hours=1))
        wall_offset[0] = -3600.0
        before = source.polls
        time.sleep(0.5)
        assert source.polls == before  # stuck, as after a real jump
        assert poller.check_clock() is True
        _wait_for(lambda: source.polls > before, timeout=5)
    finally:
        poller.stop()


def test_wall_clock_jump_leaves_other_jobs_at_their_time() -> None:
    """A clock jump re-runs the polls now, never a scheduled action (a 02:00 restart)."""
    from datetime import datetime, timedelta, timezone

    source = StubSource(interval_s=0.2)
    wall_offset = [0.0]
    poller = Poller([source], DaemonState(), wall=lambda: time.time() + wall_offset[0])
    fired: list[str] = []
    poller.start()
    try:
        later = datetime.now(timezone.utc) + timedelta(days=30)
        poller.scheduler.add_job(
            lambda: fired.append("restart"), "date", run_date=later, id="schedule-0"
        )
        wall_offset[0] = -5.0
        assert poller.check_clock() is True
        time.sleep(0.5)
        assert fired == []
        assert poller.scheduler.get_job("schedule-0").next_run_time == later
    finally:
        poller.stop()


def test_snapshots_leave_no_memory_behind() -> None:
    """Taking snapshots of eight GPUs again and again keeps no memory (in a fresh interpreter).

    A tuple built from a generator bypasses CPython's tuple free list when made
    and joins it when freed: the free list of 8-tuples filled to its cap, 2000
    blocks, at a poll or a scrape at a time. A fresh interpreter, since what
    other tests did to the free lists would hide it.
    """
    code = (
        "import sys\n"
        "from watchdog.daemon.state import DaemonState\n"
        "from watchdog.samples import DeviceSample, Reading\n"
        "state = DaemonState()\n"
        "state.apply(Reading(0.0, devices=[DeviceSample(gpu) for gpu in range(8)]))\n"
        "for _ in range(100):\n"
        "    state.snapshot()\n"
        "before = sys.getallocatedblocks()\n"
        "for _ in range(3000):\n"
        "    state.snapshot()\n"
        "print(sys.getallocatedblocks() - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert int(done.stdout) < 200
