"""Build and drive the fake ``libnvidia-ml.so.1`` (see README.md beside this file).

The library is compiled from ``fake_nvml.c`` with the system C compiler, once
per source and variant, into a per-user cache under the temp directory. What
it reports comes from a JSON state file written by :class:`FakeNvml`.

Two ways to put the real ``pynvml`` on it:

* In a subprocess (the daemon, a peer tool): ``FakeNvml.env()`` puts the
  library's folder first on ``LD_LIBRARY_PATH``, so pynvml's own
  ``CDLL("libnvidia-ml.so.1")`` finds it, exactly as it finds NVIDIA's.
* In this process: :func:`bound_pynvml` loads a copy with a different soname
  and binds ``pynvml.nvmlLib`` to it, then restores pynvml afterwards. The
  copy's soname differs so that a later ``dlopen("libnvidia-ml.so.1")`` in
  this process (a test that expects no driver) still finds nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
STATE_ENV = "FAKE_NVML_STATE"
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF
GIB = 1 << 30
MIB = 1 << 20
# nvmlEventType* masks by the name after "nvmlEventType" (fake_nvml.c accepts the same names).
EVENT_TYPES = {
    "SingleBitEccError": 0x1,
    "DoubleBitEccError": 0x2,
    "PState": 0x4,
    "XidCriticalError": 0x8,
    "Clock": 0x10,
    "PowerSourceChange": 0x80,
    "MigConfigChange": 0x100,
    "SingleBitEccErrorStorm": 0x200,
    "DramRetirementEvent": 0x400,
    "DramRetirementFailure": 0x800,
    "NonFatalPoisonError": 0x1000,
    "FatalPoisonError": 0x2000,
    "GpuUnavailableError": 0x4000,
    "GpuRecoveryAction": 0x8000,
}
# What an A100 answers to nvmlDeviceGetSupportedEventTypes: ECC, P-state, Xid and clock events.
DATACENTER_EVENT_TYPES = 0x1 | 0x2 | 0x4 | 0x8 | 0x10


class CompilerMissing(RuntimeError):
    """No C compiler on this machine: the fake library cannot be built."""


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else ``cc`` or ``gcc`` on PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(omit: Iterable[str] = (), soname: str = LIBRARY_NAME) -> Path:
    """Compile the fake library; return the path of the ``.so`` (cached across runs).

    Args:
        omit: NVML functions to leave out of the dynamic symbol table, as on a
            driver that predates them: pynvml then raises ``NVMLError_FunctionNotFound``
            and symbol probes (nvitop's) see them missing.
        soname: The library's soname and file name.

    Raises:
        CompilerMissing: No C compiler.
        subprocess.CalledProcessError: The source does not compile.
    """
    cc = compiler()
    if cc is None:
        raise CompilerMissing("no C compiler (cc, gcc or $CC) to build the fake libnvidia-ml")
    omitted = sorted(set(omit))
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), cc, soname, *omitted]).encode()
    ).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"fake-libnvml-{os.getuid()}" / key
    target = folder / soname
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        script = Path(scratch) / "exports.map"
        hidden = "".join(f" {name};" for name in omitted)
        script.write_text(f"{{ global: *; local:{hidden} }};\n" if omitted else "{ global: *; };\n")
        built = Path(scratch) / soname
        command = [cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-fPIC", "-shared"]
        command += ["-fvisibility=hidden", f"-Wl,-soname,{soname}"]
        command += [f"-Wl,--version-script={script}", "-o", str(built), str(SOURCE), "-lpthread"]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, target)  # atomic: a parallel build never sees half a file
    return target


def library_dir(omit: Iterable[str] = ()) -> Path:
    """The folder holding ``libnvidia-ml.so.1`` (for ``LD_LIBRARY_PATH``)."""
    return build(omit).parent


@dataclass
class FakeProcess:
    """A process on a fake GPU.

    ``used_memory=None`` reports NVML's "not available" sentinel
    (0xFFFFFFFFFFFFFFFF). ``vanishes``: counted by the sizing call but gone
    from the list; ``appears``: the reverse (the race between NVML's two calls).
    """

    pid: int
    used_memory: int | None = 1 * GIB
    type: str = "compute"  # compute, graphics or both
    vanishes: bool = False
    appears: bool = False

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        out: dict[str, Any] = {"pid": self.pid, "type": self.type}
        if self.used_memory is not None:
            out["used_memory"] = self.used_memory
        if self.vanishes:
            out["vanishes"] = True
        if self.appears:
            out["appears"] = True
        return out


@dataclass
class FakeEcc:
    """ECC error counters (``nvmlDeviceGetTotalEccErrors``); ``None``: that one is NOT_SUPPORTED.

    Volatile counts since the driver loaded, aggregate over the GPU's lifetime.
    """

    volatile_corrected: int | None = 0
    volatile_uncorrected: int | None = 0
    aggregate_corrected: int | None = 0
    aggregate_uncorrected: int | None = 0

    def to_json(self) -> dict[str, Any]:
        """The state file's form: ``None`` counters are left out."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class FakeRetiredPages:
    """Page retirement (Kepler to Volta): pages retired by cause, and a retirement pending."""

    single_bit_ecc: int = 0
    double_bit_ecc: int = 0
    pending: bool = False

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        return dict(vars(self))


@dataclass
class FakeRemappedRows:
    """Row remapping (Ampere and later): rows remapped, a remap pending, a remap failed."""

    correctable: int = 0
    uncorrectable: int = 0
    pending: bool = False
    failure: bool = False

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        return dict(vars(self))


@dataclass
class FakeEvent:
    """An NVML event on GPU ``gpu``: an Xid (``data`` is its code) or another type.

    The library delivers it once to every event set that registered the GPU and
    type before the event appeared in the state; ``id`` orders events and must
    grow (:meth:`FakeState.add_event` assigns it).
    """

    gpu: int
    data: int = 0
    type: str | int = "XidCriticalError"
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        return {"id": self.id, "gpu": self.gpu, "type": self.type, "data": self.data}


@dataclass
class FakeGpu:
    """A fake GPU. A figure set to ``None`` is NOT_SUPPORTED, as on a GPU without it.

    Memory is in bytes with NVML v2's meaning: ``memory_used`` excludes
    ``memory_reserved``; the v1 call reports their sum as used.
    """

    uuid: str = "GPU-fa4e0000-0000-4000-8000-000000000000"
    name: str = "NVIDIA Fake A100 80GB"
    memory_total: int | None = 80 * GIB
    memory_used: int | None = 10 * GIB
    memory_reserved: int | None = 512 * MIB
    utilization_gpu: int | None = 50
    utilization_memory: int | None = 20
    temperature: int | None = 40
    power_mw: int | None = 250_000
    power_limit_mw: int | None = 400_000
    fan_speed: int | None = None  # datacenter GPUs have no fan
    lost: bool = False
    processes: list[FakeProcess] = field(default_factory=list)
    event_types: int | None = DATACENTER_EVENT_TYPES  # None: events NOT_SUPPORTED
    ecc: FakeEcc | None = field(default_factory=FakeEcc)  # None: ECC off or absent
    retired_pages: FakeRetiredPages | None = None  # an A100 remaps rows instead
    remapped_rows: FakeRemappedRows | None = field(default_factory=FakeRemappedRows)

    def to_json(self) -> dict[str, Any]:
        """The state file's form: ``None`` figures are left out."""
        out: dict[str, Any] = {"uuid": self.uuid, "name": self.name, "lost": self.lost}
        for key in (
            "memory_total",
            "memory_used",
            "memory_reserved",
            "utilization_gpu",
            "utilization_memory",
            "temperature",
            "power_mw",
            "power_limit_mw",
            "fan_speed",
        ):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        out["processes"] = [p.to_json() for p in self.processes]
        if self.event_types is not None:
            out["event_types"] = self.event_types
        for key in ("ecc", "retired_pages", "remapped_rows"):
            if (part := getattr(self, key)) is not None:
                out[key] = part.to_json()
        return out


@dataclass
class Fault:
    """An injected failure or delay.

    Args:
        call: NVML function name, ``*`` for any, or a prefix ending in ``*``.
        error: Return code by name (``GPU_IS_LOST``, ``NOT_SUPPORTED``, ``UNKNOWN``,
            ``TIMEOUT``, ``NOT_FOUND``, ...) or number; ``None`` only delays.
        gpu: Only calls on this device index (``None``: any call).
        times: Only the next N matching calls (``None``: every one). The count
            restarts whenever the state file is rewritten.
        delay_ms: Sleep this long first; ``-1`` blocks until the state file changes.
    """

    call: str = "*"
    error: str | int | None = None
    gpu: int | None = None
    times: int | None = None
    delay_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        out: dict[str, Any] = {"call": self.call, "delay_ms": self.delay_ms}
        for key in ("error", "gpu", "times"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        return out


@dataclass
class FakeState:
    """Everything the fake library reports."""

    gpus: list[FakeGpu] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    events: list[FakeEvent] = field(default_factory=list)
    init_error: str | int | None = None  # e.g. DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH
    driver_version: str = "550.54.15"
    nvml_version: str = "12.550.54.15"
    cuda_driver_version: int = 12040

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        out: dict[str, Any] = {
            "driver_version": self.driver_version,
            "nvml_version": self.nvml_version,
            "cuda_driver_version": self.cuda_driver_version,
            "gpus": [g.to_json() for g in self.gpus],
            "errors": [f.to_json() for f in self.faults],
            "events": [e.to_json() for e in self.events],
        }
        if self.init_error is not None:
            out["init_error"] = self.init_error
        return out

    def add_event(self, gpu: int, data: int = 0, type: str | int = "XidCriticalError") -> FakeEvent:
        """Append an event with the next id (an Xid ``data`` on ``gpu`` by default).

        The library sees it once the state is written (:meth:`FakeNvml.write`).
        """
        newest = max((e.id for e in self.events), default=0)
        event = FakeEvent(gpu=gpu, data=data, type=type, id=newest + 1)
        self.events.append(event)
        return event


def gpus(count: int, **figures: Any) -> list[FakeGpu]:
    """``count`` GPUs with distinct UUIDs and the given figures."""
    return [
        FakeGpu(uuid=f"GPU-fa4e0000-0000-4000-8000-{index:012d}", **figures)
        for index in range(count)
    ]


class FakeNvml:
    """A state file and the library folder that reads it.

    Args:
        state_path: Where the JSON state goes.
        state: The initial state (written at once).
        omit: Functions the library leaves out (see :func:`build`).
    """

    def __init__(
        self, state_path: Path, state: FakeState | None = None, omit: Iterable[str] = ()
    ) -> None:
        self.state_path = Path(state_path)
        self.state = state or FakeState()
        self.omit = tuple(omit)
        self.library = build(self.omit)
        self._last_mtime_ns = 0
        self.write()

    def write(self, state: FakeState | None = None) -> None:
        """Write ``state`` (or the current one) atomically; the library sees it at its next call.

        Each write gets a strictly later mtime, so the library notices even two
        writes of the same size within one timestamp tick.
        """
        if state is not None:
            self.state = state
        scratch = self.state_path.with_name(self.state_path.name + ".tmp")
        scratch.write_text(json.dumps(self.state.to_json(), indent=1))
        mtime = max(time.time_ns(), self._last_mtime_ns + 1_000_000)
        os.utime(scratch, ns=(mtime, mtime))
        self._last_mtime_ns = mtime
        os.replace(scratch, self.state_path)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess that should load this fake as its NVML."""
        env = dict(os.environ if base is None else base)
        previous = env.get("LD_LIBRARY_PATH")
        folder = str(self.library.parent)
        env["LD_LIBRARY_PATH"] = f"{folder}:{previous}" if previous else folder
        env[STATE_ENV] = str(self.state_path)
        return env


class LoadedFake:
    """The in-process copy of the library, for call counts."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.lib.fakeNvmlCallCount.restype = ctypes.c_long
        self.lib.fakeNvmlCallCount.argtypes = [ctypes.c_char_p]

    def calls(self, name: str) -> int:
        """How often ``name`` was called since the last reset (-1: no such function)."""
        return int(self.lib.fakeNvmlCallCount(name.encode()))

    def reset(self) -> None:
        """Forget every nvmlInit, the call counts and the loaded state."""
        self.lib.fakeNvmlReset()


@contextlib.contextmanager
def bound_pynvml(fake: FakeNvml) -> Iterator[LoadedFake]:
    """Bind the real ``pynvml`` in this process to ``fake``; restore it afterwards.

    Everything pynvml does runs as in production (function lookup, ctypes
    structures, versioned calls, error mapping) except the one ``CDLL`` line
    that finds the library: it is handed this copy instead.
    """
    import pynvml

    soname = f"libfakenvml-{hashlib.sha256(repr(fake.omit).encode()).hexdigest()[:8]}.so"
    lib = ctypes.CDLL(str(build(fake.omit, soname=soname)))
    loaded = LoadedFake(lib)
    loaded.reset()
    saved = (pynvml.nvmlLib, dict(pynvml._nvmlGetFunctionPointer_cache), pynvml._nvmlLib_refcount)
    previous_state = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(fake.state_path)
    pynvml.nvmlLib = lib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield loaded
    finally:
        loaded.reset()
        pynvml.nvmlLib, cache, pynvml._nvmlLib_refcount = saved
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlGetFunctionPointer_cache.update(cache)
        if previous_state is None:
            os.environ.pop(STATE_ENV, None)
        else:
            os.environ[STATE_ENV] = previous_state
