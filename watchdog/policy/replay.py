"""What the policy would have decided over a replayed trace.

The live daemon asks the policy after every poll; here the same questions are
asked at the same cadence (``interval_s``, the device poll interval) from the
first finding to the end of the trace, skipping stretches with no active
finding, where the policy has nothing to decide. With no training processes
to talk to, each process in the trace stands for its own job (``pid:N``), a
GPU-level finding concerns the processes with a finding of their own raised
on that GPU, as in the live daemon (``Policy.culprits``; else the GPU itself,
``gpu:N``), and every command is taken to be answered at once. A GPU's leak
with no culprit yet waits for one as in the live daemon, on the GPUs whose
processes the trace watches (``watched_gpus``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

from watchdog.policy.engine import SEND, Decision, JobRef, Policy


class _TraceJobs:
    """Jobs for a trace: one per process, and for a GPU-level finding its culprits or the GPU."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def __call__(self, gpu: int, pid: int | None, series: str) -> list[JobRef]:
        if pid is not None:
            return [JobRef(f"pid:{pid}")]
        pids = sorted(self._policy.culprits(gpu))
        return [JobRef(f"pid:{p}") for p in pids] or [JobRef(f"gpu:{gpu}")]


def decisions_over(
    events: Iterable[Any],
    end_t: float,
    interval_s: float,
    settings: Any,
    *,
    watched_gpus: Collection[int] = (),
) -> list[Decision]:
    """The decisions ``settings`` (a PolicySettings) would take on ``events``, in time order.

    Args:
        events: Detector events in time order.
        end_t: The trace's last timestamp.
        interval_s: How often the live daemon would ask (its device poll interval).
        settings: The policy settings.
        watched_gpus: The GPUs whose processes' memory the trace gives: there a GPU's
            leak waits for its culprit (none: every GPU finding is acted on at once).
    """
    policy = Policy.from_settings(settings)
    jobs = _TraceJobs(policy)
    watched = frozenset(watched_gpus).__contains__
    pending = sorted(events, key=lambda event: event.t)
    decisions: list[Decision] = []
    index = 0
    t = pending[0].t if pending else end_t + 1
    while t <= end_t:
        while index < len(pending) and pending[index].t <= t:
            policy.observe(pending[index])
            index += 1
        decided = policy.decide(t, t, jobs, watched)
        for decision in decided:
            decisions.append(decision)
            if decision.outcome == SEND:
                policy.ledger.finished(decision.job)
        if not policy.active:
            if index >= len(pending):
                break
            t = max(t + interval_s, pending[index].t)  # nothing to decide until the next event
        elif decided:
            t += interval_s
        else:
            # Nothing can change before the policy's next due time or the next event, so
            # skip the asks before it, but the last: from there on, ask at every interval
            # again, and the first ask to see the change is the one the daemon makes.
            # A day-long gap in a trace is then a few steps, not 86,400.
            wake = policy.next_change(t)
            if index < len(pending):
                wake = min(wake, pending[index].t)
            if wake == math.inf:
                break  # no event left and nothing the passing of time would change
            t += max(1, math.floor((wake - t) / interval_s) - 1) * interval_s
    return decisions
