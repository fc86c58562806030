"""A fake ``pynvml`` module for unit tests of the NVML sources.

It reuses the real binding's error classes and constants (importing
``pynvml`` needs no GPU; only ``nvmlInit`` does), so errors raised here are
exactly the types production sees. Faults are injected per function name and
optionally per device index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError
nvmlMemory_v2 = pynvml.nvmlMemory_v2
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF


@dataclass
class FakeGpu:
    """One fake GPU."""

    total: int = 80 << 30
    used: int = 10 << 30
    reserved: int = 512 << 20
    uuid: str = "GPU-0000"
    name: str = "NVIDIA Fake 80GB"
    utilization: int = 50
    temperature: int = 40
    power_mw: int = 250_000
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)


class FakePynvml:
    """Module-like fake; pass an instance wherever the ``pynvml`` module goes.

    Args:
        gpus: The fake GPUs, by index.
        missing: Function names this "driver" lacks (FunctionNotFound).
        init_error: NVML error code ``nvmlInit`` fails with, if any.
    """

    NVMLError = pynvml.NVMLError
    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def __init__(
        self,
        gpus: list[FakeGpu],
        missing: frozenset[str] = frozenset(),
        init_error: int | None = None,
    ) -> None:
        self.gpus = gpus
        self.missing = set(missing)
        self.init_error = init_error
        self.faults: dict[tuple[str, int | None], int] = {}
        self.calls: list[str] = []
        self.initialized = False

    def fail(self, function: str, code: int, gpu: int | None = None) -> None:
        """Make ``function`` fail with NVML error ``code`` (for one GPU, or all)."""
        self.faults[(function, gpu)] = code

    def heal(self) -> None:
        """Remove every injected fault."""
        self.faults.clear()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and name in _FUNCTIONS:
            if name in self.missing:
                raise AttributeError(name)
            return lambda *args, **kwargs: self._dispatch(name, args, kwargs)
        raise AttributeError(name)

    def _check(self, name: str, gpu: int | None) -> None:
        self.calls.append(name)
        if name in self.missing:
            raise NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        for key in ((name, gpu), (name, None)):
            if key in self.faults:
                raise NVMLError(self.faults[key])

    def _dispatch(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        gpu = args[0].index if args and isinstance(args[0], SimpleNamespace) else None
        if name == "nvmlDeviceGetHandleByIndex":
            gpu = args[0]
        if name == "nvmlDeviceGetMemoryInfo" and kwargs.get("version"):
            self._check("nvmlDeviceGetMemoryInfo_v2", gpu)
        else:
            self._check(name, gpu)
        return _FUNCTIONS[name](self, *args, **kwargs)


def _init(fake: FakePynvml) -> None:
    if fake.init_error is not None:
        raise NVMLError(fake.init_error)
    fake.initialized = True


def _memory(fake: FakePynvml, handle: SimpleNamespace, version: int | None = None) -> Any:
    gpu = fake.gpus[handle.index]
    if version:
        return SimpleNamespace(
            version=version,
            total=gpu.total,
            reserved=gpu.reserved,
            used=gpu.used,
            free=gpu.total - gpu.used - gpu.reserved,
        )
    # v1 counts driver-reserved memory as used.
    return SimpleNamespace(
        total=gpu.total, used=gpu.used + gpu.reserved, free=gpu.total - gpu.used - gpu.reserved
    )


def _processes(kind: str):  # type: ignore[no-untyped-def]
    def list_processes(fake: FakePynvml, handle: SimpleNamespace) -> list[Any]:
        entries = getattr(fake.gpus[handle.index], kind)
        return [
            SimpleNamespace(
                pid=pid,
                usedGpuMemory=None if used is None else used,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
            for pid, used in entries
        ]

    return list_processes


def _handle(fake: FakePynvml, index: int) -> SimpleNamespace:
    if not 0 <= index < len(fake.gpus):
        raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return SimpleNamespace(index=index)


_FUNCTIONS: dict[str, Any] = {
    "nvmlInit": _init,
    "nvmlShutdown": lambda fake: None,
    "nvmlSystemGetDriverVersion": lambda fake: "550.54.15",
    "nvmlSystemGetNVMLVersion": lambda fake: "12.550.54.15",
    "nvmlDeviceGetCount": lambda fake: len(fake.gpus),
    "nvmlDeviceGetHandleByIndex": _handle,
    "nvmlDeviceGetUUID": lambda fake, h: fake.gpus[h.index].uuid,
    "nvmlDeviceGetName": lambda fake, h: fake.gpus[h.index].name,
    "nvmlDeviceGetMemoryInfo": _memory,
    "nvmlDeviceGetUtilizationRates": lambda fake, h: SimpleNamespace(
        gpu=fake.gpus[h.index].utilization, memory=0
    ),
    "nvmlDeviceGetTemperature": lambda fake, h, sensor: fake.gpus[h.index].temperature,
    "nvmlDeviceGetPowerUsage": lambda fake, h: fake.gpus[h.index].power_mw,
    "nvmlDeviceGetComputeRunningProcesses_v3": _processes("compute"),
    "nvmlDeviceGetComputeRunningProcesses_v2": _processes("compute"),
    "nvmlDeviceGetComputeRunningProcesses": _processes("compute"),
    "nvmlDeviceGetGraphicsRunningProcesses_v3": _processes("graphics"),
    "nvmlDeviceGetGraphicsRunningProcesses_v2": _processes("graphics"),
    "nvmlDeviceGetGraphicsRunningProcesses": _processes("graphics"),
}
