"""The NVML shim and sources against a fake pynvml: every error path of the foundation issue."""

from __future__ import annotations

import pynvml
import pytest

from tests.fake_pynvml import NOT_AVAILABLE, FakeGpu, FakePynvml
from watchdog.daemon.state import DaemonState
from watchdog.errors import EXIT_NVML_UNAVAILABLE
from watchdog.samples import GpuProcessSample, Reading
from watchdog.sources.nvml import Nvml, NvmlUnavailable
from watchdog.sources.nvml_devices import DeviceHandles, NvmlDeviceSource
from watchdog.sources.nvml_processes import UNREAD_GRACE_POLLS, NvmlProcessSource

GIB = 1 << 30


def _sources(fake: FakePynvml) -> tuple[Nvml, NvmlDeviceSource, NvmlProcessSource]:
    nvml = Nvml(fake)  # type: ignore[arg-type]
    nvml.init()
    handles = DeviceHandles(nvml)
    clock = iter(range(1000)).__next__
    return (
        nvml,
        NvmlDeviceSource(nvml, handles, clock=lambda: float(clock())),
        NvmlProcessSource(nvml, handles, max_processes=8),
    )


def _four_gpus() -> FakePynvml:
    return FakePynvml([FakeGpu(uuid=f"GPU-{i}", used=(i + 1) * GIB) for i in range(4)])


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "LibraryNotFound"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "DriverNotLoaded"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "LibRmVersionMismatch"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "NoPermission"),
    ],
)
def test_init_failure_is_one_clear_error_with_its_own_exit_code(code: int, name: str) -> None:
    """Each way NVML can be unusable at start becomes NvmlUnavailable naming the cause, exit 3."""
    nvml = Nvml(FakePynvml([], init_error=code))  # type: ignore[arg-type]
    with pytest.raises(NvmlUnavailable, match=name) as caught:
        nvml.init()
    assert caught.value.exit_code == EXIT_NVML_UNAVAILABLE
    assert "\n" not in str(caught.value)


def test_real_pynvml_without_a_driver_is_unavailable_not_a_crash() -> None:
    """On this GPU-less machine the real binding's failure becomes NvmlUnavailable."""
    with pytest.raises(NvmlUnavailable, match="LibraryNotFound"):
        Nvml().init()


def test_device_source_reads_v2_memory_and_health_figures() -> None:
    """Memory comes from the v2 call (used excludes reserved); the rest is converted to SI units."""
    nvml, devices, _ = _sources(FakePynvml([FakeGpu()]))
    [gpu] = devices.poll().devices or []
    assert (gpu.total_bytes, gpu.used_bytes, gpu.reserved_bytes) == (80 * GIB, 10 * GIB, 512 << 20)
    assert gpu.utilization_ratio == 0.5
    assert gpu.temperature_celsius == 40.0
    assert gpu.power_watts == 250.0
    assert (gpu.uuid, gpu.name, gpu.lost) == ("GPU-0000", "NVIDIA Fake 80GB", False)
    assert nvml.driver_version == "550.54.15"


def test_device_source_falls_back_to_v1_memory_once() -> None:
    """A driver without memory v2 is read with v1 (used includes reserved) and not probed again."""
    fake = FakePynvml([FakeGpu()], missing=frozenset({"nvmlDeviceGetMemoryInfo_v2"}))
    _, devices, _ = _sources(fake)
    [gpu] = devices.poll().devices or []
    assert gpu.used_bytes == 10 * GIB + (512 << 20)
    assert gpu.reserved_bytes is None
    devices.poll()
    assert fake.calls.count("nvmlDeviceGetMemoryInfo_v2") == 1


def test_argument_version_mismatch_also_falls_back_to_v1() -> None:
    """A driver rejecting the v2 struct version is read with v1."""
    fake = FakePynvml([FakeGpu()])
    fake.fail("nvmlDeviceGetMemoryInfo_v2", pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    _, devices, _ = _sources(fake)
    [gpu] = devices.poll().devices or []
    assert gpu.used_bytes == 10 * GIB + (512 << 20)


def test_not_supported_figure_is_absent_not_zero_and_not_an_error() -> None:
    """NotSupported leaves the figure None, keeps the GPU healthy and counts no error."""
    fake = FakePynvml([FakeGpu()])
    fake.fail("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NOT_SUPPORTED)
    nvml, devices, _ = _sources(fake)
    [gpu] = devices.poll().devices or []
    assert gpu.power_watts is None
    assert gpu.temperature_celsius == 40.0
    assert not gpu.lost
    assert nvml.error_counts() == {}


def test_one_lost_gpu_never_hides_the_others_and_recovers() -> None:
    """GPU 2 raising GpuIsLost is marked lost; GPUs 0, 1, 3 still report; GPU 2 comes back."""
    fake = _four_gpus()
    nvml, devices, _ = _sources(fake)
    devices.poll()
    fake.fail("nvmlDeviceGetMemoryInfo_v2", pynvml.NVML_ERROR_GPU_IS_LOST, gpu=2)
    samples = devices.poll().devices or []
    assert [s.lost for s in samples] == [False, False, True, False]
    assert samples[2].lost_reason == "GpuIsLost"
    assert samples[2].uuid == "GPU-2"  # identity known before the loss is kept
    assert samples[2].used_bytes is None
    assert [s.used_bytes for s in samples if not s.lost] == [GIB, 2 * GIB, 4 * GIB]
    assert nvml.error_counts() == {("nvmlDeviceGetMemoryInfo", "GpuIsLost"): 1}
    fake.heal()
    samples = devices.poll().devices or []
    assert not samples[2].lost
    assert samples[2].used_bytes == 3 * GIB


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_TIMEOUT, pynvml.NVML_ERROR_GPU_IS_LOST]
)
def test_handle_failure_marks_only_that_gpu_lost(code: int) -> None:
    """A GPU whose handle cannot be had is lost; the handle is asked for again next poll."""
    fake = _four_gpus()
    fake.fail("nvmlDeviceGetHandleByIndex", code, gpu=1)
    _, devices, _ = _sources(fake)
    samples = devices.poll().devices or []
    assert [s.lost for s in samples] == [False, True, False, False]
    fake.heal()
    assert not any(s.lost for s in devices.poll().devices or [])


def test_secondary_figure_failure_does_not_mark_gpu_lost() -> None:
    """An Unknown error reading temperature loses the temperature, not the GPU."""
    fake = FakePynvml([FakeGpu()])
    fake.fail("nvmlDeviceGetTemperature", pynvml.NVML_ERROR_UNKNOWN)
    nvml, devices, _ = _sources(fake)
    [gpu] = devices.poll().devices or []
    assert gpu.temperature_celsius is None
    assert not gpu.lost
    assert nvml.error_counts() == {("nvmlDeviceGetTemperature", "Unknown"): 1}


def test_device_count_failure_fails_the_whole_poll() -> None:
    """If NVML cannot even count GPUs the poll raises, so the poller marks the source failed."""
    fake = FakePynvml([FakeGpu()])
    fake.fail("nvmlDeviceGetCount", pynvml.NVML_ERROR_UNKNOWN)
    _, devices, _ = _sources(fake)
    with pytest.raises(Exception, match="nvmlDeviceGetCount"):
        devices.poll()


def test_process_memory_sentinel_is_unknown_and_real_zero_is_zero() -> None:
    """usedGpuMemory 0xFFFFFFFFFFFFFFFF or None means unknown; a real 0 stays 0."""
    gpu = FakeGpu(compute=[(101, NOT_AVAILABLE), (102, 0), (103, None), (104, 5 * GIB)])
    _, _, processes = _sources(FakePynvml([gpu]))
    used = {p.pid: p.used_bytes for p in processes.poll().processes or []}
    assert used == {101: None, 102: 0, 103: None, 104: 5 * GIB}


def test_processes_on_every_gpu_with_compute_before_graphics() -> None:
    """Compute and graphics processes are listed per GPU; a pid in both appears once, as compute."""
    fake = FakePynvml(
        [
            FakeGpu(compute=[(10, GIB)], graphics=[(10, GIB), (11, 2 * GIB)]),
            FakeGpu(compute=[(20, 3 * GIB)]),
        ]
    )
    _, _, processes = _sources(fake)
    found = {(p.gpu, p.pid, p.kind) for p in processes.poll().processes or []}
    assert found == {(0, 10, "compute"), (0, 11, "graphics"), (1, 20, "compute")}


def test_process_list_falls_back_from_v3_to_v2() -> None:
    """A driver without the v3 process call is asked with v2, and v3 is not probed again."""
    fake = FakePynvml(
        [FakeGpu(compute=[(10, GIB)])],
        missing=frozenset({"nvmlDeviceGetComputeRunningProcesses_v3"}),
    )
    _, _, processes = _sources(fake)
    assert [p.pid for p in processes.poll().processes or []] == [10]
    processes.poll()
    assert fake.calls.count("nvmlDeviceGetComputeRunningProcesses_v2") == 2


def test_process_list_reported_function_not_found_falls_back() -> None:
    """The binding has the v3 function but the driver lacks it (FunctionNotFound): v2 is used."""
    fake = FakePynvml([FakeGpu(compute=[(10, GIB)])])
    fake.fail("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    _, _, processes = _sources(fake)
    assert [p.pid for p in processes.poll().processes or []] == [10]


def test_lost_gpu_skips_its_processes_only() -> None:
    """A GPU whose process list fails with GpuIsLost contributes no processes; others still do."""
    fake = FakePynvml([FakeGpu(compute=[(10, GIB)]), FakeGpu(compute=[(20, GIB)])])
    fake.fail("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_GPU_IS_LOST, gpu=0)
    nvml, _, processes = _sources(fake)
    assert [p.pid for p in processes.poll().processes or []] == [20]
    assert nvml.error_counts()[("nvmlDeviceGetComputeRunningProcesses_v3", "GpuIsLost")] == 1


def test_graphics_not_supported_is_no_processes_not_an_error() -> None:
    """A compute card that does not support graphics process queries lists its compute ones."""
    fake = FakePynvml([FakeGpu(compute=[(10, GIB)])])
    for call in ("_v3", "_v2", ""):
        fake.fail(f"nvmlDeviceGetGraphicsRunningProcesses{call}", pynvml.NVML_ERROR_NOT_SUPPORTED)
    _, _, processes = _sources(fake)
    assert [p.pid for p in processes.poll().processes or []] == [10]


def test_process_count_is_bounded_keeping_the_largest() -> None:
    """More processes than max_processes keeps the biggest users, bounding label cardinality."""
    gpu = FakeGpu(compute=[(pid, pid * GIB) for pid in range(1, 21)])
    _, _, processes = _sources(FakePynvml([gpu]))
    pids = sorted(p.pid for p in processes.poll().processes or [])
    assert pids == list(range(13, 21))


def test_a_failed_process_list_names_its_gpu_unread_for_a_few_polls() -> None:
    """A GPU whose list fails is unread (its processes stand) for a few polls, then gone."""
    fake = FakePynvml([FakeGpu(compute=[(10, GIB)]), FakeGpu(compute=[(20, GIB)])])
    _, _, processes = _sources(fake)
    fake.fail("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_UNKNOWN, gpu=1)
    for _ in range(UNREAD_GRACE_POLLS):
        reading = processes.poll()
        assert [p.pid for p in reading.processes or []] == [10]
        assert reading.unread_gpus == {1}
    assert processes.poll().unread_gpus == frozenset()  # unreadable this long: nothing stands
    fake.heal()
    assert sorted(p.pid for p in processes.poll().processes or []) == [10, 20]
    fake.fail("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_TIMEOUT, gpu=1)
    assert processes.poll().unread_gpus == {1}  # a success starts the count over


def test_processes_of_an_unread_gpu_stay_in_the_daemon_state() -> None:
    """The exported processes of a GPU whose list failed this poll are its last known ones."""
    state = DaemonState()
    state.apply(
        Reading(
            t=0.0,
            processes=[
                GpuProcessSample(gpu=0, pid=10, used_bytes=GIB),
                GpuProcessSample(gpu=1, pid=20, used_bytes=GIB),
            ],
        )
    )
    state.apply(
        Reading(
            t=5.0,
            processes=[GpuProcessSample(gpu=0, pid=11, used_bytes=GIB)],
            unread_gpus=frozenset({1}),
        )
    )
    assert sorted(p.pid for p in state.snapshot().processes) == [11, 20]
    state.apply(Reading(t=10.0, processes=[GpuProcessSample(gpu=0, pid=11, used_bytes=GIB)]))
    assert [p.pid for p in state.snapshot().processes] == [11]
