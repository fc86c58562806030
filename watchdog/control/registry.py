"""What the daemon knows of each registered training process, and who may command it.

Identity (pid, uid, gid) comes from the kernel (SO_PEERCRED), never from a
message; with the process's start time (read from /proc when it connects) the
pid names one process, not whichever process holds that pid later. Allocator
figures a client cannot read (CPU-only, CUDA not yet initialised) are
``None``, never zero.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from watchdog.control.protocol import (
    MAX_ERROR_CHARS,
    MAX_GROWTH_PLANNED_S,
    ProtocolError,
    opt_float,
    opt_int,
    opt_names,
    opt_text,
)


@dataclass(frozen=True, slots=True)
class PeerCred:
    """The peer of one connection, as the kernel reported it at connect time."""

    pid: int
    uid: int
    gid: int
    started: int | None = None
    """When the peer process started (``watchdog.identity.start_ticks``); None: unknown."""


@dataclass(frozen=True, slots=True)
class AllocatorReport:
    """One heartbeat: the training step and the CUDA caching allocator's figures."""

    step: int | None = None
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    alloc_retries: int | None = None
    ooms: int | None = None
    rss_bytes: int | None = None
    growth_planned_s: float | None = None
    """Seconds the process's memory is still planned to grow (``Watchdog.expect_growth``)."""
    growth_up_to_bytes: int | None = None
    """The GPU memory that planned growth goes up to at most; None: not said."""

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> AllocatorReport:
        """Read a ``report`` message; raise ProtocolError on a malformed field."""
        values: dict[str, Any] = {
            f.name: opt_int(message, f.name)
            for f in dataclasses.fields(cls)
            if f.name != "growth_planned_s"
        }
        planned = opt_float(message, "growth_planned_s")
        if planned is None:
            return cls(**values)
        if planned < 0:
            raise ProtocolError(f"growth_planned_s must be >= 0 or null, got {planned!r}")
        # Not refused: the client library takes any finite plan, and a client dropped for
        # its report would reconnect and send it again. Nothing longer is honoured anyway.
        return cls(**values, growth_planned_s=min(planned, MAX_GROWTH_PLANNED_S))


@dataclass(frozen=True, slots=True)
class Registration:
    """What a client says about itself when it registers (identity aside)."""

    job: str
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    device: str = ""
    device_uuid: str = ""
    hostname: str = ""
    client_version: str = ""
    restart_count: int | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any], peer: PeerCred) -> Registration:
        """Read a ``register`` message from ``peer``.

        Raises:
            ProtocolError: a malformed field, or a pid other than the peer's own
                (a process may register only itself).
        """
        claimed = opt_int(message, "pid")
        if claimed is not None and claimed != peer.pid:
            raise ProtocolError(
                f"pid {claimed} in register does not match the connecting process {peer.pid}"
            )
        job = opt_text(message, "job", one_line=True)
        if not job:
            raise ProtocolError("register needs a non-empty job")
        opt_names(message, "commands")  # checked, not kept: nothing reads it yet
        return cls(
            job=job,
            rank=opt_int(message, "rank"),
            local_rank=opt_int(message, "local_rank"),
            world_size=opt_int(message, "world_size"),
            device=opt_text(message, "device", one_line=True),
            device_uuid=opt_text(message, "device_uuid", one_line=True),
            hostname=opt_text(message, "hostname", one_line=True),
            client_version=opt_text(message, "client_version", 64, one_line=True),
            restart_count=opt_int(message, "restart_count"),
        )


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A snapshot of one registered client, as ``gpu-watchdog clients`` and metrics show it."""

    pid: int
    uid: int
    gid: int
    registration: Registration
    registered_at: float
    last_seen: float
    report: AllocatorReport = field(default_factory=AllocatorReport)
    heartbeat_age_s: float = 0.0
    commands: dict[str, int] = field(default_factory=dict)
    """Commands sent to this client, by ``"<command>:<result>"``."""
    started: int | None = None
    """When the process started: with ``pid``, which process this is (None: unknown)."""

    @property
    def job(self) -> str:
        """The job id the client registered with."""
        return self.registration.job

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the ``clients`` reply)."""
        return {
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            **dataclasses.asdict(self.registration),
            **dataclasses.asdict(self.report),
            "heartbeat_age_s": round(self.heartbeat_age_s, 3),
            "commands": dict(self.commands),
        }


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one client answered to one command (or why it did not)."""

    pid: int
    job: str
    rank: int | None
    command: str
    ok: bool
    duration_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def outcome(self) -> str:
        """``ok`` or ``error``: the metric label."""
        return "ok" if self.ok else "error"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the ``send`` reply)."""
        return dataclasses.asdict(self)


def result_from_message(message: dict[str, Any], client: ClientInfo, command: str) -> CommandResult:
    """Read a ``result`` message from ``client``; raise ProtocolError if malformed."""
    ok = message.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("result needs a boolean 'ok'")
    details = message.get("details") or {}
    if not isinstance(details, dict):
        raise ProtocolError("result 'details' must be an object")
    return CommandResult(
        pid=client.pid,
        job=client.job,
        rank=client.registration.rank,
        command=command,
        ok=ok,
        duration_s=opt_float(message, "duration_s"),
        details=details,
        error=opt_text(message, "error", MAX_ERROR_CHARS),
    )


def may_command(requester_uid: int, target_uid: int) -> bool:
    """True when ``requester_uid`` may send commands to a process owned by ``target_uid``."""
    return requester_uid in (0, target_uid)
