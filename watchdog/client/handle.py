"""The handle a training loop holds: ``step()`` is the safe point where commands run.

``step()`` with nothing pending is one counter update and one attribute test:
no lock, no system call, no clock read. The background thread (``Link``)
sets ``_pending`` after queueing a command; the training thread drains the
queue at its next ``step()``. A command that raises is reported as an error
and training goes on.
"""

from __future__ import annotations

import atexit
import collections
import collections.abc
import logging
import math
import numbers
import operator
import os
import re
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.client import commands, distributed, runtime
from watchdog.client.checkpoint import FORMAT, CheckpointStore
from watchdog.client.link import MAX_HEARTBEAT_S, MIN_HEARTBEAT_S, Link
from watchdog.control.protocol import (
    COMMANDS,
    MAX_ERROR_CHARS,
    MAX_SOCKET_PATH_BYTES,
    ProtocolError,
    opt_text,
)

log = logging.getLogger("watchdog.client")

DEFAULT_SOCKET = "/run/gpu-watchdog/watchdog.sock"
RESTART_EXIT_CODE = 75
"""Exit code of ``checkpoint_and_restart`` (EX_TEMPFAIL): non-zero, so torchrun restarts."""

_BACKGROUND = frozenset({"dump_stacks", "restart_group"})
"""Commands answered on the background thread: they must work while training is stuck."""

CheckpointFn = Callable[[int], Any]
ResumeFn = Callable[[], "int | None"]

MAX_INTEGER = (1 << 63) - 1
"""The largest integer the protocol carries (docs/protocol.md): the daemon refuses more."""
MAX_RESTART_WAIT_S = 86400.0


@dataclass(frozen=True, slots=True)
class Command:
    """One command from the daemon, waiting for the training thread."""

    id: int
    command: str
    args: dict[str, Any]
    generation: int
    received: float

    @property
    def at_step(self) -> int | None:
        """Run no earlier than this step (all ranks of a job checkpoint at the same step)."""
        value = self.args.get("at_step")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class Deferred:
    """A checkpoint that completes after the callback returns (Hugging Face saves later).

    A checkpoint function returns one; whoever finishes the save calls
    ``resolve(details)`` or ``fail(error)`` on the training thread, and the
    result (with the whole duration) goes to the daemon then.
    """

    def __init__(self) -> None:
        self._finish: Callable[[dict[str, Any], str], None] | None = None
        self.done = False

    def resolve(self, details: dict[str, Any] | None = None) -> None:
        """The save finished; ``details`` (a dict, JSON-ready) go into the result.

        Raises:
            TypeError: ``details`` is neither a dict nor None (nothing is reported then,
                and the save can still be resolved or failed).
        """
        if details is not None and not isinstance(details, collections.abc.Mapping):
            raise TypeError(
                f"Deferred.resolve(details): details must be a dict or None, got {details!r:.64}"
            )
        self._complete(dict(details or {}), "")

    def fail(self, error: BaseException | str = "failed") -> None:
        """The save failed, with an exception or a message; training goes on.

        Raises:
            TypeError: ``error`` is neither an exception nor a string (nothing is reported).
        """
        if isinstance(error, BaseException):
            text = _failure_text(error)
        elif isinstance(error, str):
            text = error or "failed"
        else:
            raise TypeError(
                f"Deferred.fail(error): error must be an exception or a string, got {error!r:.64}"
            )
        self._complete({}, text)

    def _complete(self, details: dict[str, Any], error: str) -> None:
        if self.done:
            return
        self.done = True
        if self._finish is not None:
            self._finish(details, error)


RESTART_MODES = ("raise", "os_exit", "exec")
"""How ``checkpoint_and_restart`` ends the process once its checkpoint is committed:
``raise`` RestartRequested (a SystemExit with the restart exit code) from ``step()``;
``os_exit`` at once with that code; ``exec`` the same command line again in place."""


class GrowthPlan:
    """A growth planned with ``Watchdog.expect_growth``; as a context manager, ends it on exit."""

    def __init__(self, owner: Watchdog, plan: tuple[float, int | None]) -> None:
        self._owner = owner
        self._plan = plan

    def end(self) -> None:
        """End this plan now (a later plan of the same process is left alone)."""
        if self._owner._growth is self._plan:
            self._owner.end_growth()

    def __enter__(self) -> GrowthPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class RestartRequested(SystemExit):
    """Raised from ``step()`` by ``checkpoint_and_restart`` after the checkpoint is committed."""


class Watchdog:
    """A training process's connection to the gpu-watchdog daemon. Create with ``attach()``.

    Every option is checked here, and a bad one raises at once, naming the option or
    the environment variable it came from (see ``attach``).
    """

    def __init__(
        self,
        *,
        model: Any = None,
        optimizer: Any = None,
        job: str | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint: CheckpointFn | None = None,
        resume: ResumeFn | None = None,
        keep_checkpoints: int = 2,
        device: Any = None,  # a string, an int or a torch.device (torch is never imported)
        snapshot_dir: str | os.PathLike[str] | None = None,
        snapshot_max_entries: int = 100_000,
        snapshot_min_free_bytes: int = 1 << 30,
        restart_exit_code: int = RESTART_EXIT_CODE,
        restart_exit: str | None = None,
        restart_wait_s: float = 120.0,
        heartbeat_s: float | None = None,
        rank: int | None = None,
        local_rank: int | None = None,
        world_size: int | None = None,
        connect: bool = True,
    ) -> None:
        # Every check comes before anything starts: a bad option leaves nothing behind.
        self.restart_exit = _restart_mode(restart_exit)
        self.restart_exit_code = _integer("restart_exit_code", restart_exit_code, 1, 255)
        self.restart_wait_s = _seconds("restart_wait_s", restart_wait_s, 0.0, MAX_RESTART_WAIT_S)
        if heartbeat_s is not None:
            heartbeat_s = _seconds("heartbeat_s", heartbeat_s, MIN_HEARTBEAT_S, MAX_HEARTBEAT_S)
        self._checkpoint_fn: CheckpointFn | None = _function("checkpoint", checkpoint)
        self._resume_fn: ResumeFn | None = _function("resume", resume)
        self._device = _device_name(device)
        self.job = _job(job)
        self.ranks = _ranks(rank=rank, local_rank=local_rank, world_size=world_size)
        self.socket_path = _socket_path(socket_path)
        self.store = CheckpointStore(
            _directory(
                "checkpoint_dir", checkpoint_dir, "GPU_WATCHDOG_CHECKPOINT_DIR", "checkpoints"
            ),
            keep=_integer("keep_checkpoints", keep_checkpoints, 1),
        )
        self.snapshots = commands.SnapshotTaker(
            _directory("snapshot_dir", snapshot_dir, "GPU_WATCHDOG_SNAPSHOT_DIR", ""),
            _integer("snapshot_max_entries", snapshot_max_entries, 1),
            _integer("snapshot_min_free_bytes", snapshot_min_free_bytes, 0),
        )
        self.step_count = 0
        self._pending = False
        self.model = model
        self.optimizer = optimizer
        self._main_device = _current_cuda_device()
        self._growth: tuple[float, int | None] | None = None
        """The growth this process planned: (until, on the monotonic clock; up to bytes)."""
        self._inbox: collections.deque[Command] = collections.deque()
        self._deferred: list[Command] = []
        self.closed = False
        self.link = Link(
            self.socket_path,
            self._registration,
            self._report,
            self._deliver,
            heartbeat_s=heartbeat_s,
        )
        if connect:
            self.link.start()

    # --- the hot path -----------------------------------------------------------------------

    def step(self, step: int | None = None) -> None:
        """The safe point: count a step and run any command the daemon queued.

        Raises:
            TypeError: ``step`` is not an integer (numpy's and tensors' integers are).
            ValueError: ``step`` is negative or not below 2**63 (the daemon would refuse
                every report).
        """
        if step is None:
            self.step_count += 1
        elif step.__class__ is int and 0 <= step <= MAX_INTEGER:  # no call on the fast path
            self.step_count = step
        else:
            self.step_count = _step_number(step)
        if self._pending:
            self._run_pending()

    # --- public helpers ---------------------------------------------------------------------

    @property
    def device(self) -> str:
        """``cuda:N`` or ``cpu``: the given device, else the model's, else CUDA's current one."""
        if self._device:
            return self._device
        if self.model is not None:
            try:
                return str(next(iter(self.model.parameters())).device)
            except (StopIteration, AttributeError, TypeError):
                pass
        if self._main_device is None:
            self._main_device = _current_cuda_device()
        return self._main_device or "cpu"

    @property
    def rank(self) -> int | None:
        """Global rank from the launcher's environment, None when not distributed."""
        return self.ranks["rank"]

    def expect_growth(self, for_s: float, up_to_bytes: int | None = None) -> GrowthPlan:
        """Say that this process's GPU memory grows on purpose for the next ``for_s`` seconds.

        A model loaded into a running server, a cache filled through the first
        epoch, a batch or capacity schedule: growth like this climbs as a leak
        does until it stops, and only the job knows it will stop. While the plan
        lasts the daemon raises no new leak on this process or its GPU (another
        process's own leak still is, and near-OOM always is); when it ends, the
        memory is judged afresh from where it stands. With ``up_to_bytes`` (this
        process's GPU memory as ``nvidia-smi`` shows it, or its reserved memory
        where the driver hides that), growing past it ends the plan at once and
        the whole climb is judged. Plans of more than 6 hours are cut to 6 hours.

        Use it as a call, or as a context manager that ends the plan on exit::

            with wd.expect_growth(600, up_to_bytes=30 << 30):
                model_b = load_second_model()

        Raises:
            ValueError: ``for_s`` not a positive, finite number (numpy's too), or
                ``up_to_bytes`` not a positive integer below 2**63.
        """
        seconds = _finite(for_s)
        if seconds is None or seconds <= 0:
            raise ValueError(f"for_s must be a positive number of seconds, got {for_s!r:.64}")
        if up_to_bytes is not None:
            if (
                isinstance(up_to_bytes, bool)
                or not isinstance(up_to_bytes, numbers.Integral)
                or not 0 < up_to_bytes <= MAX_INTEGER
            ):
                raise ValueError(
                    f"up_to_bytes must be a positive integer below 2**63, got {up_to_bytes!r:.64}"
                )
            up_to_bytes = int(up_to_bytes)
        plan = self._growth = (time.monotonic() + seconds, up_to_bytes)
        self.link.report_soon()
        return GrowthPlan(self, plan)

    def end_growth(self) -> None:
        """End a planned growth before its time (``expect_growth``)."""
        if self._growth is not None:
            self._growth = None
            self.link.report_soon()

    def save_checkpoint(self) -> dict[str, Any] | Deferred:
        """Checkpoint now (the user's function, else the default one); return the details.

        A user function may return a ``Deferred`` that it resolves later.
        """
        if self._checkpoint_fn is not None:
            outcome = self._checkpoint_fn(self.step_count)
            if isinstance(outcome, Deferred):
                return outcome
            if isinstance(outcome, dict):
                return {"step": self.step_count, **_jsonable(outcome)}
            return {"step": self.step_count, "result": _jsonable(outcome)}
        if self.model is None and self.optimizer is None:
            raise commands.CommandError(
                "no checkpoint function: pass checkpoint= or model=/optimizer= to attach()"
            )
        if (self.ranks["world_size"] or 1) > 1 and self.rank not in (None, 0):
            return {"step": self.step_count, "skipped": "rank 0 writes the checkpoint"}
        state: dict[str, Any] = {"format": FORMAT, "step": self.step_count}
        if self.model is not None:
            state["model"] = self.model.state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        path, size = self.store.save(state, self.step_count)
        return {"step": self.step_count, "path": str(path), "bytes": size}

    def resume(self) -> int | None:
        """Load the newest complete checkpoint into the model and optimizer; return its step.

        Returns None (and changes nothing) when there is no checkpoint yet.
        """
        if self._resume_fn is not None:
            step = self._resume_fn()
        else:
            found = self.store.load_latest()
            if found is None:
                return None
            path, state = found
            if self.model is not None and "model" in state:
                self.model.load_state_dict(state["model"])
            if self.optimizer is not None and "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
            step = int(state.get("step", 0))
            log.info("gpu-watchdog: resumed from %s (step %d)", path, step)
        if step is not None:
            self.step_count = int(step)
        return step

    def close(self) -> None:
        """Disconnect; ``step()`` stays safe to call and does nothing more."""
        self.closed = True
        self._pending = False
        self.link.stop()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- background-thread side -------------------------------------------------------------

    def _registration(self) -> dict[str, Any]:
        device = self.device
        return {
            "pid": os.getpid(),
            "job": self.job,
            **self.ranks,
            "device": device,
            "device_uuid": runtime.device_uuid(device),
            "hostname": runtime.hostname(),
            "commands": list(COMMANDS),
        }

    def _report(self) -> dict[str, Any]:
        device = self.device  # may change after registration (model moved to the GPU)
        return {
            "step": self.step_count,
            **runtime.allocator_figures(device),
            "rss_bytes": runtime.rss_bytes(),
            "device": device,
            "device_uuid": runtime.device_uuid(device),
            **self._planned(),
        }

    def _planned(self) -> dict[str, Any]:
        growth = self._growth
        if growth is None:
            return {}
        left = growth[0] - time.monotonic()
        if left <= 0:
            self._growth = None
            return {}
        return {"growth_planned_s": round(left, 3), "growth_up_to_bytes": growth[1]}

    def _deliver(self, message: dict[str, Any], generation: int) -> None:
        """Called on the background thread for every message the daemon sends."""
        if message.get("type") != "command" or self.closed:
            return
        raw_args = message.get("args")
        args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
        raw_id = message.get("id")
        command = Command(
            raw_id if isinstance(raw_id, int) else -1,
            str(message.get("command")),
            args,
            generation,
            time.monotonic(),
        )
        if command.command in _BACKGROUND:  # answered here: works while training is stuck
            self._execute(command)
            return
        self._inbox.append(command)
        self._pending = True

    # --- training-thread side ---------------------------------------------------------------

    def _run_pending(self) -> None:
        self._pending = False
        while self._inbox:
            self._deferred.append(self._inbox.popleft())
        due = [c for c in self._deferred if c.at_step is None or self.step_count >= c.at_step]
        if due:
            self._deferred = [c for c in self._deferred if c not in due]
        if self._deferred:
            self._pending = True
        for command in due:
            self._execute(command)

    def _execute(self, command: Command) -> None:
        start = time.perf_counter()
        try:
            outcome = self._perform(command)
        except Exception as exc:
            error = _failure_text(exc)
            log.warning(
                "gpu-watchdog: command %s failed: %s",
                command.command,
                error,
                exc_info=not isinstance(exc, commands.CommandError),
            )
            self._complete(command, start, {}, error)
            return
        if isinstance(outcome, Deferred):
            outcome._finish = lambda details, error: self._complete(command, start, details, error)
            return
        self._complete(command, start, outcome, "")

    def _complete(
        self, command: Command, start: float, details: dict[str, Any], error: str
    ) -> None:
        if command.command == "checkpoint_and_restart" and not error:
            details = {**details, "exit_code": self.restart_exit_code}
        details = _jsonable(details)  # a Deferred's details come straight from the user
        self.link.post(
            {
                "type": "result",
                "id": command.id,
                "ok": not error,
                "error": error[:MAX_ERROR_CHARS],
                "duration_s": round(time.perf_counter() - start, 6),
                "details": details,
            },
            command.generation,
        )
        if not error and command.command == "checkpoint_and_restart":
            self._exit_for_restart(details)
        if not error and command.command == "restart_group":
            self._exit_for_group_restart()

    def _perform(self, command: Command) -> dict[str, Any] | Deferred:
        name = command.command
        if name == "dump_stacks":
            return commands.dump_stacks()
        if name == "empty_cache":
            return commands.empty_cache(self.device)
        if name == "dump_snapshot":
            directory = command.args.get("dir")
            return self.snapshots(
                self.device,
                commands.snapshot_name(self.job, self.rank, self.step_count),
                directory if isinstance(directory, str) else None,
            )
        if name in ("checkpoint", "checkpoint_and_restart"):
            saved = self.save_checkpoint()
            # The default checkpoint skipped this rank: rank 0 writes it, into our store. A
            # function of the user's that skips writes where only it knows.
            if (
                name == "checkpoint_and_restart"
                and self._checkpoint_fn is None
                and isinstance(saved, dict)
                and "skipped" in saved
            ):
                saved = self._rank0_checkpoint(saved)
            return saved
        if name == "restart_group":
            refusal = commands.group_restart_refusal(
                os.environ, self.step_count, os.getpid(), command.args
            )
            if refusal:
                raise commands.CommandError(refusal)
            return {"step": self.step_count, "exit_code": self.restart_exit_code}
        raise commands.CommandError(f"unknown command {name!r}")

    def _exit_for_group_restart(self) -> None:
        """Exit with the restart code once the result is sent, whatever the training thread does.

        The training thread is most likely blocked in a collective that will never
        complete, so neither an exception nor a checkpoint can reach it: the process
        ends from a helper thread (this one serves the socket and must send the result).
        torchrun sees a failed worker, stops the others and starts the group again.
        """

        def leave() -> None:
            self.link.wait_flushed(5.0)
            self.link.farewell = {"reason": "restart_group"}
            log.warning(
                "gpu-watchdog: the daemon found this job stalled; exiting with code %d at step "
                "%d so that torchrun restarts the group",
                self.restart_exit_code,
                self.step_count,
            )
            self.close()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.restart_exit_code)

        threading.Thread(target=leave, name="watchdog-group-restart", daemon=True).start()

    def _exit_for_restart(self, details: dict[str, Any]) -> None:
        self.link.wait_flushed(5.0)
        log.warning(
            "gpu-watchdog: checkpoint committed at step %d; exiting with code %d "
            "so the launcher restarts the job",
            self.step_count,
            self.restart_exit_code,
        )
        self.link.farewell = {"reason": "restart"}
        self.close()
        if self.restart_exit == "exec":
            _exec_self()
        on_main = threading.current_thread() is threading.main_thread()
        if self.restart_exit == "raise" and not on_main:
            # A SystemExit would end this thread alone, and the process would later exit
            # 0: the launcher would never restart it, though the daemon was told it would.
            log.warning(
                "gpu-watchdog: step() runs on thread %r, not the main thread, where "
                "RestartRequested would end only that thread: exiting with os._exit(%d)",
                threading.current_thread().name,
                self.restart_exit_code,
            )
        if self.restart_exit == "os_exit" or not on_main:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.restart_exit_code)
        # SystemExit runs interpreter finalization, where a gloo worker thread that has not
        # yet dropped its last collective aborts the process (SIGABRT instead of our code)
        distributed.register_exit_wait()
        raise RestartRequested(self.restart_exit_code)

    def _rank0_checkpoint(self, details: dict[str, Any]) -> dict[str, Any]:
        """A rank > 0 restarts only once rank 0 has committed this step's checkpoint.

        Leaving first would let the launcher kill rank 0 mid-write; leaving without it
        (rank 0 never got the command) would restart the job from its last checkpoint.
        """
        path = self.store.path_for(self.step_count)
        deadline = time.monotonic() + self.restart_wait_s
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not path.exists():
            raise commands.CommandError(
                f"rank 0 committed no checkpoint of step {self.step_count} within "
                f"{self.restart_wait_s:g} s ({path}): not restarting. Send "
                f"checkpoint_and_restart to the job ({self.job}), not to one rank"
            )
        return {**details, "path": str(path)}


def _exec_self() -> None:
    """Replace this process with a fresh run of its own command line (same pid).

    The new image starts with no CUDA context, so every byte of GPU memory the
    old one held is freed; it resumes from the checkpoint just committed.
    """
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.warning("gpu-watchdog: re-executing %s", " ".join(argv))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _current_cuda_device() -> str | None:
    torch = runtime.cuda_ready()
    if torch is None:
        return None
    try:
        return f"cuda:{torch.cuda.current_device()}"
    except Exception:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # strict JSON has no NaN or inf; the daemon rejects them
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


_active: weakref.WeakSet[Watchdog] = weakref.WeakSet()
_active_lock = threading.Lock()


def _detach_at_exit() -> None:
    """At interpreter exit, say goodbye to the daemon, with the exception that ends the program.

    The daemon tells a rank that left on purpose from one that died: a rank killed
    (SIGKILL, the OOM killer) sends nothing, and one that dies of an uncaught
    exception (a CUDA out-of-memory error) names it, so the daemon can report the
    other ranks as waiting on a dead peer at once.
    """
    error = _dying_of()
    for handle in list(_active):
        if not handle.closed:
            handle.link.farewell = (
                {"reason": "error", "error": error} if error else {"reason": "exit"}
            )
            handle.close()


def _failure_text(exc: BaseException) -> str:
    """What went wrong, leading with the OS error behind it where there is one.

    torch.save on a full disk raises ``RuntimeError: [enforce fail at
    inline_container.cc...] unexpected pos``; the ``OSError`` that says "No space
    left on device" is only its context.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):  # it is the OS error: what it was raised during is context
        return text
    seen = {id(exc)}
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        if isinstance(inner, OSError):
            return f"{type(inner).__name__}: {inner} ({text})"
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    return text


def _dying_of() -> str:
    """The uncaught exception the interpreter is exiting with ("" if none)."""
    value = getattr(sys, "last_value", None)  # set when an exception reached the top level
    if value is None or isinstance(value, SystemExit):
        return ""
    return f"{type(value).__name__}: {value}"[:1000]


def _forget_in_child() -> None:
    # A forked child (DataLoader worker) has no background thread: its copies go quiet,
    # and let go of the parent's connection so that it ends when the parent does.
    for handle in list(_active):
        handle.closed = True
        handle._pending = False
        handle.link.forget_in_child()


os.register_at_fork(after_in_child=_forget_in_child)


# --- argument checks: each names the option, or the environment variable, at fault -----------


def _integer(name: str, value: object, minimum: int, maximum: int = MAX_INTEGER) -> int:
    """``value`` as an int (numpy's too, never a bool) from ``minimum`` to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r:.64}")
    number = int(value)
    if not minimum <= number <= maximum:
        bounds = "2**63 - 1" if maximum == MAX_INTEGER else str(maximum)
        raise ValueError(f"{name} must be an integer from {minimum} to {bounds}, got {number}")
    return number


def _finite(value: object) -> float | None:
    """``value`` as a finite float (numpy's too, never a bool); None if it is none."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _seconds(name: str, value: object, minimum: float, maximum: float) -> float:
    """``value`` as a number of seconds from ``minimum`` to ``maximum``."""
    number = _finite(value)
    if number is None or not minimum <= number <= maximum:
        raise ValueError(
            f"{name} must be a number of seconds from {minimum:g} to {maximum:g}, got {value!r:.64}"
        )
    return number


def _step_number(step: Any) -> int:
    """A step that is not a plain int in range: an integer of another kind, or an error."""
    # A numpy or tensor integer would make every report unencodable, silently.
    try:
        number = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, got {step!r:.64}") from None
    if not 0 <= number <= MAX_INTEGER:
        raise ValueError(f"step must be from 0 to 2**63 - 1, got {number}")
    return number


def _restart_mode(given: object) -> str:
    """``restart_exit``, else ``GPU_WATCHDOG_RESTART_MODE``, else "raise"."""
    value, name = given, "restart_exit"
    if not given:
        value = os.environ.get("GPU_WATCHDOG_RESTART_MODE") or "raise"
        name = "the environment variable GPU_WATCHDOG_RESTART_MODE"
    if not isinstance(value, str) or value not in RESTART_MODES:
        raise ValueError(f"{name} must be one of {', '.join(RESTART_MODES)}, got {value!r:.64}")
    return value


def _function(name: str, value: Any) -> Any:
    """A callback option: None or something to call."""
    if value is not None and not callable(value):
        hint = " (a directory goes in checkpoint_dir=)" if name == "checkpoint" else ""
        raise TypeError(f"{name} must be a function or None, got {value!r:.64}{hint}")
    return value


_DEVICE = re.compile(r"[a-z_]{1,32}(:[0-9]{1,6})?\Z")
"""``cuda:0``, ``cuda``, ``cpu``: torch's spelling, in ASCII."""


def _device_name(device: object) -> str | None:
    """``device`` as torch spells it: from a torch.device, a CUDA index or a string."""
    if device is None:
        return None
    if isinstance(device, numbers.Integral) and not isinstance(device, bool):
        if int(device) < 0:
            raise ValueError(f"device must be a CUDA index of at least 0, got {device!r}")
        return f"cuda:{int(device)}"
    if isinstance(device, str):
        text = device
    elif isinstance(getattr(device, "type", None), str) and hasattr(device, "index"):
        text = str(device)  # a torch.device: "cuda:0", "cuda", "cpu"
    else:
        raise TypeError(
            f"device must be a torch.device, a CUDA index or a string like 'cuda:0', "
            f"got {device!r:.64}"
        )
    if not _DEVICE.match(text):
        raise ValueError(f"device must be spelled like 'cuda:0' or 'cpu', got {text!r:.64}")
    return text


def _job(explicit: str | None) -> str:
    job, origin = runtime.job_origin(explicit)
    try:
        # The daemon drops a registration whose job it cannot print on one line: said
        # here, once, rather than as a link that never comes up.
        opt_text({"job": job}, "job", one_line=True)
    except ProtocolError as exc:
        where = "" if origin == "job" else f" (job from {origin}; or pass job=)"
        raise ValueError(f"watchdog: {exc}{where}") from None
    return job


def _ranks(**given: int | None) -> dict[str, int | None]:
    """The launcher's ranks, overridden by those given; the daemon refuses bad ones."""
    ranks = runtime.ranks()
    for name, value in given.items():
        if value is not None:
            ranks[name] = _integer(name, value, 1 if name == "world_size" else 0)
    rank, world_size = ranks["rank"], ranks["world_size"]
    explicit = given["rank"] is not None or given["world_size"] is not None
    if explicit and rank is not None and world_size is not None and rank >= world_size:
        raise ValueError(f"rank must be less than world_size, got rank {rank} of {world_size}")
    return ranks


def _path_text(name: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {value!r:.64}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str path, not bytes: {text!r:.64}")
    return text


def _socket_path(given: object) -> str:
    """``socket_path``, else ``GPU_WATCHDOG_SOCKET``, else the system's socket."""
    if given is None or given == "":
        path = os.environ.get("GPU_WATCHDOG_SOCKET") or DEFAULT_SOCKET
        name = "the environment variable GPU_WATCHDOG_SOCKET"
    else:
        path, name = _path_text("socket_path", given), "socket_path"
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        # No daemon can listen there: connect() would fail in the background for ever.
        raise ValueError(
            f"{name} is {size} bytes long, longer than a Unix socket's path may be "
            f"({MAX_SOCKET_PATH_BYTES}): {path[:48]!r}..."
        )
    return path


def _directory(name: str, given: object, variable: str, default: str) -> Path:
    """A directory option (else its variable, else ``default``, "" for the temp directory)
    that is not a file."""
    if given is None or given == "":
        text = os.environ.get(variable) or default or tempfile.gettempdir()
        origin = f"{name} (from {variable})" if os.environ.get(variable) else name
    else:
        text, origin = _path_text(name, given), name
    # os.path swallows every OSError: an unreadable path is the command's error, later
    if os.path.exists(text) and not os.path.isdir(text):
        raise ValueError(f"{origin} {text!r} is a file, not a directory")
    return Path(text)


def attach(model: Any = None, optimizer: Any = None, **options: Any) -> Watchdog:
    """Register this process with the local gpu-watchdog daemon and return the handle.

    Call ``wd.step()`` once per training step. Never raises because of the
    daemon: if it is absent, this warns once and keeps trying in the
    background. A second ``attach()`` in the same process closes the first
    handle (one registration per process), once the new one's options are
    found good.

    Args:
        model: Saved and restored by the default checkpoint/resume.
        optimizer: Saved and restored by the default checkpoint/resume.
        **options: See ``Watchdog`` and docs/integrations.md: job, socket_path,
            checkpoint_dir, checkpoint, resume, keep_checkpoints, device,
            snapshot_dir, snapshot_max_entries, snapshot_min_free_bytes,
            restart_exit_code (1 to 255), restart_exit ("raise", "os_exit" or
            "exec"; default from GPU_WATCHDOG_RESTART_MODE, else "raise"),
            restart_wait_s (0 to 86400), heartbeat_s (0.05 to 3600), rank,
            local_rank, world_size.

    Raises:
        TypeError: an option of the wrong kind (a path, device or callback).
        ValueError: a number out of range or not a number, a directory that is a
            file, or a misconfigured environment variable (RANK, WORLD_SIZE,
            LOCAL_RANK, TORCHELASTIC_RESTART_COUNT, SLURM_*, TORCHELASTIC_RUN_ID,
            GPU_WATCHDOG_*); the message names the option or the variable.
    """
    connect = options.pop("connect", True)
    # Checked before the previous handle is closed: a typo must not detach a running job.
    handle = Watchdog(model=model, optimizer=optimizer, connect=False, **options)
    with _active_lock:
        if not _active:
            atexit.unregister(_detach_at_exit)  # at most once, however often attach() runs
            atexit.register(_detach_at_exit)
        for old in list(_active):
            if not old.closed:
                log.info("gpu-watchdog: a new attach() replaces the previous handle")
                old.close()
        _active.add(handle)
        if connect:
            handle.link.start()
    return handle
