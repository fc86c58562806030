"""ECC counts, retired pages and remapped rows: the fake's calls, the slow source, the metrics.

Through the real nvidia-ml-py bound to the fake libnvidia-ml (tests/fake_libnvml),
so the two-call retired-pages protocol, the enum arguments and NotSupported are
those of production.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from tests.conftest import require_tool
from tests.fake_libnvml import (
    FakeEcc,
    FakeNvml,
    FakeRemappedRows,
    FakeRetiredPages,
    FakeState,
    Fault,
    LoadedFake,
    bound_pynvml,
    compiler,
    gpus,
)
from watchdog.commands._common import build_sources
from watchdog.config import ConfigError, load_config
from watchdog.daemon.state import DaemonState
from watchdog.exporter.collector import StateCollector
from watchdog.samples import GpuHealthSample, Reading
from watchdog.sources.nvml import Nvml, NvmlCallError
from watchdog.sources.nvml_devices import DeviceHandles
from watchdog.sources.nvml_health import NvmlHealthSource

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeNvml, LoadedFake]]:
    """Three fake GPUs: an A100-like (rows), a V100-like (pages), one without ECC."""
    require_tool(Path(compiler() or "cc").name)
    state = FakeState(gpus=gpus(3))
    state.gpus[0].ecc = FakeEcc(
        volatile_corrected=7, aggregate_corrected=70, aggregate_uncorrected=1
    )
    state.gpus[0].remapped_rows = FakeRemappedRows(correctable=2, uncorrectable=1, pending=True)
    state.gpus[1].retired_pages = FakeRetiredPages(single_bit_ecc=3, double_bit_ecc=2, pending=True)
    state.gpus[1].remapped_rows = None  # before Ampere
    state.gpus[2].ecc = None  # ECC off, or a GPU without it
    made = FakeNvml(tmp_path / "state.json", state)
    with bound_pynvml(made) as loaded:
        yield made, loaded
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _source(**options: Any) -> tuple[Nvml, NvmlHealthSource]:
    nvml = Nvml()
    nvml.init()
    return nvml, NvmlHealthSource(nvml, DeviceHandles(nvml), **options)


def _scrape(samples: list[GpuHealthSample]) -> Series:
    state = DaemonState()
    state.apply(Reading(t=0, health=samples))
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in StateCollector(state.snapshot, 10).collect()
        for sample in family.samples
    }


def _value(series: Series, name: str, **labels: str) -> float | None:
    found = [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, found
    return found[0] if found else None


# --- the fake library's calls, through pynvml ----------------------------------------


def test_fake_ecc_pages_and_rows_read_as_nvml_reports_them(
    fake: tuple[FakeNvml, LoadedFake],
) -> None:
    """ECC by type and counter, retired pages in two calls, pending flags and remapped rows."""
    pynvml.nvmlInit()
    a100, v100, no_ecc = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3))
    ecc = pynvml.nvmlDeviceGetTotalEccErrors
    assert ecc(a100, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC) == 7
    assert ecc(a100, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC) == 1
    with pytest.raises(pynvml.NVMLError_NotSupported):
        ecc(no_ecc, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        ecc(a100, 2, pynvml.NVML_VOLATILE_ECC)
    single = pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
    double = pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
    pages = pynvml.nvmlDeviceGetRetiredPages(v100, single)
    assert len(pages) == 3
    assert len(set(pages)) == 3
    assert len(pynvml.nvmlDeviceGetRetiredPages(v100, double)) == 2
    assert pynvml.nvmlDeviceGetRetiredPagesPendingStatus(v100) == 1
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetRetiredPages(a100, single)
    assert pynvml.nvmlDeviceGetRemappedRows(a100) == (2, 1, 1, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetRemappedRows(v100)


def test_retired_pages_sizing_call_answers_like_nvml(fake: tuple[FakeNvml, LoadedFake]) -> None:
    """A count of 0 with no buffer: INSUFFICIENT_SIZE and the count; SUCCESS with none retired."""
    made, loaded = fake
    pynvml.nvmlInit()
    function = loaded.lib.nvmlDeviceGetRetiredPages
    count = pynvml.c_uint(0)
    v100 = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert function(v100, 1, pynvml.byref(count), None) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 2
    made.state.gpus[1].retired_pages = FakeRetiredPages()
    made.write()
    count.value = 0
    assert function(v100, 1, pynvml.byref(count), None) == pynvml.NVML_SUCCESS
    assert count.value == 0


# --- the source ----------------------------------------------------------------------


def test_source_reads_each_gpu_and_leaves_out_what_it_cannot_tell(
    fake: tuple[FakeNvml, LoadedFake],
) -> None:
    """Figures a GPU has are read; those it lacks (NotSupported) are None, never 0."""
    _, source = _source()
    reading = source.poll()
    assert reading.origin == "nvml"
    a100, v100, no_ecc = reading.health or []
    assert a100 == GpuHealthSample(
        gpu=0,
        ecc_volatile_corrected=7,
        ecc_volatile_uncorrected=0,
        ecc_aggregate_corrected=70,
        ecc_aggregate_uncorrected=1,
        remapped_rows_correctable=2,
        remapped_rows_uncorrectable=1,
        row_remap_pending=True,
        row_remap_failure=False,
    )
    assert (v100.retired_pages_single_bit, v100.retired_pages_double_bit) == (3, 2)
    assert v100.retired_pages_pending is True
    assert v100.remapped_rows_correctable is None
    assert no_ecc.ecc_volatile_corrected is None
    assert no_ecc.ecc_aggregate_uncorrected is None


def test_one_unsupported_ecc_counter_is_absent_alone(fake: tuple[FakeNvml, LoadedFake]) -> None:
    """A GPU that keeps no aggregate counter: those are None, the volatile ones are read."""
    made, _ = fake
    made.state.gpus[0].ecc = FakeEcc(aggregate_corrected=None, aggregate_uncorrected=None)
    made.write()
    nvml, source = _source()
    [a100, *_] = source.poll().health or []
    assert (a100.ecc_volatile_corrected, a100.ecc_aggregate_corrected) == (0, None)
    assert not nvml.error_counts()  # NotSupported is an answer, not an error


def test_not_supported_is_absent_from_metrics_not_zero(fake: tuple[FakeNvml, LoadedFake]) -> None:
    """/metrics has the V100's pages and the A100's rows, and no ECC series at all for GPU 2."""
    _, source = _source()
    series = _scrape(source.poll().health or [])
    ecc = "gpu_watchdog_gpu_ecc_errors_total"
    assert _value(series, ecc, gpu="0", type="corrected", counter="volatile") == 7
    assert _value(series, ecc, gpu="0", type="uncorrected", counter="aggregate") == 1
    assert not [k for k in series if k[0] == ecc and ("gpu", "2") in k[1]]
    pages = "gpu_watchdog_gpu_retired_pages"
    assert _value(series, pages, gpu="1", cause="single_bit_ecc") == 3
    assert _value(series, pages, gpu="1", cause="double_bit_ecc") == 2
    assert _value(series, pages, gpu="0", cause="double_bit_ecc") is None
    assert _value(series, "gpu_watchdog_gpu_retired_pages_pending", gpu="1") == 1
    assert _value(series, "gpu_watchdog_gpu_remapped_rows", gpu="0", type="uncorrectable") == 1
    assert _value(series, "gpu_watchdog_gpu_remapped_rows", gpu="1", type="correctable") is None
    assert _value(series, "gpu_watchdog_gpu_row_remap_pending", gpu="0", source="nvml") == 1
    assert _value(series, "gpu_watchdog_gpu_row_remap_failure", gpu="0") == 0


def test_lost_gpu_is_left_out_the_others_read_and_it_recovers(
    fake: tuple[FakeNvml, LoadedFake],
) -> None:
    """GPU 1 lost: no sample for it (one failed call, not eight), 0 and 2 read; back next poll."""
    made, _ = fake
    nvml, source = _source()
    made.state.gpus[1].lost = True
    made.write()
    assert [s.gpu for s in source.poll().health or []] == [0, 2]
    assert sum(n for (_, error), n in nvml.error_counts().items() if error == "GpuIsLost") == 1
    made.state.gpus[1].lost = False
    made.write()
    assert [s.gpu for s in source.poll().health or []] == [0, 1, 2]


def test_a_failing_figure_is_unknown_and_the_gpu_still_read(
    fake: tuple[FakeNvml, LoadedFake],
) -> None:
    """nvmlDeviceGetRemappedRows answers Unknown on GPU 0: its rows are None, ECC still read."""
    made, _ = fake
    made.state.faults = [Fault(call="nvmlDeviceGetRemappedRows", gpu=0, error="UNKNOWN")]
    made.write()
    _, source = _source()
    a100 = (source.poll().health or [])[0]
    assert a100.remapped_rows_uncorrectable is None
    assert a100.row_remap_failure is None
    assert a100.ecc_volatile_corrected == 7


def test_device_count_failure_fails_the_poll(fake: tuple[FakeNvml, LoadedFake]) -> None:
    """When NVML cannot even count GPUs the poll fails (the poller counts it and retries)."""
    made, _ = fake
    _, source = _source()
    made.state.faults = [Fault(call="nvmlDeviceGetCount_v2", error="UNKNOWN", times=1)]
    made.write()
    with pytest.raises(NvmlCallError):
        source.poll()
    assert len(source.poll().health or []) == 3


def test_binding_without_a_call_reports_nothing_for_it() -> None:
    """An older nvidia-ml-py lacking the row-remapper call: that figure is None, no crash."""

    class OldBinding:
        NVMLError = pynvml.NVMLError

        def nvmlDeviceGetCount(self) -> int:
            return 1

        def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
            return SimpleNamespace(index=index)

        def nvmlDeviceGetTotalEccErrors(self, handle: Any, kind: int, counter: int) -> int:
            return 4

    nvml = Nvml(OldBinding())  # type: ignore[arg-type]
    [sample] = NvmlHealthSource(nvml, DeviceHandles(nvml)).poll().health or []
    assert sample.ecc_volatile_corrected == 4
    assert sample.remapped_rows_correctable is None
    assert sample.retired_pages_pending is None


def test_daemon_polls_health_on_its_own_interval(fake: tuple[FakeNvml, LoadedFake]) -> None:
    """build_sources adds the health source at sources.health_interval_s, beside the fast ones."""
    config = load_config(env={"GPU_WATCHDOG_SOURCES_HEALTH_INTERVAL_S": "120"})
    sources = build_sources(config, None, list, nvml_module=pynvml)
    try:
        intervals = {source.name: source.interval_s for source in sources.sources}
        assert intervals["nvml_health"] == 120
        assert intervals["nvml_devices"] == config.sources.device_interval_s
    finally:
        sources.close()


@pytest.mark.parametrize("value", ["0.5", "241"])
def test_health_interval_is_bounded(value: str) -> None:
    """Under 1 s is pointless; over 4 min would trip GpuWatchdogStale (5 min): both refused."""
    with pytest.raises(ConfigError, match="health_interval_s"):
        load_config(env={"GPU_WATCHDOG_SOURCES_HEALTH_INTERVAL_S": value})
