"""Per-GPU memory, utilisation, temperature and power from NVML (cheap: polled every second)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from watchdog.samples import NVML, DeviceSample, Reading
from watchdog.sources.nvml import VERSION_ERRORS, Nvml, NvmlCallError

log = structlog.get_logger("watchdog.sources.nvml_devices")

NVML_TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU in nvml.h


class DeviceHandles:
    """NVML device handles by index, re-fetched after a device failed.

    Shared by the device and process sources so both see a lost GPU alike.
    """

    def __init__(self, nvml: Nvml) -> None:
        self._nvml = nvml
        self._handles: dict[int, Any] = {}

    def count(self) -> int:
        """Number of GPUs NVML reports; raises NvmlCallError if it cannot say."""
        return int(self._nvml.call("nvmlDeviceGetCount"))

    def get(self, index: int) -> Any:
        """The handle of GPU ``index``; raises NvmlCallError if it cannot be had."""
        handle = self._handles.get(index)
        if handle is None:
            handle = self._nvml.call("nvmlDeviceGetHandleByIndex", index)
            self._handles[index] = handle
        return handle

    def forget(self, index: int) -> None:
        """Drop a handle so the next poll asks the driver again (after GPU lost, reset)."""
        self._handles.pop(index, None)


class NvmlDeviceSource:
    """Reads each GPU's memory (v2 where the driver has it, else v1) and health figures.

    One failing GPU never hides the others: its sample is marked ``lost`` and
    the next poll tries it again.
    """

    name = "nvml_devices"

    def __init__(
        self,
        nvml: Nvml,
        handles: DeviceHandles,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._handles = handles
        self.interval_s = interval_s
        self._clock = clock
        self._identity: dict[int, tuple[str, str]] = {}
        self._memory_v1_only: set[int] = set()

    def poll(self) -> Reading:
        """Read every GPU; raises NvmlCallError only if the device count itself fails."""
        t = self._clock()
        devices = [self._read(index) for index in range(self._handles.count())]
        return Reading(t=t, origin=NVML, devices=devices)

    def close(self) -> None:
        """Nothing to release: the daemon shuts NVML down."""

    def _read(self, index: int) -> DeviceSample:
        try:
            handle = self._handles.get(index)
            uuid, name = self._identify(index, handle)
            total, used, free, reserved = self._memory(index, handle)
        except NvmlCallError as exc:
            self._handles.forget(index)
            log.warning("gpu_unreadable", gpu=index, call=exc.call, error=exc.error)
            uuid, name = self._identity.get(index, ("", ""))
            return DeviceSample(gpu=index, uuid=uuid, name=name, lost=True, lost_reason=exc.error)
        return DeviceSample(
            gpu=index,
            uuid=uuid,
            name=name,
            total_bytes=total,
            used_bytes=used,
            free_bytes=free,
            reserved_bytes=reserved,
            utilization_ratio=self._figure(index, self._utilization, handle),
            temperature_celsius=self._figure(index, self._temperature, handle),
            power_watts=self._figure(index, self._power, handle),
        )

    def _identify(self, index: int, handle: Any) -> tuple[str, str]:
        identity = self._identity.get(index)
        if identity is None:
            uuid = _text(self._nvml.optional("nvmlDeviceGetUUID", handle) or "")
            name = _text(self._nvml.optional("nvmlDeviceGetName", handle) or "")
            identity = self._identity[index] = (uuid, name)
        return identity

    def _memory(
        self, index: int, handle: Any
    ) -> tuple[int | None, int | None, int | None, int | None]:
        """(total, used, free, reserved); v2 excludes driver-reserved memory from ``used``.

        A GPU that cannot report memory at all (NotSupported on some integrated
        and embedded GPUs) has no memory figures, and is not lost for that.
        """
        if index not in self._memory_v1_only:
            version = getattr(self._nvml.module, "nvmlMemory_v2", None)
            try:
                if version is None:
                    raise NvmlCallError("nvmlDeviceGetMemoryInfo_v2", "FunctionNotFound", "")
                info = self._nvml.optional("nvmlDeviceGetMemoryInfo", handle, version=version)
                if info is not None:
                    return int(info.total), int(info.used), int(info.free), int(info.reserved)
            except NvmlCallError as exc:
                if exc.error not in VERSION_ERRORS:
                    raise
            self._memory_v1_only.add(index)
            log.info("nvml_memory_v1_fallback", gpu=index)
        info = self._nvml.optional("nvmlDeviceGetMemoryInfo", handle)
        if info is None:
            return None, None, None, None
        return int(info.total), int(info.used), int(info.free), None

    def _figure(self, index: int, read: Callable[[Any], float | None], handle: Any) -> float | None:
        """A secondary figure: unknown on any failure, which never marks the GPU lost."""
        try:
            return read(handle)
        except NvmlCallError as exc:
            log.debug("gpu_figure_failed", gpu=index, call=exc.call, error=exc.error)
            return None

    def _utilization(self, handle: Any) -> float | None:
        rates = self._nvml.optional("nvmlDeviceGetUtilizationRates", handle)
        return None if rates is None else float(rates.gpu) / 100.0

    def _temperature(self, handle: Any) -> float | None:
        value = self._nvml.optional("nvmlDeviceGetTemperature", handle, NVML_TEMPERATURE_GPU)
        return None if value is None else float(value)

    def _power(self, handle: Any) -> float | None:
        milliwatts = self._nvml.optional("nvmlDeviceGetPowerUsage", handle)
        return None if milliwatts is None else float(milliwatts) / 1000.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
