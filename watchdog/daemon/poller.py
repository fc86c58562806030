"""The poll loop: each source on its own APScheduler interval job.

Jobs coalesce and never overlap (``max_instances=1``): a slow or hung poll
makes later runs count as missed instead of piling up threads. A source that
raises is logged and counted, and polled again at its next interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from watchdog.daemon.state import DaemonState
from watchdog.samples import Reading
from watchdog.sources.base import Source

log = structlog.get_logger("watchdog.poller")

ReadingObserver = Callable[[Reading], None]


class Poller:
    """Polls ``sources`` into ``state`` and hands every reading to ``observers``.

    Args:
        sources: What to poll; each on its own ``interval_s``.
        state: Where readings and collector health go.
        observers: Called with each successful reading (detection, recording);
            an observer that raises is logged and never stops the poll loop.
        clock: Monotonic clock for durations.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        state: DaemonState,
        observers: Sequence[ReadingObserver] = (),
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = list(sources)
        self._state = state
        self._observers = list(observers)
        self._clock = clock
        self._wall = wall
        self._monotonic = monotonic
        self._clock_reference = (wall(), monotonic())
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(4, 2 * len(self._sources)))},
            timezone=timezone.utc,
        )
        for source in self._sources:
            state.add_collector(source.name, source.interval_s)

    def add_observer(self, observer: ReadingObserver) -> None:
        """Hand every later reading to ``observer`` too."""
        self._observers.append(observer)

    def start(self) -> None:
        """Schedule every source, first poll now."""
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        now = datetime.now(timezone.utc)
        for source in self._sources:
            self._scheduler.add_job(
                self.poll_once,
                "interval",
                seconds=source.interval_s,
                args=[source],
                id=source.name,
                name=source.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(source.interval_s)),
                next_run_time=now,
            )
        self._scheduler.start()

    @property
    def scheduler(self) -> BackgroundScheduler:
        """The scheduler the polls run on (other timed jobs may share it)."""
        return self._scheduler

    def check_clock(self, tolerance_s: float = 2.0) -> bool:
        """Re-schedule every poll now if the wall clock jumped; True if it did.

        APScheduler schedules by wall-clock time, so after the clock is set back
        (NTP, a VM resumed) it would wait out the difference before the next
        poll. Comparing the wall clock with the monotonic one finds the jump.
        Only the polls move: other jobs on the scheduler (the policy's
        ``[[policy.schedule]]`` actions, a checkpoint and restart at 02:00) keep
        the wall-clock time they were set for.
        """
        wall, monotonic = self._wall(), self._monotonic()
        then_wall, then_monotonic = self._clock_reference
        self._clock_reference = (wall, monotonic)
        jump = (wall - then_wall) - (monotonic - then_monotonic)
        if abs(jump) <= tolerance_s:
            return False
        log.warning("wall_clock_jump", seconds=round(jump, 3))
        if self._scheduler.running:
            now = datetime.now(timezone.utc)
            for source in self._sources:
                job = self._scheduler.get_job(source.name)
                if job is not None:
                    job.modify(next_run_time=now)
            self._scheduler.wakeup()
        return True

    def stop(self) -> None:
        """Stop scheduling; a poll in progress is not waited for (it may be a hung driver call)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for source in self._sources:
            try:
                source.close()
            except Exception:
                log.exception("source_close_failed", collector=source.name)

    def poll_once(self, source: Source) -> Reading | None:
        """Poll ``source`` once; record its health, store and hand on its reading."""
        self._state.poll_started(source.name)
        started = self._clock()
        try:
            reading = source.poll()
        except Exception as exc:
            duration = self._clock() - started
            self._state.poll_finished(source.name, duration, error=f"{type(exc).__name__}: {exc}")
            log.warning(
                "poll_failed", collector=source.name, error=str(exc), type=type(exc).__name__
            )
            return None
        self._state.apply(reading, source.name)
        self._state.poll_finished(source.name, self._clock() - started)
        for observer in self._observers:
            try:
                observer(reading)
            except Exception:
                log.exception("observer_failed", collector=source.name)
        return reading

    def _on_missed(self, event: JobExecutionEvent) -> None:
        self._state.run_missed(event.job_id)
        log.debug("poll_missed", collector=event.job_id)
