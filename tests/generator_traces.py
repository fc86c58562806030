"""Cached builds and parses of one scenario generator's traces, for that generator's tests.

A held-out generator's tests read the same few hundred traces many times over
(well-formed, twin, OOM, pids): each is built once and parsed once for the
whole module, through the project's own trace reader.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from watchdog.trace import TraceRow, read_rows


def parse(lines: tuple[str, ...] | list[str], name: str = "trace") -> list[TraceRow]:
    """The rows, through the project's own trace reader (it rejects a malformed trace)."""
    return list(read_rows(io.StringIO("\n".join(lines) + "\n"), name))


class GeneratedTraces(NamedTuple):
    """The cached readers of one generator's traces, keyed by (scenario, seed)."""

    built: Callable[[str, int], tuple[tuple[str, ...], Any]]
    """``generator.build(scenario, seed)``: (lines, label)."""
    twin_of: Callable[[str, int], tuple[str, ...]]
    """The lines of the trace's leak-free twin."""
    rows_of: Callable[..., list[TraceRow]]
    """``rows_of(scenario, seed, *, twin=False)``: the parsed rows of the trace or its twin."""
    device: Callable[..., list[tuple[float, int, int]]]
    """``device(scenario, seed, *, twin=False)``: (t, used, total) of each device row."""


def traces_of(generator: ModuleType) -> GeneratedTraces:
    """Readers of ``generator``'s traces that build and parse each one once."""

    @functools.cache
    def built(scenario: str, seed: int) -> tuple[tuple[str, ...], Any]:
        lines, label = generator.build(scenario, seed)
        return tuple(lines), label

    @functools.cache
    def twin_of(scenario: str, seed: int) -> tuple[str, ...]:
        return tuple(generator.twin(built(scenario, seed)[1]))

    @functools.cache
    def rows_of(scenario: str, seed: int, *, twin: bool = False) -> list[TraceRow]:
        lines = twin_of(scenario, seed) if twin else built(scenario, seed)[0]
        return parse(lines, f"{scenario}-{seed}")

    @functools.cache
    def device(scenario: str, seed: int, *, twin: bool = False) -> list[tuple[float, int, int]]:
        rows = rows_of(scenario, seed, twin=twin)
        return [(r.t, r.used_bytes, r.total_bytes or 0) for r in rows if r.pid is None]

    return GeneratedTraces(built, twin_of, rows_of, device)
