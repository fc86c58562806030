"""Xid and other GPU events: the fake library's event API, the event thread, the Xid table.

Everything runs through the real nvidia-ml-py bound to the fake libnvidia-ml
(tests/fake_libnvml): event sets, ``nvmlEventData_t`` and the error classes are
those production sees. The end-to-end test runs ``gpu-watchdog run`` on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
import structlog

from tests.conftest import require_tool
from tests.fake_libnvml import (
    EVENT_TYPES,
    GIB,
    FakeEcc,
    FakeNvml,
    FakeProcess,
    FakeRemappedRows,
    FakeState,
    Fault,
    LoadedFake,
    bound_pynvml,
    compiler,
    gpus,
)
from tests.test_e2e_fake_nvml import Daemon, value
from watchdog.daemon.state import DaemonState
from watchdog.exporter.collector import StateCollector
from watchdog.samples import GpuEvent, GpuProcessSample, Reading
from watchdog.sources.nvml import Nvml
from watchdog.sources.nvml_events import NvmlEventWatcher
from watchdog.sources.nvml_xid import XID_CATALOG, describe

XID = EVENT_TYPES["XidCriticalError"]
DBE = EVENT_TYPES["DoubleBitEccError"]
WAIT_S = 0.05
RETRY_S = 0.2


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeNvml, LoadedFake]]:
    """Two fake GPUs, this process's pynvml bound to them and initialised."""
    require_tool(Path(compiler() or "cc").name)
    state = FakeState(gpus=gpus(2))
    state.gpus[1].processes = [FakeProcess(pid=4242)]
    made = FakeNvml(tmp_path / "state.json", state)
    with bound_pynvml(made) as loaded:
        pynvml.nvmlInit()
        yield made, loaded
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


class Watched:
    """A watcher on the fake, feeding a DaemonState, with the log lines it wrote."""

    def __init__(self, fake: FakeNvml, **options: Any) -> None:
        self.fake = fake
        self.state = DaemonState()
        self.nvml = Nvml()
        self.nvml.init()
        options.setdefault("wait_s", WAIT_S)
        options.setdefault("retry_s", RETRY_S)
        self.watcher = NvmlEventWatcher(
            self.nvml, self.state.record_gpu_event, self.state.processes_on, **options
        )
        self.state.set_event_watcher(self.watcher.status)

    def start(self) -> Watched:
        self.watcher.start()
        wait_for(lambda: self.watcher.status().up, "the event thread to wait")
        return self

    def registered(self, count: int) -> None:
        wait_for(lambda: self.watcher.status().gpus["registered"] == count, f"{count} registered")

    def xids(self) -> dict[GpuEvent, int]:
        return {e: n for e, n in self.state.snapshot().gpu_events.items() if e.kind == "xid"}

    def inject(self, gpu: int, data: int, type: str = "XidCriticalError") -> None:
        self.fake.state.add_event(gpu, data, type)
        self.fake.write()


@pytest.fixture
def watched(fake: tuple[FakeNvml, LoadedFake]) -> Iterator[Callable[..., Watched]]:
    """Make a watcher on the fake; every one is stopped afterwards."""
    made: list[Watched] = []

    def _make(**options: Any) -> Watched:
        made.append(Watched(fake[0], **options))
        return made[-1]

    yield _make
    for one in made:
        one.watcher.stop(timeout_s=5)


# --- the Xid table -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "action", "fatal"),
    [
        (13, "restart_app", False),
        (31, "restart_app", False),
        (94, "restart_app", False),
        (43, "none", False),
        (63, "none", False),
        (92, "none", False),
        (48, "reset_gpu", True),
        (64, "reset_gpu", True),
        (95, "reset_gpu", True),
        (62, "reset_gpu", True),
        (119, "reset_gpu", True),
        (120, "reset_gpu", True),
        (74, "check_nvlink", True),
        (79, "reboot", True),
        (45, "investigate", False),
    ],
)
def test_xid_table_row(code: int, action: str, fatal: bool) -> None:
    """Each common Xid carries NVIDIA's immediate action and fatal flag, and says what it means."""
    info = describe(code)
    assert (info.code, info.action, info.fatal) == (code, action, fatal)
    assert info.name.isupper()
    assert len(info.meaning) > 15


def test_every_xid_the_issue_names_is_in_the_table() -> None:
    """The codes issue #10 lists are all described; none falls through to "unknown"."""
    listed = {13, 31, 32, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 119, 120}
    assert listed <= XID_CATALOG.keys()


def test_unknown_xid_is_reported_as_unknown_not_guessed() -> None:
    """A code the table lacks is named unknown and not fatal: an alert, never an action."""
    info = describe(9999)
    assert (info.code, info.action, info.fatal) == (9999, "unknown", False)
    assert "catalog" in info.meaning


# --- the fake library's event API, through pynvml --------------------------------------


def _handles() -> list[Any]:
    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]


def _address(handle: Any) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


def test_event_data_layout_and_only_later_events_delivered(
    fake: tuple[FakeNvml, LoadedFake],
) -> None:
    """nvmlEventData_t comes back field by field; events older than the registration are not."""
    made, loaded = fake
    handles = _handles()
    assert pynvml.nvmlDeviceGetSupportedEventTypes(handles[1]) & XID
    made.state.add_event(1, 13)  # before the registration: never delivered
    made.write()
    event_set = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(handles[1], XID | DBE, event_set)
    started = time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(event_set, 100)
    assert time.monotonic() - started >= 0.09
    made.state.add_event(1, 79)
    made.state.add_event(0, 48)  # GPU 0 is not registered
    made.state.add_event(1, 0, "DoubleBitEccError")
    made.write()
    data = pynvml.nvmlEventSetWait_v2(event_set, 1000)
    assert (data.eventType, data.eventData) == (XID, 79)
    assert _address(data.device) == _address(handles[1])
    assert (data.gpuInstanceId, data.computeInstanceId) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert pynvml.nvmlEventSetWait_v2(event_set, 1000).eventType == DBE
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(event_set, 10)
    pynvml.nvmlEventSetFree(event_set)
    assert loaded.calls("nvmlEventSetWait_v2") == 4
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlEventSetWait_v2(event_set, 10)  # freed


def test_unsupported_events_and_a_lost_gpu_in_the_set(fake: tuple[FakeNvml, LoadedFake]) -> None:
    """No event support is NotSupported; a lost GPU's pending event comes first, then GpuIsLost."""
    made, _ = fake
    made.state.gpus[0].event_types = None
    made.write()
    handles = _handles()
    event_set = pynvml.nvmlEventSetCreate()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetSupportedEventTypes(handles[0])
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceRegisterEvents(handles[0], XID, event_set)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # a type GPU 1 does not have
        pynvml.nvmlDeviceRegisterEvents(handles[1], EVENT_TYPES["FatalPoisonError"], event_set)
    pynvml.nvmlDeviceRegisterEvents(handles[1], XID, event_set)
    made.state.add_event(1, 79)
    made.state.gpus[1].lost = True
    made.write()
    assert pynvml.nvmlEventSetWait_v2(event_set, 1000).eventData == 79
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlEventSetWait_v2(event_set, 1000)
    pynvml.nvmlEventSetFree(event_set)


# --- the event thread --------------------------------------------------------------


def test_xid_is_counted_with_its_code_and_logged_with_meaning_and_processes(
    watched: Callable[..., Watched],
) -> None:
    """An injected Xid 79 on GPU 1: counted by code, logged with meaning, action and the pids."""
    one = watched()
    one.state.apply(Reading(t=0, processes=[GpuProcessSample(gpu=1, pid=4242, used_bytes=1)]))
    one.start().registered(2)
    with structlog.testing.capture_logs() as logs:
        one.inject(1, 79)
        wait_for(one.xids, "the Xid to be counted")
    uuid = "GPU-fa4e0000-0000-4000-8000-000000000001"
    assert one.xids() == {GpuEvent(1, uuid, "xid", 79, "reboot", True): 1}
    [line] = [entry for entry in logs if entry["event"] == "gpu_xid"]
    assert (line["gpu"], line["xid"], line["log_level"]) == (1, 79, "error")
    assert "fallen off the bus" in line["meaning"]
    assert line["action"] == "reboot"
    assert [p["pid"] for p in line["processes"]] == [4242]
    one.inject(1, 79)
    one.inject(1, 13)
    wait_for(lambda: sum(one.xids().values()) == 3, "three Xids")
    assert one.xids()[GpuEvent(1, uuid, "xid", 79, "reboot", True)] == 2


def test_xid_and_ecc_events_reach_metrics_with_labels(watched: Callable[..., Watched]) -> None:
    """/metrics has the Xid counter by gpu, uuid, code, action and fatal; other events by type."""
    one = watched().start()
    one.registered(2)
    one.inject(0, 94)
    one.inject(0, 0, "DoubleBitEccError")
    wait_for(lambda: len(one.state.snapshot().gpu_events) == 2, "two events")
    families = {f.name: f for f in StateCollector(one.state.snapshot, 10).collect()}
    [xid] = families["gpu_watchdog_gpu_xid_events"].samples
    assert xid.labels == {
        "gpu": "0",
        "uuid": "GPU-fa4e0000-0000-4000-8000-000000000000",
        "xid": "94",
        "action": "restart_app",
        "fatal": "false",
        "source": "nvml",
    }
    assert xid.value == 1
    [other] = families["gpu_watchdog_gpu_events"].samples
    assert (other.labels["type"], other.value) == ("double_bit_ecc", 1)
    [up] = families["gpu_watchdog_event_watcher_up"].samples
    assert up.value == 1
    gpu_states = families["gpu_watchdog_event_watcher_gpus"].samples
    states = {sample.labels["state"]: sample.value for sample in gpu_states}
    assert states == {"registered": 2, "unsupported": 0, "retrying": 0}


def test_wait_errors_are_counted_and_the_thread_survives(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """Two waits answer Unknown: both counted, the loop restarts, and later Xids still arrive."""
    made, _ = fake
    one = watched().start()
    one.registered(2)
    made.state.faults = [Fault(call="nvmlEventSetWait_v2", error="UNKNOWN", times=2)]
    made.write()
    wait_for(lambda: one.watcher.status().errors.get("Unknown") == 2, "two Unknown errors")
    wait_for(lambda: one.watcher.status().up, "the event thread to wait again")
    status = one.watcher.status()
    assert status.restarts == 2
    assert one.nvml.error_counts()[("nvmlEventSetWait_v2", "Unknown")] == 2
    # A Timeout means "nothing happened": not an error.
    assert ("nvmlEventSetWait_v2", "Timeout") not in one.nvml.error_counts()
    one.inject(0, 48)
    wait_for(one.xids, "an Xid after the errors")


def test_a_failing_event_set_is_retried_with_backoff(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """nvmlEventSetCreate fails three times: down meanwhile, restarts counted, then up."""
    made, _ = fake
    made.state.faults = [Fault(call="nvmlEventSetCreate", error="UNKNOWN", times=3)]
    made.write()
    one = watched(retry_s=0.05)
    one.watcher.start()
    wait_for(lambda: one.watcher.status().up, "the event thread to wait", timeout=15)
    status = one.watcher.status()
    assert (status.restarts, status.errors) == (3, {"Unknown": 3})


def test_a_crash_inside_the_loop_is_logged_counted_and_the_thread_restarts(
    watched: Callable[..., Watched],
) -> None:
    """A bug that raises in the loop ends one run, never the thread: logged, counted, restarted."""
    one = watched()
    original = one.watcher._deliver
    calls: list[Any] = []

    def broken(data: Any) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("bug")
        original(data)

    one.watcher._deliver = broken  # type: ignore[method-assign]
    one.start().registered(2)
    with structlog.testing.capture_logs() as logs:
        one.inject(0, 31)
        wait_for(lambda: one.watcher.status().restarts == 1, "a restart")
    assert one.watcher.status().errors == {"RuntimeError": 1}
    assert any(e["event"] == "event_watcher_crashed" and "exc_info" in e for e in logs)
    wait_for(lambda: one.watcher.status().up, "the event thread to wait again")
    one.registered(2)
    one.inject(0, 13)
    wait_for(lambda: [e.xid for e in one.xids()] == [13], "the next Xid")


def test_a_failing_counter_does_not_stop_the_thread(watched: Callable[..., Watched]) -> None:
    """An exception from the event sink is counted; the next event is still delivered."""
    one = watched()
    seen: list[GpuEvent] = []

    def sink(event: GpuEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise ValueError("full")

    one.watcher._on_event = sink
    one.start().registered(2)
    one.inject(1, 13)
    one.inject(1, 31)
    wait_for(lambda: len(seen) == 2, "both events")
    assert one.watcher.status().errors == {"on_event": 1}
    assert one.watcher.status().restarts == 0


def test_gpu_without_event_support_is_skipped_and_counted(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """GPU 0 answers NotSupported: skipped (counted unsupported, not an error); GPU 1 is watched."""
    made, _ = fake
    made.state.gpus[0].event_types = None
    made.write()
    one = watched().start()
    one.registered(1)
    status = one.watcher.status()
    assert status.gpus == {"registered": 1, "unsupported": 1, "retrying": 0}
    assert status.errors == {}
    assert not one.nvml.error_counts()
    one.inject(0, 48)  # never delivered: GPU 0 is not registered
    one.inject(1, 13)
    wait_for(one.xids, "GPU 1's Xid")
    assert [e.gpu for e in one.xids()] == [1]


def test_gpu_supporting_none_of_the_watched_types_is_unsupported(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """A GPU with only P-state and clock events is not registered at all (nothing to watch)."""
    made, loaded = fake
    made.state.gpus[1].event_types = EVENT_TYPES["PState"] | EVENT_TYPES["Clock"]
    made.write()
    one = watched().start()
    one.registered(1)
    assert one.watcher.status().gpus["unsupported"] == 1
    assert loaded.calls("nvmlDeviceRegisterEvents") == 1


def test_lost_gpu_is_dropped_the_others_watched_and_it_recovers(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """GPU 1 is lost: registration dropped, GPU 0 still watched; back, it is registered again."""
    made, _ = fake
    one = watched().start()
    one.registered(2)
    made.state.gpus[1].lost = True
    made.write()
    wait_for(lambda: one.watcher.status().gpus["retrying"] == 1, "GPU 1 to be dropped")
    wait_for(lambda: one.watcher.status().up, "a fresh event set")
    assert one.watcher.status().errors.get("GpuIsLost", 0) >= 1
    one.inject(0, 13)
    wait_for(lambda: [e.gpu for e in one.xids()] == [0], "GPU 0's Xid while GPU 1 is lost")
    made.state.gpus[1].lost = False
    made.write()
    one.registered(2)
    one.inject(1, 31)
    wait_for(lambda: sorted(e.gpu for e in one.xids()) == [0, 1], "GPU 1's Xid once it is back")
    assert one.watcher.status().restarts == 0  # a lost GPU is not a failure of the loop


def test_gpu_that_cannot_be_registered_at_start_is_retried(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """Registration answers Unknown twice for GPU 0: retrying, then registered on a later try."""
    made, loaded = fake
    made.state.faults = [Fault(call="nvmlDeviceRegisterEvents", gpu=0, error="UNKNOWN", times=2)]
    made.write()
    one = watched(retry_s=1.0).start()
    assert one.watcher.status().gpus["retrying"] == 1
    one.registered(2)
    assert loaded.calls("nvmlDeviceRegisterEvents") == 4  # GPU 0 three times, GPU 1 once
    assert one.watcher.status().errors == {"Unknown": 2}


def test_stop_is_prompt_while_waiting(watched: Callable[..., Watched]) -> None:
    """With 0.5 s waits, stop() returns within one wait and frees the event set."""
    one = watched(wait_s=0.5).start()
    one.registered(2)
    started = time.monotonic()
    assert one.watcher.stop()
    assert time.monotonic() - started < 0.5 + 0.3
    assert not one.watcher.status().up


def test_stop_reports_a_wait_stuck_in_the_driver(
    fake: tuple[FakeNvml, LoadedFake], watched: Callable[..., Watched]
) -> None:
    """A wait that never returns: stop() gives up after its timeout and says so (False)."""
    made, loaded = fake
    one = watched().start()
    one.registered(2)
    made.state.faults = [Fault(call="nvmlEventSetWait_v2", delay_ms=-1)]
    made.write()
    begun = loaded.calls("nvmlEventSetWait_v2")
    # A wait counted after the write started after it, so it is the hung one.
    wait_for(lambda: loaded.calls("nvmlEventSetWait_v2") > begun, "a wait to hang")
    started = time.monotonic()
    assert one.watcher.stop(timeout_s=0.3) is False
    assert time.monotonic() - started < 1.0
    made.state.faults = []
    made.write()  # the hung wait returns; the thread then ends
    wait_for(lambda: one.watcher.stop(timeout_s=0.1), "the thread to end")


def test_watcher_without_a_thread_reports_down() -> None:
    """Before start, the watcher is not up and has nothing registered."""
    watcher = NvmlEventWatcher(Nvml(pynvml), lambda event: None)
    status = watcher.status()
    assert not status.up
    assert status.gpus == {"registered": 0, "unsupported": 0, "retrying": 0}
    assert watcher.stop()


# --- the daemon, end to end --------------------------------------------------------


@pytest.mark.slow
def test_daemon_exports_xids_ecc_and_watcher_health_and_stops_promptly(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """``gpu-watchdog run`` on the fake: an Xid and ECC on /metrics, logged, SIGTERM exits fast."""
    require_tool(Path(compiler() or "cc").name)
    state = FakeState(gpus=gpus(2))
    state.gpus[0].processes = [FakeProcess(pid=os.getpid(), used_memory=GIB)]  # a real process
    state.gpus[0].ecc = FakeEcc(volatile_uncorrected=2, aggregate_uncorrected=5)
    state.gpus[0].remapped_rows = FakeRemappedRows(uncorrectable=3, pending=True)
    state.gpus[1].ecc = None  # ECC off: no ECC series at all, not zeros
    state.gpus[1].event_types = None
    fake = FakeNvml(tmp_path / "nvml.json", state)
    cli_env.update(
        GPU_WATCHDOG_SOURCES_HEALTH_INTERVAL_S="1",
        GPU_WATCHDOG_SOURCES_EVENT_WAIT_S="0.1",
    )
    daemon = Daemon(fake, tmp_path, cli_env)
    try:
        me = str(os.getpid())
        daemon.wait_for(
            lambda s: (
                value(s, "gpu_watchdog_event_watcher_gpus", state="registered") == 1
                and value(s, "gpu_watchdog_process_info", pid=me) == 1
            )  # attributed: on the GPU
        )
        fake.state.add_event(0, 48)
        fake.write()
        series = daemon.wait_for(
            lambda s: (
                value(s, "gpu_watchdog_gpu_xid_events_total", xid="48") == 1
                and value(s, "gpu_watchdog_collector_success", collector="nvml_health") == 1
            )
        )
        assert value(
            series, "gpu_watchdog_gpu_xid_events_total", gpu="0", fatal="true", source="nvml"
        )
        ecc = "gpu_watchdog_gpu_ecc_errors_total"
        assert value(series, ecc, gpu="0", type="uncorrected", counter="volatile") == 2
        assert value(series, ecc, gpu="0", type="uncorrected", counter="aggregate") == 5
        assert value(series, ecc, gpu="1", type="uncorrected", counter="volatile") is None
        assert value(series, "gpu_watchdog_gpu_remapped_rows", gpu="0", type="uncorrectable") == 3
        assert value(series, "gpu_watchdog_gpu_row_remap_pending", gpu="0") == 1
        assert value(series, "gpu_watchdog_gpu_retired_pages_pending", gpu="0") is None
        assert value(series, "gpu_watchdog_event_watcher_up") == 1
        assert value(series, "gpu_watchdog_event_watcher_gpus", state="unsupported") == 1
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        if daemon.process.poll() is None:
            daemon.stop()
    lines = [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]
    [xid] = [line for line in lines if line.get("event") == "gpu_xid"]
    assert (xid["xid"], xid["action"], xid["fatal"]) == (48, "reset_gpu", True)
    assert xid["source"] == "nvml"
    assert "double-bit ECC" in xid["meaning"]
    [process] = xid["processes"]
    assert (process["pid"], process["gpu_memory_bytes"]) == (os.getpid(), GIB)
    assert process["command"]
    assert any(line.get("event") == "event_watcher_stopped" for line in lines)


@pytest.mark.slow
def test_daemon_exits_promptly_with_the_event_wait_hung(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The event wait hangs in the driver: SIGTERM still ends the daemon within seconds."""
    require_tool(Path(compiler() or "cc").name)
    state = FakeState(gpus=gpus(1))
    fake = FakeNvml(tmp_path / "nvml.json", state)
    cli_env["GPU_WATCHDOG_SOURCES_EVENT_WAIT_S"] = "0.1"
    daemon = Daemon(fake, tmp_path, cli_env)
    try:
        daemon.wait_for(lambda s: value(s, "gpu_watchdog_event_watcher_up") == 1)
        fake.state.faults = [Fault(call="nvmlEventSetWait_v2", delay_ms=-1)]
        fake.write()
        time.sleep(0.5)  # the next wait enters the hang; nothing outside can await it
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        if daemon.process.poll() is None:
            daemon.stop()
    assert "exiting_with_event_wait_in_progress" in daemon.output()
