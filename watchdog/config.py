"""The daemon's configuration: one TOML file, then the environment, then the command line.

Every setting has a default, a type and (where it matters) a range, declared
once on the section dataclasses below; loading, validation, environment
overrides and the documentation test all read those declarations. Everything
is validated before the daemon touches NVML or binds a socket.

Environment variables are named ``GPU_WATCHDOG_<SECTION>_<KEY>`` in upper
case, for example ``GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S=0.5``; a few
short aliases exist (``ALIASES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from watchdog.errors import UsageError
from watchdog.policy.rules import (
    DEFAULT_LADDER,
    LadderStep,
    Schedule,
    parse_ladder,
    parse_schedules,
    render_ladder,
    render_schedules,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/gpu-watchdog/config.toml")
ENV_PREFIX = "GPU_WATCHDOG_"
# Variables that are not settings but are read by the same programs: the config file's
# path, and the client library's own (watchdog/client/handle.py), which a training
# job's environment carries into any gpu-watchdog command run from it.
ENV_NOT_SETTINGS = frozenset(
    {
        "GPU_WATCHDOG_CONFIG",
        "GPU_WATCHDOG_CHECKPOINT_DIR",
        "GPU_WATCHDOG_SNAPSHOT_DIR",
        "GPU_WATCHDOG_RESTART_MODE",
    }
)
# Short names for settings that clients and daemon share.
ALIASES = {"GPU_WATCHDOG_SOCKET": ("control", "socket_path")}

T = TypeVar("T")

INT_MAX = (1 << 63) - 1
"""The largest integer setting: TOML's integers are 64-bit, and so are the programs reading them."""
ECHO_CHARS = 40
"""How much of a bad value an error message repeats: one line, even for a pasted megabyte."""
_ENV_INT = re.compile(r"[+-]?[0-9]+")
_ENV_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# RFC 1123 host name labels: letters, digits and inner hyphens, at most 63 characters.
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class ConfigError(UsageError):
    """A configuration that cannot be used; the message is one line naming the key and source."""


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[Any], Any] | None = None,
    render: Callable[[str, Any], list[str]] | None = None,
) -> Any:
    """Declare one setting: its default, a one-line help text and its constraints.

    Scalars (bool, int, float, str) need nothing more. A structured setting
    (a list of tables) gives ``parse``, which turns the TOML value into the
    field's value or raises ValueError, and ``render``, which writes the
    default back as TOML lines for the example config; it cannot be set from
    the environment.
    """
    return field(
        default=default,
        metadata={
            "help": help,
            "minimum": minimum,
            "maximum": maximum,
            "choices": choices,
            "check": check,
            "parse": parse,
            "render": render,
        },
    )


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` as an error message repeats it: its repr, cut after ``limit`` characters."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_host_name(host: str) -> bool:
    """True for a syntactically valid RFC 1123 host name; nothing is resolved."""
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    # A numeric last label is a mistyped address (127.0.0.256), which a resolver may
    # read as a number or look up: neither is what was meant (RFC 3696, section 2).
    return not labels[-1].isdigit()


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[V6]:PORT`` for IPv6); raise ValueError if malformed.

    HOST must be an IP address or a valid host name (RFC 1123); it is not resolved here.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {shorten(value)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in [], got {shorten(host)}") from None
    elif not _is_ip_address(host) and not _is_host_name(host):
        raise ValueError(f"host must be an IP address or a host name, got {shorten(host)}")
    # ASCII digits only: str.isdigit() also takes "٨٠" and "²".
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError(f"port must be 0-65535, got {shorten(port_text)}")
    return host, int(port_text)


def _check_listen(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_no_nul(value: str) -> str | None:
    # The operating system ends a name at a NUL byte: grp, open() and bind() refuse it.
    return "must not contain a NUL byte" if "\0" in value else None


def _check_path(value: str) -> str | None:
    # An empty path is the current directory to every call that takes it: never meant.
    return "must not be empty" if not value else _check_no_nul(value)


@dataclass(frozen=True)
class DaemonSettings:
    """How the daemon logs and where it keeps state."""

    log_level: str = setting(
        "info", "Lowest level logged.", choices=("debug", "info", "warning", "error")
    )
    log_format: str = setting(
        "auto",
        "json (for journald), console (readable), or auto: console on a terminal, else json.",
        choices=("auto", "json", "console"),
    )
    state_dir: str = setting(
        "/var/lib/gpu-watchdog",
        "Directory for the audit journal and other state.",
        check=_check_path,
    )


@dataclass(frozen=True)
class BasicAuthUser:
    """One user allowed on /metrics: a name and a bcrypt hash of the password."""

    user: str
    password_hash: str


# The bcrypt hashes that Go's x/crypto/bcrypt, htpasswd -B and Python's bcrypt write
# ($2a$, $2b$, $2y$): the format exporter-toolkit's web config takes. The cost is capped
# at 16 (seconds per check): every new password tried costs one check, and a higher
# cost would let a few wrong guesses occupy the endpoint for minutes.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|1[0-6])\$[./A-Za-z0-9]{53}")


def parse_basic_auth(value: Any) -> tuple[BasicAuthUser, ...]:
    """``[[metrics.basic_auth]]`` tables as users; raises ValueError naming the entry.

    Only the format of each hash is checked here, so that any program can load the
    configuration without the optional ``bcrypt`` package.
    """
    if not isinstance(value, list):
        raise ValueError("must be a list of tables ([[metrics.basic_auth]])")
    users: list[BasicAuthUser] = []
    for number, entry in enumerate(value, 1):
        if not isinstance(entry, dict) or set(entry) != {"user", "password_hash"}:
            raise ValueError(f"entry {number}: needs exactly the keys user and password_hash")
        user, hashed = entry["user"], entry["password_hash"]
        # RFC 7617: the user-id of basic auth cannot contain a colon.
        if not isinstance(user, str) or not user or ":" in user:
            raise ValueError(f"entry {number}: user must be a non-empty string without ':'")
        if any(known.user == user for known in users):
            raise ValueError(f"entry {number}: user {user!r} is listed twice")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            raise ValueError(
                f"entry {number} (user {user!r}): password_hash is not a bcrypt hash "
                "($2b$<cost 04-16>$...); make one with: htpasswd -nBC 12 '' | tr -d ':\\n'"
            )
        users.append(BasicAuthUser(user, hashed))
    return tuple(users)


def render_basic_auth(section: str, users: tuple[BasicAuthUser, ...]) -> list[str]:
    """The users as ``[[metrics.basic_auth]]`` TOML tables; a commented example when none."""
    if not users:
        return [
            f"# [[{section}.basic_auth]]",
            '# user = "prometheus"',
            "# password_hash = \"$2b$12$...\"   # htpasswd -nBC 12 '' | tr -d ':\\n'",
        ]
    from watchdog.config_docs import toml_value  # config_docs imports this module

    lines: list[str] = []
    for item in users:
        lines += [f"[[{section}.basic_auth]]", f"user = {toml_value(item.user)}"]
        lines.append(f"password_hash = {toml_value(item.password_hash)}")
    return lines


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (docs/security.md: TLS and basic auth)."""

    listen: str = setting(
        "127.0.0.1:9723",
        "Address of /metrics and /healthz; loopback by default: exposing it is a choice.",
        check=_check_listen,
    )
    max_concurrent_scrapes: int = setting(
        8, "Scrapes served at once; more wait for a free slot.", minimum=1, maximum=256
    )
    tls_cert_file: str = setting(
        "",
        "PEM certificate (chain) to serve HTTPS with; empty serves plain HTTP.",
        check=_check_no_nul,
    )
    tls_key_file: str = setting(
        "",
        "PEM private key of tls_cert_file, unencrypted and readable by the daemon only.",
        check=_check_no_nul,
    )
    tls_client_ca_file: str = setting(
        "",
        "PEM CA certificates; when set, every client must present a certificate they signed "
        "(mutual TLS, also for /healthz).",
        check=_check_no_nul,
    )
    tls_min_version: str = setting("1.2", "Oldest TLS version accepted.", choices=("1.2", "1.3"))
    basic_auth: tuple[BasicAuthUser, ...] = setting(
        (),
        "Users allowed on /metrics: [[metrics.basic_auth]] tables of user and password_hash "
        "(bcrypt; needs the auth extra). /healthz answers without credentials.",
        parse=parse_basic_auth,
        render=render_basic_auth,
    )


MAX_POLL_INTERVAL_S = 240
"""The longest poll interval of any source: GpuWatchdogStale fires when a source has not
polled for 5 minutes, so a slower one would page about its own schedule."""


@dataclass(frozen=True)
class SourcesSettings:
    """How often each source is polled."""

    device_interval_s: float = setting(
        1.0,
        "Seconds between GPU memory polls (cheap: ~10 µs a call).",
        minimum=0.05,
        maximum=MAX_POLL_INTERVAL_S,
    )
    process_interval_s: float = setting(
        5.0,
        "Seconds between GPU process-list polls (milliseconds, takes the driver lock).",
        minimum=0.1,
        maximum=MAX_POLL_INTERVAL_S,
    )
    host_interval_s: float = setting(
        5.0,
        "Seconds between host-memory polls of GPU processes.",
        minimum=0.1,
        maximum=MAX_POLL_INTERVAL_S,
    )
    stall_after_s: float = setting(
        10.0,
        "A poll running longer than this is reported as stalled.",
        minimum=0.1,
        maximum=3600,
    )
    max_processes: int = setting(
        256,
        "Most GPU processes exported per poll, to bound label cardinality.",
        minimum=1,
        maximum=100_000,
    )
    proc_root: str = setting(
        "/proc", "Where procfs is mounted (a container may mount the host's).", check=_check_path
    )
    health_interval_s: float = setting(
        60.0,
        "Seconds between polls of ECC error counts, retired pages and remapped rows "
        "(they change rarely; several driver calls per GPU).",
        minimum=1,
        maximum=MAX_POLL_INTERVAL_S,
    )
    xid_events: bool = setting(
        True,
        "Watch NVML events (Xid errors, double-bit ECC errors) on a thread of their own "
        "(NVML only).",
    )
    event_wait_s: float = setting(
        1.0,
        "Longest one NVML event wait blocks: how soon the event thread notices shutdown.",
        minimum=0.05,
        maximum=10,
    )
    event_retry_s: float = setting(
        30.0,
        "Seconds before a GPU whose event registration failed (GPU lost) is registered again; "
        "also the first backoff after the event thread failed (doubling up to 5 minutes).",
        minimum=0.1,
        maximum=3600,
    )


@dataclass(frozen=True)
class SimulationSettings:
    """The simulated GPU, used only with ``gpu-watchdog run --simulate``."""

    speed: float = setting(
        1.0, "Trace seconds played per wall-clock second.", minimum=0.001, maximum=1_000_000
    )
    loop: bool = setting(False, "Start the trace again when it ends.")


def _check_octal_mode(value: str) -> str | None:
    try:
        mode = int(value, 8)
    except ValueError:
        return f'must be an octal file mode like "0660", got {value!r}'
    if not 0 <= mode <= 0o777:
        return f"must be a file mode between 0000 and 0777, got {value!r}"
    return None


@dataclass(frozen=True)
class ControlSettings:
    """The control socket that training processes and ``gpu-watchdog clients``/``send`` use."""

    socket_path: str = setting(
        "/run/gpu-watchdog/watchdog.sock",
        "Unix socket of the control channel; its directory is created 0750 if missing.",
        check=_check_path,
    )
    socket_mode: str = setting(
        "0660", "Octal mode of the socket file: who may connect at all.", check=_check_octal_mode
    )
    socket_group: str = setting(
        "", "Group owning the socket file; empty keeps the daemon's.", check=_check_no_nul
    )
    max_clients: int = setting(
        1024,
        "Connections served at once; more are closed at once. The daemon raises its open-file "
        "limit to fit them, or serves fewer where the hard limit is lower.",
        minimum=1,
        maximum=65536,
    )
    max_clients_per_uid: int = setting(
        256, "Connections one user may hold at once.", minimum=1, maximum=65536
    )
    max_message_bytes: int = setting(
        1 << 20,
        "Largest message accepted; a longer frame drops the connection.",
        minimum=4096,
        maximum=16 << 20,
    )
    read_timeout_s: float = setting(
        5.0,
        "A frame not complete this long after it began, or a new connection silent this long, "
        "is dropped.",
        minimum=0.1,
        maximum=3600,
    )
    client_timeout_s: float = setting(
        60.0, "A registered client silent this long is dropped.", minimum=1, maximum=86400
    )
    heartbeat_s: float = setting(
        5.0, "Seconds between client heartbeats, told to each client.", minimum=0.1, maximum=3600
    )
    command_timeout_s: float = setting(
        600.0,
        "Longest wait for a command's result (a checkpoint may take minutes).",
        minimum=1,
        maximum=86400,
    )


@dataclass(frozen=True)
class DetectionSettings:
    """Leak and near-OOM detection (docs/detection.md explains each tunable)."""

    bucket_s: float = setting(
        10.0,
        "Finest time bucket of the floor (minimum) estimate; coarser ones double it.",
        minimum=1,
        maximum=3600,
    )
    max_window_s: float = setting(
        86400.0,
        "Longest stretch of history a trend is judged over.",
        minimum=600,
        maximum=30 * 86400,
    )
    warmup_s: float = setting(
        600.0,
        "History this young after a series starts (or restarts) is not used to judge a leak: "
        "the CUDA context, model load and caching allocator grow there (a fast climb that "
        "would fill the card before the grace ends is still raised if it speeds up, or if "
        "it sets off evenly from a floor the job had settled at).",
        minimum=0,
    )
    leak_min_rise_bytes: int = setting(
        64 << 20, "A leak's floor must have risen at least this much.", minimum=0
    )
    leak_min_rise_ratio: float = setting(
        0.005,
        "... and at least this fraction of the limit.",
        minimum=0,
        maximum=1,
    )
    leak_min_rise_headroom_share: float = setting(
        0.25,
        "... or, where that is less, this share of the headroom left (never under "
        "leak_min_rise_bytes): a slow creep into the last percent of a large card. "
        "0: the limit's fraction always.",
        minimum=0,
        maximum=1,
    )
    leak_extrapolation: float = setting(
        3.0,
        "A leak is raised once its time to OOM is at most this many times the stretch "
        "of history that shows it (for stretches of 2 h and more).",
        minimum=0.5,
        maximum=100,
    )
    leak_extrapolation_short: float = setting(
        2.0,
        "... and this many times for stretches of 30 min or less (in between, linear).",
        minimum=0.5,
        maximum=100,
    )
    leak_confirm_s: float = setting(
        60.0,
        "A leak that only stretches of 30 min or less show is raised once its climb has gone "
        "on for up to this long (at most 17 buckets), where the time to OOM allows (0: at once).",
        minimum=0,
        maximum=3600,
    )
    warmup_settled_climb_reach: float = setting(
        0.5,
        "Inside the warm-up grace, an even climb that sets off from a floor the job had "
        "settled at is raised as a leak once it would fill the card within this share of the "
        "time it has climbed (0: never, left to near_oom; 1: as soon as one that speeds up).",
        minimum=0,
        maximum=1,
    )
    leak_max_time_to_oom_s: float = setting(
        12 * 3600.0,
        "Growth is reported as a leak only once it would run out of memory within this long.",
        minimum=60,
    )
    saturation_ratio: float = setting(
        0.5,
        "Growth whose recent rate is below this fraction of its earlier rate is saturating.",
        minimum=0,
        maximum=1,
    )
    leak_clear_after_s: float = setting(
        600.0,
        "A leak is cleared after its floor has stopped rising this long "
        "(and at least as long as the window that last showed it).",
        minimum=0,
    )
    near_oom_used_ratio: float = setting(
        0.92, "near_oom is raised when used/limit reaches this.", minimum=0.1, maximum=1
    )
    near_oom_clear_ratio: float = setting(
        0.9, "... and cleared when it falls below this.", minimum=0.1, maximum=1
    )
    near_oom_clear_after_s: float = setting(
        300.0, "... once that has held this long (sawtooth peaks do not make it flap).", minimum=0
    )
    near_oom_horizon_s: float = setting(
        900.0, "near_oom is also raised when the predicted time to OOM is under this.", minimum=0
    )
    reset_drop_ratio: float = setting(
        0.25,
        "A fall this fraction below the floor (a job ended or restarted) starts the history anew.",
        minimum=0.01,
        maximum=1,
    )
    reset_drop_min_bytes: int = setting(
        256 << 20, "... but never a fall smaller than this.", minimum=0
    )
    reset_gap_s: float = setting(
        600.0, "A series silent this long starts its history anew.", minimum=1
    )
    forget_after_s: float = setting(
        900.0,
        "A series not seen this long is forgotten and its findings cleared.",
        minimum=1,
    )
    update_min_interval_s: float = setting(
        300.0,
        "Shortest time between two 'updated' events of one finding.",
        minimum=0,
    )
    stall_step_factor: float = setting(
        10.0,
        "A registered process is stalled when its step has not advanced for this many times "
        "its recent step time ...",
        minimum=1,
        maximum=10_000,
    )
    stall_min_s: float = setting(
        300.0,
        "... and for at least this long (evals and checkpoints pause the step count).",
        minimum=0.1,
        maximum=7 * 86400,
    )
    orphan_min_age_s: float = setting(
        120.0,
        "GPU memory must look orphaned (zombie, reparented, unattributed) this long to be "
        "reported: a job tearing down passes through those states.",
        minimum=0,
        maximum=86400,
    )
    orphan_unattributed_min_bytes: int = setting(
        2 << 30,
        "GPU used memory beyond its processes' sum that counts as unattributed (driver and "
        "context overhead stay below; NVML's v1 memory call counts ~1 GiB reserved as used).",
        minimum=0,
    )
    orphan_unattributed: str = setting(
        "auto",
        "Claim unattributed GPU memory: on, off, or auto (only when the daemon sees the "
        "host's pid namespace; in a container NVML may list only that container's processes).",
        choices=("auto", "on", "off"),
    )


@dataclass(frozen=True)
class PolicySettings:
    """What findings and schedules lead to, and the guards against restart loops."""

    dry_run: bool = setting(False, "Log, journal and export what would be done; send nothing.")
    cooldown_s: float = setting(
        900.0, "Least time between two runs of one action on one job.", minimum=0, maximum=7 * 86400
    )
    max_restarts: int = setting(
        3, "Most checkpoint-and-restarts of one job within restart_window_s.", minimum=0
    )
    restart_window_s: float = setting(
        86400.0, "The window max_restarts counts over.", minimum=60, maximum=30 * 86400
    )
    journal_max_bytes: int = setting(
        16 << 20, "The audit journal is rotated at this size.", minimum=4096, maximum=1 << 34
    )
    journal_keep: int = setting(3, "Rotated journal files kept.", minimum=1, maximum=100)
    group_restart: bool = setting(
        False,
        "On a stalled job, make every rank exit with the restart code so torchrun "
        "(--max-restarts > 0) restarts the group from its last checkpoint; counts against "
        "max_restarts.",
    )
    ladder: tuple[LadderStep, ...] = setting(
        DEFAULT_LADDER,
        "The escalation ladder: [[policy.ladder]] tables of finding, cause, action, "
        "under_time_to_oom_s and job/user/gpu matches.",
        parse=parse_ladder,
        render=render_ladder,
    )
    schedule: tuple[Schedule, ...] = setting(
        (),
        "Timed actions: [[policy.schedule]] tables of action, interval_s or cron, jitter_s "
        "and job/user/gpu matches.",
        parse=parse_schedules,
        render=render_schedules,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration, one attribute per TOML table."""

    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sources: SourcesSettings = field(default_factory=SourcesSettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    control: ControlSettings = field(default_factory=ControlSettings)


def sections() -> dict[str, type]:
    """The TOML tables and the dataclass that declares each."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _type_name(kind: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        kind, str(kind)
    )


def _coerce(value: Any, kind: Any) -> Any:
    """Return ``value`` as ``kind`` or raise ValueError; TOML already typed it."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN slips past every range check
                raise ValueError(f"must be a finite number, got {value!r}")
            return float(value)
    elif kind is str and isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            # Undecodable bytes from the environment: no TOML file (check-config --show) can
            # hold them, and no message can print them.
            raise ValueError("must be UTF-8 text") from None
        return value
    raise ValueError(f"must be {_type_name(kind)}, got {type(value).__name__} {shorten(value)}")


def _from_env_text(text: str, kind: Any) -> Any:
    """Parse an environment variable's text as ``kind``."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"must be a boolean (true/false), got {shorten(text)}")
    # ASCII forms only: int() and float() also take "1_000" and the digits of other
    # scripts (Arabic-Indic, Devanagari...), which no config file or shell user means.
    if kind is int:
        if not _ENV_INT.fullmatch(text.strip()):
            raise ValueError(f"must be an integer, got {shorten(text)}")
        sign = "-" if text.strip().startswith("-") else ""
        digits = text.strip().lstrip("+-").lstrip("0") or "0"
        if len(digits) > len(str(INT_MAX)):
            # int() itself refuses more than 4300 digits, with a message about Python.
            raise ValueError(f"must be between {-INT_MAX - 1} and {INT_MAX}, got {shorten(text)}")
        return int(sign + digits)
    if kind is float:
        if not _ENV_FLOAT.fullmatch(text.strip()):
            raise ValueError(f"must be a number, got {shorten(text)}")
        return float(text)
    return text


def _validate(value: Any, spec: dataclasses.Field[Any]) -> Any:
    meta = spec.metadata
    if meta.get("parse"):
        return meta["parse"](value)
    kind = {"bool": bool, "int": int, "float": float, "str": str}[str(spec.type)]
    value = _coerce(value, kind)
    if kind is int and not -INT_MAX - 1 <= value <= INT_MAX:
        raise ValueError(f"must be between {-INT_MAX - 1} and {INT_MAX}, got {shorten(value)}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ValueError(f"must be >= {meta['minimum']}, got {value}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ValueError(f"must be <= {meta['maximum']}, got {value}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"must be one of {', '.join(meta['choices'])}; got {shorten(value)}")
    if meta.get("check"):
        problem = meta["check"](value)
        if problem:
            raise ValueError(problem)
    return value


def _build_section(
    name: str, cls: type[T], values: Mapping[str, Any], origin: Callable[[str], str]
) -> T:
    specs = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(
            f"{origin(unknown[0])}: unknown key {name}.{unknown[0]} "
            f"(known: {', '.join(sorted(specs))})"
        )
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = _validate(value, specs[key])
        except ValueError as exc:
            raise ConfigError(f"{origin(key)}: {name}.{key} {exc}") from None
    return cls(**checked)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        # Non-blocking: opening a FIFO would wait for a writer, hanging check-config and
        # the daemon's start; the mode is checked on the open file, so no race lets one in.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device or a directory
            os.close(fd)
            raise ConfigError(f"{path}: not a regular file")
        with open(fd, "rb") as stream:
            data: dict[str, Any] = tomllib.load(stream)
            return data
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except ValueError:  # int() refuses thousands of digits, and tomllib passes that on
        raise ConfigError(f"{path}: not valid TOML: an integer too long to read") from None


def _env_settings(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """Map (section, key) to (variable, text) for every settings variable in ``env``."""
    known = sections()
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for variable, text in sorted(env.items()):
        if not variable.startswith(ENV_PREFIX) or variable in ENV_NOT_SETTINGS:
            continue
        if variable in ALIASES:
            section, key = ALIASES[variable]
        else:
            rest = variable[len(ENV_PREFIX) :].lower()
            section, _, key = rest.partition("_")
            cls = known.get(section)
            if cls is None or key not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(
                    f"environment: unknown setting variable {variable} "
                    f"(expected {ENV_PREFIX}<SECTION>_<KEY>, see docs/configuration.md)"
                )
        other = found.get((section, key))
        if other is not None and other[1] != text:
            # An alias and the long name disagree: whichever won, one would be ignored.
            raise ConfigError(
                f"environment: {other[0]} and {variable} both set {section}.{key}, "
                "to different values; set one"
            )
        found[(section, key)] = (variable, text)
    return found


def config_file_argument(text: str) -> Path:
    """The type of a command-line config file argument: a path, refused when empty.

    ``Path("")`` is ".", so an empty argument (a shell's unset variable) would otherwise be
    reported as the current directory.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("the config file path is empty: name a file")
    return Path(text)


def config_path(path: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The file ``load_config`` reads: ``path``, else ``GPU_WATCHDOG_CONFIG``, else
    ``DEFAULT_PATH`` if it exists; None: the defaults alone."""
    env = os.environ if env is None else env
    if path is not None:
        return path
    if "GPU_WATCHDOG_CONFIG" in env:
        if not env["GPU_WATCHDOG_CONFIG"].strip():  # an empty variable would read "."
            raise ConfigError("environment GPU_WATCHDOG_CONFIG is empty: name a file, or unset it")
        return Path(env["GPU_WATCHDOG_CONFIG"])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Load and validate the configuration.

    Args:
        path: The TOML file. ``None`` reads ``DEFAULT_PATH`` if it exists, else
            uses the defaults; an explicit path must exist.
        env: Environment variables (``os.environ`` when ``None``).
        overrides: ``(section, key) -> value`` from the command line; they win.

    Raises:
        ConfigError: with a one-line message naming the key and where it came from.
    """
    env = os.environ if env is None else env
    path = config_path(path, env)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data, source = _read_file(path), str(path)

    known = sections()
    for name, table in data.items():
        if name not in known:
            raise ConfigError(f"{source}: unknown table [{name}] (known: {', '.join(known)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}])")

    origins: dict[tuple[str, str], str] = {}
    merged: dict[str, dict[str, Any]] = {name: dict(data.get(name, {})) for name in known}
    for (name, key), (variable, text) in _env_settings(env).items():
        spec = next(f for f in dataclasses.fields(known[name]) if f.name == key)
        if spec.metadata.get("parse"):
            raise ConfigError(
                f"environment {variable}: {name}.{key} is a list of tables; set it in the file"
            )
        kind = {"bool": bool, "int": int, "float": float, "str": str}[str(spec.type)]
        try:
            merged[name][key] = _from_env_text(text, kind)
        except ValueError as exc:
            raise ConfigError(f"environment {variable}: {name}.{key} {exc}") from None
        origins[(name, key)] = f"environment {variable}"
    for (name, key), value in (overrides or {}).items():
        merged[name][key] = value
        origins[(name, key)] = "command line"

    built: dict[str, Any] = {
        name: _build_section(
            name,
            cls,
            merged[name],
            lambda key, name=name: origins.get((name, key), source),  # type: ignore[misc]
        )
        for name, cls in known.items()
    }
    return Config(**built)
