"""The NVML shim: the only module that touches ``pynvml``.

Everything NVML-specific about failure lives here. ``Nvml.call`` raises
:class:`NvmlCallError` carrying the error's short name; ``Nvml.optional``
turns "this driver or GPU cannot tell" into ``None``. Errors are counted per
call and error name for ``gpu_watchdog_nvml_errors_total``.

The binding module is injected, so tests run the same code against a fake
``pynvml`` (or the real one loading a fake ``libnvidia-ml.so.1``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import structlog

from watchdog.errors import EXIT_NVML_UNAVAILABLE, WatchdogError

log = structlog.get_logger("watchdog.nvml")

# A figure this driver or device cannot give: leave it out, never report 0.
UNSUPPORTED_ERRORS = frozenset({"NotSupported", "FunctionNotFound", "NoPermission"})
# The driver lacks this version of a call, or its struct: fall back a version.
VERSION_ERRORS = frozenset({"FunctionNotFound", "ArgumentVersionMismatch", "LibraryMismatch"})

_INIT_HINTS = {
    "LibraryNotFound": "libnvidia-ml.so.1 not found: is the NVIDIA driver installed?",
    "DriverNotLoaded": "the NVIDIA kernel driver is not loaded",
    "LibRmVersionMismatch": (
        "NVML library and kernel driver versions differ (driver upgraded without "
        "reloading the module or rebooting)"
    ),
    "NoPermission": "no permission to open /dev/nvidia* devices",
}


class NvmlUnavailable(WatchdogError):
    """NVML cannot be used on this machine; the daemon exits with EXIT_NVML_UNAVAILABLE."""

    exit_code = EXIT_NVML_UNAVAILABLE


class NvmlCallError(Exception):
    """One NVML call failed.

    Attributes:
        call: The NVML function name.
        error: The error's short name, e.g. ``GpuIsLost``, ``Unknown``, ``NotFound``.
    """

    def __init__(self, call: str, error: str, detail: str) -> None:
        super().__init__(f"{call}: {detail}")
        self.call = call
        self.error = error


def error_name(exc: BaseException) -> str:
    """The short name of an NVML error: ``NVMLError_GpuIsLost`` -> ``GpuIsLost``."""
    name = type(exc).__name__
    if name.startswith("NVMLError_"):
        return name[len("NVMLError_") :]
    value = getattr(exc, "value", None)
    return f"code{value}" if value is not None else name


class _Unsupported(NvmlCallError):
    """Internal: the call is not supported here; ``optional`` turns it into ``None``."""


class Nvml:
    """A thread-safe handle on the NVML binding with per-call error accounting.

    Args:
        module: The ``pynvml`` module or a fake with the same functions and
            ``NVMLError`` class; imported lazily when ``None``.
    """

    def __init__(self, module: ModuleType | None = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._unsupported_logged: set[tuple[str, str]] = set()
        self.driver_version = ""
        self.nvml_version = ""
        self._initialized = False

    @property
    def module(self) -> Any:
        """The binding module."""
        if self._module is None:
            import pynvml

            self._module = pynvml
        return self._module

    def init(self) -> None:
        """Initialise NVML and read the driver and NVML versions.

        Raises:
            NvmlUnavailable: NVML library missing, driver not loaded, version mismatch.
        """
        module = self.module
        try:
            module.nvmlInit()
        except module.NVMLError as exc:
            name = error_name(exc)
            hint = _INIT_HINTS.get(name, str(exc))
            raise NvmlUnavailable(f"NVML unavailable ({name}): {hint}") from None
        except OSError as exc:  # a broken library file fails in the loader, not in NVML
            raise NvmlUnavailable(f"NVML unavailable: cannot load libnvidia-ml: {exc}") from None
        self._initialized = True
        self.driver_version = self._version("nvmlSystemGetDriverVersion")
        self.nvml_version = self._version("nvmlSystemGetNVMLVersion")

    def _version(self, call: str) -> str:
        """A version string, or "" if the driver cannot say: never a reason not to start."""
        try:
            return _text(self.optional(call) or "")
        except NvmlCallError as exc:
            log.warning("nvml_version_unreadable", call=call, error=exc.error)
            return ""

    def shutdown(self) -> None:
        """Shut NVML down if it was initialised; errors are ignored at exit."""
        if self._initialized:
            self._initialized = False
            with contextlib.suppress(self.module.NVMLError):
                self.module.nvmlShutdown()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the NVML function ``name``.

        Raises:
            NvmlCallError: the call failed; ``error`` names the NVML error.
        """
        return self._invoke(name, args, kwargs, tolerated=frozenset())

    def call_reader(self, name: str, reader: Callable[..., Any], *args: Any) -> Any:
        """Call ``reader(*args)``, our own reading of the C function ``name`` through the
        binding, with the errors, and their counts, of ``call(name)``.

        Raises:
            NvmlCallError: the call failed; ``error`` names the NVML error.
        """
        return self._invoke(name, args, {}, tolerated=frozenset(), function=reader)

    def call_quiet(self, name: str, quiet: frozenset[str], *args: Any) -> Any:
        """Call ``name``; a failure named in ``quiet`` is an expected answer, not counted.

        For an event wait, Timeout means "nothing happened"; for a registration,
        NotSupported is the device's answer. Both still raise NvmlCallError.

        Raises:
            NvmlCallError: the call failed; ``error`` names the NVML error.
        """
        return self._invoke(name, args, {}, tolerated=frozenset(), quiet=quiet)

    def has(self, name: str) -> bool:
        """Whether the binding has function ``name`` (an older nvidia-ml-py may lack it)."""
        return hasattr(self.module, name)

    def optional(self, name: str, *args: Any, **kwargs: Any) -> Any | None:
        """Call ``name``; ``None`` when the driver or device does not support it.

        "Not supported" is an answer, not a failure, so it is not counted as an error.

        Raises:
            NvmlCallError: any other failure (GPU lost, Unknown, Timeout, ...).
        """
        try:
            return self._invoke(name, args, kwargs, tolerated=UNSUPPORTED_ERRORS)
        except _Unsupported as exc:
            key = (name, exc.error)
            if key not in self._unsupported_logged:
                self._unsupported_logged.add(key)
                log.info("nvml_figure_unavailable", call=name, error=exc.error)
            return None

    def _invoke(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        tolerated: frozenset[str],
        quiet: frozenset[str] = frozenset(),
        function: Callable[..., Any] | None = None,
    ) -> Any:
        module = self.module
        # pynvml's unversioned wrappers call the newest C function and raise
        # NVMLLibraryMismatchError (not an NVMLError) on a driver without it.
        mismatch = getattr(module, "NVMLLibraryMismatchError", None)
        caught = (module.NVMLError, mismatch) if mismatch else (module.NVMLError,)
        try:
            return (function or getattr(module, name))(*args, **kwargs)
        except caught as exc:
            error = "LibraryMismatch" if mismatch and isinstance(exc, mismatch) else error_name(exc)
            if error in tolerated:
                raise _Unsupported(name, error, str(exc)) from None
            if error not in quiet:
                with self._lock:
                    self._errors[(name, error)] += 1
            raise NvmlCallError(name, error, str(exc)) from None

    def error_counts(self) -> dict[tuple[str, str], int]:
        """Errors so far, by (call, error name)."""
        with self._lock:
            return dict(self._errors)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
