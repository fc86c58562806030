"""Builders for the values tests feed the policy and the supervisor."""

from __future__ import annotations

from watchdog.detectors.events import Event


def finding(
    t: float,
    state: str = "raised",
    kind: str = "leak",
    tto: float | None = 7200.0,
    cause: str | None = None,
    pid: int | None = 42,
) -> Event:
    """A detector event on GPU 0 (a process series unless ``pid`` is None)."""
    return Event(
        t=t,
        kind=kind,
        state=state,
        gpu=0,
        pid=pid,
        series="process" if pid is not None else "gpu",
        rate_bytes_per_s=1e6,
        time_to_oom_s=tto,
        confidence=0.9,
        pattern="steady",
        cause=cause,
        message="test",
    )
