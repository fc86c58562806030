"""Xid errors and other GPU fault events from NVML, on a thread of their own.

NVML delivers events through an event set: each GPU is registered for the event
types it supports, and ``nvmlEventSetWait_v2`` blocks until one arrives or its
timeout passes. The wait runs on one daemon thread, never on the poll loop,
with a short timeout (``sources.event_wait_s``) so that :meth:`stop` returns
within about one wait.

Faults, as NVIDIA's k8s-device-plugin (``internal/rm/health.go``) treats them,
but per GPU instead of "every device unhealthy":

- Timeout, early or not, means "nothing happened".
- A GPU that answers NotSupported (to the supported-types query or the
  registration) is skipped for good and counted as ``unsupported``.
- A GPU that cannot be registered (GPU lost, Unknown) is counted as
  ``retrying`` and registered again every ``sources.event_retry_s``.
- A wait that fails otherwise: the registered GPUs are probed, the lost ones
  dropped (to ``retrying``), and a fresh event set is built without them (NVML
  has no way to unregister one GPU). A failure with no lost GPU, or anything
  unexpected, ends this run of the loop: it is logged and counted and the loop
  starts again after a backoff that doubles up to ``max_backoff_s``.

The thread never dies silently: :meth:`status` says ``up`` only while an event
set exists and the thread waits on it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from watchdog.samples import EventWatcherStatus, GpuEvent
from watchdog.sources.nvml import UNSUPPORTED_ERRORS, Nvml, NvmlCallError
from watchdog.sources.nvml_xid import NONE, describe

log = structlog.get_logger("watchdog.sources.nvml_events")

# The event types watched (pynvml's constant) and their name in metrics and logs. Not
# P-state, clock, power-source or MIG changes (not faults), nor single-bit ECC errors:
# they are corrected, can come in storms, and their counter is polled instead.
WATCHED_TYPES = (
    ("nvmlEventTypeXidCriticalError", "xid"),
    ("nvmlEventTypeDoubleBitEccError", "double_bit_ecc"),
    ("nvmlEventTypeDramRetirementEvent", "dram_retirement"),
    ("nvmlEventTypeDramRetirementFailure", "dram_retirement_failure"),
    ("nvmlEventTypeNonFatalPoisonError", "poison_nonfatal"),
    ("nvmlEventTypeFatalPoisonError", "poison_fatal"),
    ("nvmlEventTypeGpuUnavailableError", "gpu_unavailable"),
    ("nvmlEventTypeGpuRecoveryAction", "recovery_action"),
)
REGISTERED, UNSUPPORTED, RETRYING = "registered", "unsupported", "retrying"
STATES = (REGISTERED, UNSUPPORTED, RETRYING)
_TIMEOUT = frozenset({"Timeout"})

ProcessesOn = Callable[[int], Sequence[object]]
"""The processes on a GPU at the daemon's last poll, for the log line of an event."""


class NvmlEventWatcher:
    """Waits for NVML events on every GPU and hands each one to ``on_event``.

    Args:
        nvml: The initialised NVML shim (the daemon shuts it down after :meth:`stop`).
        on_event: Called on the event thread with each event (counting it); an
            exception there is logged and counted, never fatal to the thread.
        processes_on: The processes on a GPU, logged with each event.
        wait_s: Longest a single wait blocks: how soon :meth:`stop` is noticed.
        retry_s: Seconds between registration attempts of a GPU that failed,
            and the first backoff after the loop failed.
        max_backoff_s: The longest backoff after repeated failures.
        clock: Monotonic clock, for the retry schedule.
    """

    def __init__(
        self,
        nvml: Nvml,
        on_event: Callable[[GpuEvent], None],
        processes_on: ProcessesOn = lambda gpu: (),
        wait_s: float = 1.0,
        retry_s: float = 30.0,
        max_backoff_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._on_event = on_event
        self._processes_on = processes_on
        self._wait_ms = max(1, int(wait_s * 1000))
        self.wait_s = wait_s
        self._retry_s = retry_s
        self._max_backoff_s = max(max_backoff_s, retry_s)
        self._clock = clock
        self._kinds = {
            int(getattr(nvml.module, constant)): kind
            for constant, kind in WATCHED_TYPES
            if hasattr(nvml.module, constant)  # older bindings lack the newer types
        }
        self._wanted = sum(self._kinds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Read by status() from other threads: guarded by the lock.
        self._lock = threading.Lock()
        self._states: dict[int, str] = {}
        self._errors: Counter[str] = Counter()
        self._restarts = 0
        self._waiting = False
        # Touched by the event thread only.
        self._handles: dict[int, Any] = {}
        self._uuids: dict[int, str] = {}
        self._by_address: dict[object, int] = {}
        self._retry_at = 0.0
        self._healthy = False

    def start(self) -> None:
        """Start the event thread."""
        self._thread = threading.Thread(target=self._supervise, name="nvml-events", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the thread; True once it has ended (within about one wait by default).

        False means it is stuck inside a driver call: NVML must then not be shut down
        under it (the daemon exits without doing so).
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(self.wait_s + 1.0 if timeout_s is None else timeout_s)
        return not self._thread.is_alive()

    def status(self) -> EventWatcherStatus:
        """Whether the thread waits for events, GPUs by registration state, failures."""
        alive = self._thread is not None and self._thread.is_alive()
        with self._lock:
            gpus = dict.fromkeys(STATES, 0)
            gpus.update(Counter(self._states.values()))
            return EventWatcherStatus(
                up=alive and self._waiting,
                gpus=gpus,
                errors=dict(self._errors),
                restarts=self._restarts,
            )

    # --- the thread ------------------------------------------------------------------

    def _supervise(self) -> None:
        """Run the event loop until stopped; a failed run is counted and retried with backoff."""
        backoff = self._retry_s
        while not self._stop.is_set():
            self._healthy = False
            try:
                self._run()
                continue  # stopped, or a fresh event set wanted at once
            except NvmlCallError as exc:
                self._count(exc.error)
                log.warning("event_watcher_failed", call=exc.call, error=exc.error)
            except Exception as exc:  # a bug must not end Xid watching for good
                self._count(type(exc).__name__)
                log.exception("event_watcher_crashed")
            if self._healthy:  # it had been working: start the backoff over
                backoff = self._retry_s
            with self._lock:
                self._restarts += 1
            log.info("event_watcher_restarting", in_s=backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
        log.info("event_watcher_stopped")

    def _run(self) -> None:
        """One event set's life: create, register, wait until stopped or it must be rebuilt."""
        event_set = self._nvml.call("nvmlEventSetCreate")
        try:
            self._register_all(event_set)
            with self._lock:
                self._waiting = True
            while not self._stop.is_set():
                self._retry_due(event_set)
                try:
                    data = self._nvml.call_quiet(
                        "nvmlEventSetWait_v2", _TIMEOUT, event_set, self._wait_ms
                    )
                except NvmlCallError as exc:
                    if exc.error in _TIMEOUT:
                        self._healthy = True
                        continue
                    if not self._drop_lost():
                        raise
                    self._count(exc.error)
                    return  # a fresh event set without the lost GPUs
                self._healthy = True
                self._deliver(data)
        finally:
            with self._lock:
                self._waiting = False
            self._free(event_set)

    def _free(self, event_set: Any) -> None:
        try:
            self._nvml.call("nvmlEventSetFree", event_set)
        except NvmlCallError as exc:  # after a GPU loss or a driver fault: nothing to undo
            log.debug("event_set_free_failed", error=exc.error)
        self._handles.clear()
        self._by_address.clear()

    def _register_all(self, event_set: Any) -> None:
        """Register every GPU not waiting for its retry time."""
        count = int(self._nvml.call("nvmlDeviceGetCount"))
        with self._lock:
            self._states = {i: s for i, s in self._states.items() if i < count}
        for index in range(count):
            if self._state(index) != RETRYING:
                self._register(event_set, index)
        self._retry_at = self._clock() + self._retry_s

    def _retry_due(self, event_set: Any) -> None:
        if self._clock() < self._retry_at:
            return
        self._retry_at = self._clock() + self._retry_s
        with self._lock:
            retrying = [i for i, state in self._states.items() if state == RETRYING]
        for index in retrying:
            self._register(event_set, index)

    def _register(self, event_set: Any, index: int) -> None:
        """Register one GPU for the watched types it supports; record how that went."""
        uuid = ""
        try:
            handle = self._nvml.call("nvmlDeviceGetHandleByIndex", index)
            supported = self._nvml.optional("nvmlDeviceGetSupportedEventTypes", handle)
            mask = 0 if supported is None else int(supported) & self._wanted
            if mask:
                self._nvml.call_quiet(
                    "nvmlDeviceRegisterEvents", UNSUPPORTED_ERRORS, handle, mask, event_set
                )
                uuid = _text(self._nvml.optional("nvmlDeviceGetUUID", handle) or "")
        except NvmlCallError as exc:
            if exc.error in UNSUPPORTED_ERRORS:
                mask = 0
            else:
                self._set_state(index, RETRYING)
                self._count(exc.error)
                log.warning(
                    "gpu_events_not_registered",
                    gpu=index,
                    call=exc.call,
                    error=exc.error,
                    retry_in_s=self._retry_s,
                )
                return
        if not mask:
            if self._state(index) != UNSUPPORTED:
                log.info("gpu_events_unsupported", gpu=index)
            self._set_state(index, UNSUPPORTED)
            return
        self._handles[index] = handle
        self._by_address[_address(handle)] = index
        self._uuids[index] = uuid
        self._set_state(index, REGISTERED)
        kinds = sorted(kind for bit, kind in self._kinds.items() if mask & bit)
        log.info("gpu_events_registered", gpu=index, uuid=uuid, types=kinds)

    def _drop_lost(self) -> bool:
        """Probe the registered GPUs after a failed wait; True if any was lost (now retrying)."""
        lost = False
        for index, handle in list(self._handles.items()):
            try:
                self._nvml.optional("nvmlDeviceGetSupportedEventTypes", handle)
            except NvmlCallError as exc:
                lost = True
                del self._handles[index]
                self._set_state(index, RETRYING)
                log.warning("gpu_events_lost", gpu=index, error=exc.error, retry_in_s=self._retry_s)
        if lost:
            self._retry_at = self._clock() + self._retry_s
        return lost

    def _deliver(self, data: Any) -> None:
        """Count and log one event; a failing sink is counted, and the thread goes on."""
        index = self._index_of(data.device)
        event_type = int(data.eventType)
        kind = self._kinds.get(event_type, f"type_{event_type:#x}")
        uuid = self._uuids.get(index, "")
        processes = list(self._processes_on(index))
        if kind == "xid":
            info = describe(int(data.eventData))
            event = GpuEvent(index, uuid, kind, info.code, info.action, info.fatal)
            level = "error" if info.fatal else "info" if info.action == NONE else "warning"
            getattr(log, level)(
                "gpu_xid",
                gpu=index,
                uuid=uuid,
                xid=info.code,
                name=info.name,
                meaning=info.meaning,
                action=info.action,
                fatal=info.fatal,
                processes=processes,
            )
        else:
            event = GpuEvent(index, uuid, kind)
            log.warning(
                "gpu_event",
                gpu=index,
                uuid=uuid,
                kind=kind,
                data=int(data.eventData),
                processes=processes,
            )
        try:
            self._on_event(event)
        except Exception:
            self._count("on_event")
            log.exception("gpu_event_not_recorded", gpu=index, kind=kind)

    def _index_of(self, device: Any) -> int:
        """The index of the GPU an event names; -1 if even NVML cannot say."""
        index = self._by_address.get(_address(device))
        if index is not None:
            return index
        try:
            return int(self._nvml.call("nvmlDeviceGetIndex", device))
        except NvmlCallError:
            return -1

    def _state(self, index: int) -> str | None:
        with self._lock:
            return self._states.get(index)

    def _set_state(self, index: int, state: str) -> None:
        with self._lock:
            self._states[index] = state

    def _count(self, error: str) -> None:
        with self._lock:
            self._errors[error] += 1


def _address(handle: Any) -> object:
    """A key for a device handle: pynvml's are ctypes pointers, equal only by address."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return ("id", id(handle))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
