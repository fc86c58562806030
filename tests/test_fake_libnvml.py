"""The fake libnvidia-ml itself, through the real nvidia-ml-py: layouts, protocols, faults."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pynvml
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

Make = Callable[..., tuple[FakeNvml, LoadedFake]]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Build a fake with a state (and omitted functions) and bind this process's pynvml to it."""
    require_tool(Path(compiler() or "cc").name)
    names = (tmp_path / f"state{i}.json" for i in itertools.count())
    with contextlib.ExitStack() as stack:

        def _make(state: FakeState, omit: tuple[str, ...] = ()) -> tuple[FakeNvml, LoadedFake]:
            fake = FakeNvml(next(names), state, omit)
            return fake, stack.enter_context(bound_pynvml(fake))

        yield _make


def _handles() -> list[object]:
    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]


def test_pynvml_finds_the_fake_through_the_library_search_path(tmp_path: Path) -> None:
    """In a subprocess pynvml's own CDLL("libnvidia-ml.so.1") loads the fake (LD_LIBRARY_PATH)."""
    require_tool(Path(compiler() or "cc").name)
    fake = FakeNvml(tmp_path / "state.json", FakeState(gpus=gpus(2), driver_version="535.1.2"))
    code = (
        "import pynvml as n; n.nvmlInit(); "
        "print(n.nvmlSystemGetDriverVersion(), n.nvmlDeviceGetCount(), n.nvmlLib._name)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=fake.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["535.1.2", "2", "libnvidia-ml.so.1"]


def test_identity_and_health_figures_read_as_nvml_reports_them(make: Make) -> None:
    """UUID, name, index, utilisation, temperature (both calls), power and limits come through."""
    gpu = FakeGpu(uuid="GPU-abc", name="NVIDIA H100 80GB HBM3", temperature=61, power_mw=312_500)
    make(FakeState(gpus=[gpu]))
    pynvml.nvmlInit()
    [handle] = _handles()
    assert pynvml.nvmlDeviceGetUUID(handle) == "GPU-abc"
    assert pynvml.nvmlDeviceGetName(handle) == "NVIDIA H100 80GB HBM3"
    assert pynvml.nvmlDeviceGetIndex(handle) == 0
    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
    assert (rates.gpu, rates.memory) == (50, 20)
    assert pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU) == 61
    assert pynvml.nvmlDeviceGetTemperatureV(handle, pynvml.NVML_TEMPERATURE_GPU) == 61
    assert pynvml.nvmlDeviceGetPowerUsage(handle) == 312_500
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) == 400_000
    assert pynvml.nvmlDeviceGetHandleByUUID("GPU-abc") is not None
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-nope")
    pynvml.nvmlShutdown()


def test_memory_v2_reports_reserved_apart_and_v1_includes_it(make: Make) -> None:
    """v2 (version 0x02000028) splits reserved from used; v1's used is their sum (driver 510+)."""
    make(FakeState(gpus=[FakeGpu(memory_used=10 * GIB, memory_reserved=512 * MIB)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert (v2.total, v2.reserved, v2.used) == (80 * GIB, 512 * MIB, 10 * GIB)
    assert v2.free == 80 * GIB - 10 * GIB - 512 * MIB
    v1 = pynvml.nvmlDeviceGetMemoryInfo(handle)
    assert (v1.total, v1.used, v1.free) == (80 * GIB, 10 * GIB + 512 * MIB, v2.free)


def test_memory_v2_with_a_wrong_struct_version_is_argument_version_mismatch(make: Make) -> None:
    """A struct version the driver does not know is rejected like the real driver does."""
    make(FakeState(gpus=[FakeGpu()]))
    pynvml.nvmlInit()
    [handle] = _handles()
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(handle, version=0x01000028)


def test_figure_left_out_of_the_state_is_not_supported(make: Make) -> None:
    """A None figure raises NotSupported (no sensor), never returns 0."""
    make(FakeState(gpus=[FakeGpu(temperature=None, power_mw=None, utilization_gpu=None)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    for call in (
        lambda: pynvml.nvmlDeviceGetTemperature(handle, 0),
        lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        lambda: pynvml.nvmlDeviceGetFanSpeed(handle),
    ):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()


@pytest.mark.parametrize(
    "call", ["nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"]
)
def test_process_lists_keep_every_field_in_place(make: Make, call: str) -> None:
    """Several processes in the 24-byte v2/v3 layout: pids and memory line up; sentinel is None."""
    procs = [
        FakeProcess(pid=101, used_memory=5 * GIB),
        FakeProcess(pid=102, used_memory=0),
        FakeProcess(pid=103, used_memory=None),
        FakeProcess(pid=104, used_memory=(1 << 40) + 7),
    ]
    make(FakeState(gpus=[FakeGpu(processes=procs)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    found = getattr(pynvml, call)(handle)
    assert [(p.pid, p.usedGpuMemory) for p in found] == [
        (101, 5 * GIB),
        (102, 0),
        (103, None),
        (104, (1 << 40) + 7),
    ]
    assert {(p.gpuInstanceId, p.computeInstanceId) for p in found} == {(0xFFFFFFFF, 0xFFFFFFFF)}


def test_unversioned_process_call_uses_the_16_byte_v1_layout(make: Make) -> None:
    """The C symbol without suffix fills nvml.h's v1 struct {pid, usedGpuMemory}."""

    class ProcessInfoV1(ctypes.Structure):
        _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]

    procs = [FakeProcess(pid=7, used_memory=GIB), FakeProcess(pid=8, used_memory=2 * GIB)]
    make(FakeState(gpus=[FakeGpu(processes=procs)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses")
    count = ctypes.c_uint(4)
    infos = (ProcessInfoV1 * 4)()
    assert fn(handle, ctypes.byref(count), infos) == pynvml.NVML_SUCCESS
    assert [(infos[i].pid, infos[i].usedGpuMemory) for i in range(count.value)] == [
        (7, GIB),
        (8, 2 * GIB),
    ]


def test_graphics_compute_and_both(make: Make) -> None:
    """A process of type "both" is in both lists; others only in their own."""
    procs = [
        FakeProcess(pid=1, type="compute"),
        FakeProcess(pid=2, type="graphics"),
        FakeProcess(pid=3, type="both"),
    ]
    make(FakeState(gpus=[FakeGpu(processes=procs)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    compute = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    graphics = pynvml.nvmlDeviceGetGraphicsRunningProcesses_v3(handle)
    assert [p.pid for p in compute] == [1, 3]
    assert [p.pid for p in graphics] == [2, 3]


def test_process_gone_between_the_sizing_call_and_the_list(make: Make) -> None:
    """A process counted by the first call but gone by the second is simply not listed."""
    procs = [
        FakeProcess(pid=1),
        FakeProcess(pid=2, vanishes=True),
        FakeProcess(pid=3, appears=True),
    ]
    _, loaded = make(FakeState(gpus=[FakeGpu(processes=procs)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)] == [1, 3]
    assert loaded.calls("nvmlDeviceGetComputeRunningProcesses_v3") == 2  # sizing, then list


def test_no_processes_answers_success_on_the_sizing_call(make: Make) -> None:
    """An idle GPU answers the sizing call with SUCCESS and count 0, so pynvml makes one call."""
    _, loaded = make(FakeState(gpus=[FakeGpu()]))
    pynvml.nvmlInit()
    [handle] = _handles()
    assert pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle) == []
    assert loaded.calls("nvmlDeviceGetComputeRunningProcesses_v3") == 1


def test_lost_gpu_fails_every_call_on_it_and_only_on_it(make: Make) -> None:
    """A lost GPU raises GpuIsLost from its handle and every call; the others answer."""
    state = FakeState(gpus=gpus(4))
    state.gpus[2].lost = True
    make(state)
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 4
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(2)
    for index in (0, 1, 3):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        assert pynvml.nvmlDeviceGetMemoryInfo(handle).total == 80 * GIB


def test_lost_after_the_handle_was_taken_fails_calls_on_that_handle(make: Make) -> None:
    """A GPU lost while the caller holds its handle fails on that handle, then comes back."""
    fake, _ = make(FakeState(gpus=gpus(2)))
    pynvml.nvmlInit()
    handles = _handles()
    fake.state.gpus[1].lost = True
    fake.write()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetUUID(handles[1])
    assert pynvml.nvmlDeviceGetUUID(handles[0]).startswith("GPU-")
    fake.state.gpus[1].lost = False
    fake.write()
    assert pynvml.nvmlDeviceGetUUID(handles[1]).endswith("1")


@pytest.mark.parametrize(
    ("error", "exception"),
    [
        ("GPU_IS_LOST", pynvml.NVMLError_GpuIsLost),
        ("NOT_SUPPORTED", pynvml.NVMLError_NotSupported),
        ("UNKNOWN", pynvml.NVMLError_Unknown),
        ("TIMEOUT", pynvml.NVMLError_Timeout),
        ("NOT_FOUND", pynvml.NVMLError_NotFound),
        ("NVML_ERROR_NO_PERMISSION", pynvml.NVMLError_NoPermission),
        (999, pynvml.NVMLError_Unknown),
    ],
)
def test_injected_error_on_one_function_and_one_gpu(
    make: Make, error: str | int, exception: type[Exception]
) -> None:
    """A fault names a function and a GPU: that call on that GPU fails, nothing else does."""
    make(FakeState(gpus=gpus(2), faults=[Fault("nvmlDeviceGetPowerUsage", error, gpu=1)]))
    pynvml.nvmlInit()
    first, second = _handles()
    assert pynvml.nvmlDeviceGetPowerUsage(first) == 250_000
    assert pynvml.nvmlDeviceGetTemperature(second, 0) == 40
    with pytest.raises(exception):
        pynvml.nvmlDeviceGetPowerUsage(second)


def test_fault_with_times_fails_only_that_many_calls(make: Make) -> None:
    """times=2 fails the next two matching calls, then the call answers again."""
    make(FakeState(gpus=gpus(1), faults=[Fault("nvmlDeviceGetMemoryInfo*", "UNKNOWN", times=2)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    assert pynvml.nvmlDeviceGetMemoryInfo(handle).total == 80 * GIB


def test_slow_call_sleeps_and_hung_call_waits_for_the_state_to_change(make: Make) -> None:
    """delay_ms slows one call; delay_ms=-1 blocks (GIL released) until the state file changes."""
    fake, _ = make(FakeState(gpus=gpus(1), faults=[Fault("nvmlDeviceGetPowerUsage", delay_ms=150)]))
    pynvml.nvmlInit()
    [handle] = _handles()
    started = time.monotonic()
    assert pynvml.nvmlDeviceGetPowerUsage(handle) == 250_000
    assert time.monotonic() - started >= 0.15

    fake.state.faults = [Fault("nvmlDeviceGetPowerUsage", "TIMEOUT", delay_ms=-1)]
    fake.write()
    outcome: list[str] = []

    def hang() -> None:
        try:
            pynvml.nvmlDeviceGetPowerUsage(handle)
        except pynvml.NVMLError as exc:
            outcome.append(type(exc).__name__)

    worker = threading.Thread(target=hang, daemon=True)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()
    assert pynvml.nvmlDeviceGetTemperature(handle, 0) == 40  # other calls still answer
    fake.state.faults = []
    fake.write()
    worker.join(timeout=5)
    assert outcome == ["NVMLError_Timeout"]


@pytest.mark.parametrize(
    ("error", "exception"),
    [
        ("DRIVER_NOT_LOADED", pynvml.NVMLError_DriverNotLoaded),
        ("LIB_RM_VERSION_MISMATCH", pynvml.NVMLError_LibRmVersionMismatch),
        ("NO_PERMISSION", pynvml.NVMLError_NoPermission),
    ],
)
def test_init_failure_modes(make: Make, error: str, exception: type[Exception]) -> None:
    """init_error makes nvmlInit fail with that error; calls before init are Uninitialized."""
    make(FakeState(gpus=gpus(1), init_error=error))
    with pytest.raises(exception):
        pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_missing_state_file_is_a_driver_that_is_not_loaded(make: Make) -> None:
    """Without a state file the fake behaves like a machine whose driver is not loaded."""
    fake, _ = make(FakeState(gpus=gpus(1)))
    fake.state_path.unlink()
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_calls_after_shutdown_are_uninitialized(make: Make) -> None:
    """nvmlShutdown balances nvmlInit; afterwards calls fail as NVML's do."""
    make(FakeState(gpus=gpus(1)))
    pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_error_strings_come_from_the_library(make: Make) -> None:
    """pynvml's message for an error is the library's nvmlErrorString."""
    make(FakeState(gpus=gpus(1), faults=[Fault("nvmlDeviceGetName", "GPU_IS_LOST")]))
    pynvml.nvmlInit()
    [handle] = _handles()
    with pytest.raises(pynvml.NVMLError_GpuIsLost, match="GPU is lost"):
        pynvml.nvmlDeviceGetName(handle)


def test_omitted_function_is_function_not_found(make: Make) -> None:
    """A function built out of the library is missing from its symbols, as on an older driver."""
    omit = ("nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetComputeRunningProcesses_v3")
    make(FakeState(gpus=[FakeGpu(processes=[FakeProcess(pid=5)])]), omit)
    pynvml.nvmlInit()
    [handle] = _handles()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle)] == [5]
    assert pynvml.nvmlDeviceGetMemoryInfo(handle).total == 80 * GIB


def test_state_changes_are_seen_at_the_next_call_even_in_quick_succession(make: Make) -> None:
    """Rewrites of the same size within one timestamp tick are still noticed."""
    fake, _ = make(FakeState(gpus=gpus(1)))
    pynvml.nvmlInit()
    [handle] = _handles()
    for used in range(1, 30):
        fake.state.gpus[0].memory_used = used * GIB  # same JSON length for 10..29
        fake.write()
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        assert memory.used == used * GIB


def test_removed_gpu_handle_is_an_invalid_argument(make: Make) -> None:
    """A handle to a GPU that left the state is rejected, never read out of bounds."""
    fake, _ = make(FakeState(gpus=gpus(2)))
    pynvml.nvmlInit()
    handles = _handles()
    fake.state.gpus.pop()
    fake.write()
    assert pynvml.nvmlDeviceGetCount() == 1
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetUUID(handles[1])


def test_concurrent_calls_while_the_state_changes(make: Make) -> None:
    """Eight threads calling while the state is rewritten: every answer is one consistent state."""
    fake, _ = make(FakeState(gpus=gpus(2)))
    pynvml.nvmlInit()
    handles = _handles()
    stop = threading.Event()
    bad: list[object] = []

    def read() -> None:
        while not stop.is_set():
            for handle in handles:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
                if memory.used % GIB or memory.total != 80 * GIB:
                    bad.append(memory)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for used in range(1, 40):
        for gpu in fake.state.gpus:
            gpu.memory_used = used * GIB
        fake.write()
        time.sleep(0.005)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert bad == []
