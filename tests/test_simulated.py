"""The simulated GPU: playback against a clock, speed, looping, labelling and bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watchdog.errors import UsageError
from watchdog.samples import SIMULATED
from watchdog.sources.scenarios import scenario_names, scenario_rows
from watchdog.sources.simulated import SimulatedSource, load_steps
from watchdog.trace import TraceWriter, group_steps


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    with path.open("w") as stream:
        writer = TraceWriter(stream)
        for t in range(10):
            writer.device(t * 10, 0, 1000 + t, 5000)
            writer.process(t * 10, 0, 77, 500 + t)
    return path


def test_plays_the_latest_step_due_at_the_chosen_speed(tmp_path: Path) -> None:
    """At speed 2, 25 wall seconds in, the step at trace time 50 is current."""
    clock = FakeClock()
    source = SimulatedSource(load_steps(str(_trace(tmp_path))), speed=2.0, clock=clock)
    assert source.poll().devices[0].used_bytes == 1000  # type: ignore[index]
    clock.now += 25
    reading = source.poll()
    assert reading.t == 50.0
    assert reading.devices[0].used_bytes == 1005  # type: ignore[index]
    assert reading.processes[0].pid == 77  # type: ignore[index]
    assert reading.processes[0].used_bytes == 505  # type: ignore[index]


def test_a_trace_past_its_card_has_nothing_free_not_less(tmp_path: Path) -> None:
    """A synthetic trace may overshoot the card at its OOM: free memory is 0, never negative
    (the exporter's free gauge once read -200)."""
    path = tmp_path / "over.csv"
    with path.open("w") as stream:
        TraceWriter(stream).device(0, 0, 5200, 5000)
    device = SimulatedSource(load_steps(str(path))).poll().devices[0]  # type: ignore[index]
    assert (device.used_bytes, device.free_bytes) == (5200, 0)


def test_everything_is_labelled_simulated(tmp_path: Path) -> None:
    """Readings carry the simulated origin and the devices say they are simulated."""
    reading = SimulatedSource(load_steps(str(_trace(tmp_path)))).poll()
    assert reading.origin == SIMULATED
    assert reading.devices[0].name == "Simulated GPU"  # type: ignore[index]
    assert reading.devices[0].uuid.startswith("SIMULATED-")  # type: ignore[index]


def test_stays_on_the_last_step_when_not_looping(tmp_path: Path) -> None:
    """After the end of the trace the last step is repeated and the source says it finished."""
    clock = FakeClock()
    source = SimulatedSource(load_steps(str(_trace(tmp_path))), clock=clock)
    clock.now += 1000
    with capture_logs() as logs:
        assert source.poll().t == 90.0
        assert source.poll().t == 90.0
    assert source.finished
    assert [entry["event"] for entry in logs] == ["simulation_finished"]


def test_looping_keeps_time_increasing(tmp_path: Path) -> None:
    """A looping trace starts over, with time still increasing so detectors never see it go back."""
    clock = FakeClock()
    source = SimulatedSource(load_steps(str(_trace(tmp_path))), loop=True, clock=clock)
    clock.now += 105  # the loop is 100 s long (last step + one gap)
    reading = source.poll()
    assert reading.t == 100.0
    assert reading.devices[0].used_bytes == 1000  # type: ignore[index]
    assert not source.finished


@pytest.mark.parametrize("name", scenario_names())
def test_builtin_scenarios_are_valid_and_deterministic(name: str) -> None:
    """Every built-in scenario is a valid trace, the same each time, and fits its card."""
    rows = scenario_rows(name)
    assert rows == scenario_rows(name)
    steps = list(group_steps(rows))
    assert all(step.devices for step in steps)
    assert all(0 <= row.used_bytes <= (row.total_bytes or 0) for s in steps for row in s.devices)
    for step in steps:  # no process holds more than its card, even at the OOM
        totals = {row.gpu: row.total_bytes or 0 for row in step.devices}
        for gpu, total in totals.items():
            assert sum(row.used_bytes for row in step.processes if row.gpu == gpu) <= total


def test_leak_scenario_runs_out_of_memory_and_healthy_does_not() -> None:
    """The leak scenario ends full; the healthy one stays well below the card."""
    leak = scenario_rows("leak")
    assert max(r.used_bytes for r in leak if r.pid is None) == leak[0].total_bytes
    healthy = [r for r in scenario_rows("healthy") if r.pid is None]
    assert max(r.used_bytes for r in healthy) < 0.7 * healthy[0].total_bytes  # type: ignore[operator]


def test_unknown_scenario_or_missing_file_is_a_usage_error() -> None:
    """--simulate with nothing playable says what is accepted."""
    with pytest.raises(UsageError, match="neither a trace file nor a scenario"):
        load_steps("no-such-thing")


def test_a_gzip_trace_plays_like_the_plain_one(tmp_path: Path) -> None:
    """``--simulate run.csv.gz`` plays what ``--simulate run.csv`` does."""
    plain = _trace(tmp_path)
    packed = tmp_path / "trace.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_steps(str(packed)) == load_steps(str(plain))


def test_trace_without_device_rows_is_rejected(tmp_path: Path) -> None:
    """A trace with only process rows, or none, cannot drive a simulated GPU."""
    path = tmp_path / "procs.csv"
    path.write_text("t,gpu,pid,used_bytes,total_bytes\n0,0,5,10,\n")
    with pytest.raises(UsageError, match=r"procs\.csv:2: process rows on gpu 0, but no device"):
        load_steps(str(path))
    path.write_text("t,gpu,pid,used_bytes,total_bytes\n")
    with pytest.raises(UsageError, match="has no device rows"):
        load_steps(str(path))
