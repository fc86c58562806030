"""GPU memory health from NVML: ECC error counts, retired pages and remapped rows.

These figures change rarely and take several driver calls per GPU, so this source
has its own slow interval (``sources.health_interval_s``). A figure the GPU
cannot give (ECC off, a consumer GPU, page retirement on Ampere and later, row
remapping before Ampere) is ``None``: left out of /metrics, never exported as 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from watchdog.samples import NVML, GpuHealthSample, Reading
from watchdog.sources.nvml import Nvml, NvmlCallError
from watchdog.sources.nvml_devices import DeviceHandles

log = structlog.get_logger("watchdog.sources.nvml_health")

# nvml.h enums (the same values as pynvml's constants of these names).
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0  # since the driver was loaded
NVML_AGGREGATE_ECC = 1  # over the GPU's lifetime (kept in its infoROM)
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1

# A device that answers this has gone: skip it this poll (the device source marks it lost).
_LOST = "GpuIsLost"


class NvmlHealthSource:
    """Reads each GPU's ECC counters, retired pages and remapped rows."""

    name = "nvml_health"

    def __init__(
        self,
        nvml: Nvml,
        handles: DeviceHandles,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._handles = handles
        self.interval_s = interval_s
        self._clock = clock

    def poll(self) -> Reading:
        """Read every GPU; a lost GPU is left out; raises NvmlCallError if the count fails."""
        t = self._clock()
        health: list[GpuHealthSample] = []
        for index in range(self._handles.count()):
            try:
                health.append(self._read(index, self._handles.get(index)))
            except NvmlCallError as exc:
                self._handles.forget(index)
                log.warning("gpu_health_unreadable", gpu=index, call=exc.call, error=exc.error)
        return Reading(t=t, origin=NVML, health=health)

    def close(self) -> None:
        """Nothing to release: the daemon shuts NVML down."""

    def _read(self, index: int, handle: Any) -> GpuHealthSample:
        def ecc(error_type: int, counter: int) -> int | None:
            count = self._figure("nvmlDeviceGetTotalEccErrors", handle, error_type, counter)
            return None if count is None else int(count)

        def pages(cause: int) -> int | None:
            found = self._figure("nvmlDeviceGetRetiredPages", handle, cause)
            return None if found is None else len(found)

        pending = self._figure("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        rows = self._figure("nvmlDeviceGetRemappedRows", handle)
        correctable, uncorrectable, remap_pending, remap_failure = rows or (None,) * 4
        return GpuHealthSample(
            gpu=index,
            ecc_volatile_corrected=ecc(NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC),
            ecc_volatile_uncorrected=ecc(NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC),
            ecc_aggregate_corrected=ecc(NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_AGGREGATE_ECC),
            ecc_aggregate_uncorrected=ecc(NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_AGGREGATE_ECC),
            retired_pages_single_bit=pages(
                NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
            ),
            retired_pages_double_bit=pages(NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
            retired_pages_pending=None if pending is None else bool(pending),
            remapped_rows_correctable=_int(correctable),
            remapped_rows_uncorrectable=_int(uncorrectable),
            row_remap_pending=None if remap_pending is None else bool(remap_pending),
            row_remap_failure=None if remap_failure is None else bool(remap_failure),
        )

    def _figure(self, call: str, *args: Any) -> Any | None:
        """One figure: ``None`` when the binding lacks the call, the GPU cannot tell, or it fails.

        Raises:
            NvmlCallError: the GPU is lost (the rest of its figures would fail too).
        """
        if not self._nvml.has(call):
            return None
        try:
            return self._nvml.optional(call, *args)
        except NvmlCallError as exc:
            if exc.error == _LOST:
                raise
            log.debug("gpu_health_figure_failed", call=exc.call, error=exc.error)
            return None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
