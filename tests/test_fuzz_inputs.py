"""Fuzzed input: the trace parser and the config loader fail only with their own clear errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog.config import ConfigError, load_config
from watchdog.detectors.replay import _NotFast, _replay_either, _replay_rows
from watchdog.trace import TraceError, TraceRow, read_rows

HEADER = "t,gpu,pid,used_bytes,total_bytes\n"
FIELD = st.one_of(
    st.just(""),
    st.integers(-5, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)
ROW = st.lists(FIELD, min_size=0, max_size=7).map(",".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=20), st.booleans())
def test_trace_parser_yields_valid_rows_or_one_trace_error(rows: list[str], header: bool) -> None:
    """Any text is parsed into valid rows or rejected with a TraceError naming a line."""
    text = (HEADER if header else "") + "\n".join(rows)
    try:
        parsed = list(read_rows(io.StringIO(text), "fuzz.csv"))
    except TraceError as exc:
        message = str(exc)
        parsed = []
    else:
        message = "fuzz.csv"
    assert message.startswith("fuzz.csv")
    assert "\n" not in message
    previous = 0.0
    for row in parsed:
        assert isinstance(row, TraceRow)
        assert row.t >= previous
        previous = row.t
        assert row.used_bytes >= 0
        assert (row.pid is None) == (row.total_bytes is not None)


FORMATS = (
    str,  # as recordings write it
    lambda v: repr(float(v)),  # as pandas writes a column with empty cells
    lambda v: f"{v}.5",  # a script's float
    lambda v: f"{v:.3e}",
)
JUNK = st.one_of(st.sampled_from(["", "nan", "-1", "1e400", "0x1", "1_0"]), st.text(max_size=4))


@st.composite
def decimal_traces(draw: st.DrawFn) -> list[str]:
    """A trace whose figures are written each in any of ``FORMATS``, a few cells junk."""

    # Rare choices come last in sampled_from: hypothesis favours (and shrinks to) the first.
    def cell(value: int, whole: bool = False) -> str:
        if draw(st.sampled_from([False] * 30 + [True])):
            return draw(JUNK)
        return draw(st.sampled_from(FORMATS[:2] if whole else FORMATS))(value)

    def empty() -> str:
        return draw(st.sampled_from([""] * 9 + ["nan"]))

    def size() -> int:  # now and then past 2^53, where a float is no longer exact
        return draw(st.integers(0, 1 << draw(st.sampled_from([40] * 9 + [64]))))

    lines = [HEADER.strip()]
    gpus = draw(st.integers(1, 2))
    for t in range(draw(st.integers(1, 5))):
        for gpu in range(gpus):
            lines.append(f"{t},{cell(gpu, True)},{empty()},{cell(size())},{cell(size() or 1)}")
        for pid in draw(st.sets(st.integers(1, 4), max_size=3)):
            lines.append(f"{t},{cell(0, True)},{cell(pid, True)},{cell(size())},{empty()}")
    return lines


@settings(max_examples=400, deadline=None)
@given(decimal_traces())
def test_fast_replay_reads_what_the_reference_parser_reads(lines: list[str]) -> None:
    """Whatever the fast path reads, integers or decimals, the reference parser reads to the
    same samples; whatever it is unsure of is left to the reference parser."""
    try:
        fast = _replay_either(lines, "fuzz.csv", None, record=True)
    except _NotFast:
        return
    reference = _replay_rows(read_rows(io.StringIO("\n".join(lines)), "fuzz.csv"), None, True)
    assert fast.recording == reference.recording
    assert fast.events == reference.events


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_config_loader_accepts_or_rejects_with_one_line(tmp_path: Path, text: str) -> None:
    """Any file is a valid configuration or a one-line ConfigError naming the file."""
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, env={})
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert str(path) in message
    assert "\n" not in message


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(["device_interval_s", "max_processes", "proc_root", "stall_after_s"]),
        st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=5), st.booleans()),
        max_size=4,
    )
)
def test_typed_values_are_checked_not_trusted(tmp_path: Path, values: dict[str, object]) -> None:
    """Settings of the wrong type or range never get through as the wrong type."""
    lines = ["[sources]"] + [f"{key} = {_toml(value)}" for key, value in values.items()]
    path = tmp_path / "typed.toml"
    path.write_text("\n".join(lines) + "\n")
    try:
        config = load_config(path, env={})
    except ConfigError:
        return
    assert isinstance(config.sources.device_interval_s, float)
    assert 0.05 <= config.sources.device_interval_s <= 3600
    assert isinstance(config.sources.max_processes, int)
    assert not isinstance(config.sources.max_processes, bool)
    assert isinstance(config.sources.proc_root, str)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)
