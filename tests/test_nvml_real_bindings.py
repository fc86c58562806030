"""Our NVML sources through the real nvidia-ml-py and the fake libnvidia-ml.

tests/test_nvml_sources.py proves the error handling against a fake ``pynvml``
module; these prove the same paths through the binding production runs: its
ctypes structures, versioned calls, symbol lookup and error classes.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.fake_libnvml import (
    GIB,
    MIB,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    FakeState,
    Fault,
    LoadedFake,
    bound_pynvml,
    compiler,
    gpus,
)
from watchdog.errors import EXIT_NVML_UNAVAILABLE
from watchdog.sources.nvml import Nvml, NvmlCallError, NvmlUnavailable
from watchdog.sources.nvml_devices import DeviceHandles, NvmlDeviceSource
from watchdog.sources.nvml_processes import NvmlProcessSource

PROCESS_V3 = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3")
PROCESS_V2 = ("nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetGraphicsRunningProcesses_v2")


class Rig:
    """The fake library, its state, and our sources on the real pynvml bound to it."""

    def __init__(self, fake: FakeNvml, loaded: LoadedFake) -> None:
        self.fake = fake
        self.loaded = loaded
        self.nvml = Nvml()
        self.nvml.init()
        handles = DeviceHandles(self.nvml)
        self.devices = NvmlDeviceSource(self.nvml, handles)
        self.processes = NvmlProcessSource(self.nvml, handles, max_processes=16)

    @property
    def state(self) -> FakeState:
        """The state to change; call ``write`` after."""
        return self.fake.state

    def write(self) -> None:
        """Publish the changed state to the library."""
        self.fake.write()


Make = Callable[..., Rig]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """A Rig factory; everything is shut down and pynvml restored afterwards."""
    require_tool(Path(compiler() or "cc").name)
    names = (tmp_path / f"state{i}.json" for i in itertools.count())
    with contextlib.ExitStack() as stack:

        def _make(state: FakeState, omit: tuple[str, ...] = ()) -> Rig:
            fake = FakeNvml(next(names), state, omit)
            rig = Rig(fake, stack.enter_context(bound_pynvml(fake)))
            stack.callback(rig.nvml.shutdown)
            return rig

        yield _make


def test_device_source_reads_v2_memory_and_figures_through_real_structures(make: Make) -> None:
    """v2 memory (used excludes reserved), utilisation, temperature and power in SI units."""
    rig = make(FakeState(gpus=[FakeGpu(uuid="GPU-x", temperature=55, power_mw=123_456)]))
    [gpu] = rig.devices.poll().devices or []
    assert (gpu.uuid, gpu.name, gpu.lost) == ("GPU-x", "NVIDIA Fake A100 80GB", False)
    assert (gpu.total_bytes, gpu.used_bytes, gpu.reserved_bytes) == (80 * GIB, 10 * GIB, 512 * MIB)
    assert gpu.free_bytes == 80 * GIB - 10 * GIB - 512 * MIB
    assert (gpu.utilization_ratio, gpu.temperature_celsius) == (0.5, 55.0)
    assert gpu.power_watts == pytest.approx(123.456)
    assert (rig.nvml.driver_version, rig.nvml.nvml_version) == ("550.54.15", "12.550.54.15")


def test_driver_without_memory_v2_is_read_with_v1(make: Make) -> None:
    """Without the _v2 symbol (driver < 510) memory is read with v1: used includes reserved."""
    rig = make(FakeState(gpus=[FakeGpu()]), omit=("nvmlDeviceGetMemoryInfo_v2",))
    for _ in range(2):
        [gpu] = rig.devices.poll().devices or []
        assert (gpu.used_bytes, gpu.reserved_bytes) == (10 * GIB + 512 * MIB, None)
        assert not gpu.lost
    assert rig.loaded.calls("nvmlDeviceGetMemoryInfo") == 2


def test_argument_version_mismatch_falls_back_to_v1_and_stops_probing(make: Make) -> None:
    """A driver rejecting the v2 struct version is read with v1 from then on."""
    fault = Fault("nvmlDeviceGetMemoryInfo_v2", "ARGUMENT_VERSION_MISMATCH")
    rig = make(FakeState(gpus=[FakeGpu()], faults=[fault]))
    for _ in range(3):
        [gpu] = rig.devices.poll().devices or []
        assert gpu.used_bytes == 10 * GIB + 512 * MIB
    assert rig.loaded.calls("nvmlDeviceGetMemoryInfo_v2") == 1


def test_not_supported_figures_are_absent_not_zero_and_not_errors(make: Make) -> None:
    """NotSupported temperature, power and utilisation leave None; the GPU is healthy."""
    rig = make(FakeState(gpus=[FakeGpu(temperature=None, power_mw=None, utilization_gpu=None)]))
    [gpu] = rig.devices.poll().devices or []
    assert (gpu.temperature_celsius, gpu.power_watts, gpu.utilization_ratio) == (None,) * 3
    assert not gpu.lost
    assert gpu.used_bytes == 10 * GIB
    assert rig.nvml.error_counts() == {}


def test_one_lost_gpu_never_hides_the_others_and_recovers(make: Make) -> None:
    """GPU 2 falls off the bus: 0, 1, 3 still report, 2 is lost with its identity, then returns."""
    state = FakeState(gpus=gpus(4))
    for index, gpu in enumerate(state.gpus):
        gpu.memory_used = (index + 1) * GIB
    rig = make(state)
    rig.devices.poll()
    rig.state.gpus[2].lost = True
    rig.write()
    samples = rig.devices.poll().devices or []
    assert [s.lost for s in samples] == [False, False, True, False]
    assert samples[2].lost_reason == "GpuIsLost"
    assert samples[2].uuid.endswith("000000000002")
    assert samples[2].used_bytes is None
    assert [s.used_bytes for s in samples if not s.lost] == [GIB, 2 * GIB, 4 * GIB]
    assert rig.nvml.error_counts() == {("nvmlDeviceGetMemoryInfo", "GpuIsLost"): 1}
    rig.state.gpus[2].lost = False
    rig.write()
    samples = rig.devices.poll().devices or []
    assert not samples[2].lost
    assert samples[2].used_bytes == 3 * GIB


@pytest.mark.parametrize("error", ["UNKNOWN", "TIMEOUT", "GPU_IS_LOST"])
def test_handle_failure_marks_only_that_gpu_lost(make: Make, error: str) -> None:
    """nvmlDeviceGetHandleByIndex_v2 failing for GPU 1 marks it lost; next poll asks again."""
    fault = Fault("nvmlDeviceGetHandleByIndex_v2", error, gpu=1, times=1)
    rig = make(FakeState(gpus=gpus(3), faults=[fault]))
    assert [s.lost for s in rig.devices.poll().devices or []] == [False, True, False]
    assert not any(s.lost for s in rig.devices.poll().devices or [])


def test_unknown_error_on_a_secondary_figure_keeps_the_gpu(make: Make) -> None:
    """An Unknown temperature read loses the temperature, counts an error, keeps the GPU."""
    rig = make(FakeState(gpus=[FakeGpu()], faults=[Fault("nvmlDeviceGetTemperature", "UNKNOWN")]))
    [gpu] = rig.devices.poll().devices or []
    assert gpu.temperature_celsius is None
    assert not gpu.lost
    assert rig.nvml.error_counts() == {("nvmlDeviceGetTemperature", "Unknown"): 1}


def test_device_count_failure_fails_the_whole_poll(make: Make) -> None:
    """If NVML cannot count GPUs the poll raises, for the poller to count as a failure."""
    rig = make(FakeState(gpus=gpus(1), faults=[Fault("nvmlDeviceGetCount_v2", "UNKNOWN")]))
    with pytest.raises(NvmlCallError, match="nvmlDeviceGetCount"):
        rig.devices.poll()


def test_process_memory_sentinel_is_unknown_and_real_zero_is_zero(make: Make) -> None:
    """usedGpuMemory 0xFFFFFFFFFFFFFFFF through the real binding is unknown; 0 stays 0."""
    procs = [
        FakeProcess(pid=101, used_memory=None),
        FakeProcess(pid=102, used_memory=0),
        FakeProcess(pid=103, used_memory=5 * GIB),
    ]
    rig = make(FakeState(gpus=[FakeGpu(processes=procs)]))
    used = {p.pid: p.used_bytes for p in rig.processes.poll().processes or []}
    assert used == {101: None, 102: 0, 103: 5 * GIB}


def test_processes_on_every_gpu_with_compute_before_graphics(make: Make) -> None:
    """A pid with compute and graphics contexts is one entry, as compute."""
    state = FakeState(gpus=gpus(2))
    state.gpus[0].processes = [FakeProcess(pid=10, type="both"), FakeProcess(11, type="graphics")]
    state.gpus[1].processes = [FakeProcess(pid=20)]
    rig = make(state)
    found = {(p.gpu, p.pid, p.kind) for p in rig.processes.poll().processes or []}
    assert found == {(0, 10, "compute"), (0, 11, "graphics"), (1, 20, "compute")}


def test_process_gone_between_count_and_list_is_skipped(make: Make) -> None:
    """The race between NVML's sizing and listing calls loses the process, nothing else."""
    procs = [FakeProcess(pid=1), FakeProcess(pid=2, vanishes=True)]
    rig = make(FakeState(gpus=[FakeGpu(processes=procs)]))
    assert [p.pid for p in rig.processes.poll().processes or []] == [1]


def test_process_list_falls_back_from_v3_to_v2_and_remembers(make: Make) -> None:
    """A driver without the v3 symbols (< 510) is listed with v2; v3 is not asked again."""
    rig = make(FakeState(gpus=[FakeGpu(processes=[FakeProcess(pid=10)])]), omit=PROCESS_V3)
    for _ in range(3):
        assert [p.pid for p in rig.processes.poll().processes or []] == [10]
    assert rig.loaded.calls("nvmlDeviceGetComputeRunningProcesses_v2") == 6  # sizing + list


def test_lost_gpu_skips_its_processes_only(make: Make) -> None:
    """A lost GPU contributes no processes; the other GPU's are still listed."""
    state = FakeState(gpus=gpus(2))
    state.gpus[0].processes = [FakeProcess(pid=10)]
    state.gpus[1].processes = [FakeProcess(pid=20)]
    state.gpus[0].lost = True
    rig = make(state)
    assert [p.pid for p in rig.processes.poll().processes or []] == [20]


@pytest.mark.parametrize(
    ("error", "name"),
    [("DRIVER_NOT_LOADED", "DriverNotLoaded"), ("LIB_RM_VERSION_MISMATCH", "LibRmVersionMismatch")],
)
def test_init_failure_through_the_real_binding(tmp_path: Path, error: str, name: str) -> None:
    """nvmlInit failing in the library is NvmlUnavailable naming the cause, exit code 3."""
    require_tool(Path(compiler() or "cc").name)
    fake = FakeNvml(tmp_path / "state.json", FakeState(gpus=gpus(1), init_error=error))
    with bound_pynvml(fake), pytest.raises(NvmlUnavailable, match=name) as caught:
        Nvml().init()
    assert caught.value.exit_code == EXIT_NVML_UNAVAILABLE
    assert "\n" not in str(caught.value)


def test_driver_with_only_unversioned_process_calls_lists_its_processes(make: Make) -> None:
    """A pre-470 driver (no _v2/_v3 process calls) is read through the v1 C functions.

    nvidia-ml-py's unversioned wrapper calls the _v3 function, so the source reads
    the v1 symbol and structure itself; hidden memory is None there too.
    """
    procs = [FakeProcess(pid=10, used_memory=3 * GIB), FakeProcess(pid=11, used_memory=None)]
    rig = make(FakeState(gpus=[FakeGpu(processes=procs)]), PROCESS_V3 + PROCESS_V2)
    for _ in range(2):  # the call found is remembered
        reading = rig.processes.poll()
        assert {(p.pid, p.used_bytes) for p in reading.processes or []} == {
            (10, 3 * GIB),
            (11, None),
        }
        assert reading.unread_gpus == frozenset()
    assert rig.loaded.calls("nvmlDeviceGetComputeRunningProcesses") >= 2
    probes = rig.nvml.error_counts()  # the _v3 and _v2 tried on the first poll, once each
    assert set(probes.values()) == {1}
    assert all(call.endswith(("_v2", "_v3")) for call, _ in probes)


def test_gpu_without_memory_info_is_not_lost(make: Make) -> None:
    """A GPU that cannot report memory (NotSupported) keeps its other figures and is not lost."""
    rig = make(FakeState(gpus=[FakeGpu(memory_total=None, temperature=47)]))
    [gpu] = rig.devices.poll().devices or []
    assert not gpu.lost
    assert gpu.used_bytes is None
    assert gpu.temperature_celsius == 47.0


@pytest.mark.parametrize(
    "call", ["nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion"], ids=["driver", "nvml"]
)
def test_failing_version_query_at_init_is_not_a_crash(make: Make, call: str) -> None:
    """A version string that cannot be read leaves it empty; the GPUs are still polled."""
    rig = make(FakeState(gpus=gpus(1), faults=[Fault(call, "UNKNOWN", times=1)]))
    [gpu] = rig.devices.poll().devices or []
    assert not gpu.lost
