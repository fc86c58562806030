"""Argument checks shared by the integrations, run when a callback is built.

A callback attaches only when training starts (``setup``, ``on_train_begin``):
without these checks a misspelt or conflicting option would surface there, as
an error from ``attach()`` deep in the framework's stack, or never (an option
ignored). Imports no framework.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

from watchdog.client import Watchdog

_COUNTS = {
    "keep_checkpoints": (1, None),
    "snapshot_max_entries": (1, None),
    "snapshot_min_free_bytes": (0, None),
    "restart_exit_code": (1, 255),  # 0 would end the job as a success: nothing restarts it
}
"""Integer options of ``attach()``: (least, greatest or None)."""

_SECONDS = {"restart_wait_s": False, "heartbeat_s": True}
"""Options of ``attach()`` in seconds: whether 0 is refused as well as negatives."""


@functools.cache
def attach_option_names() -> frozenset[str]:
    """The keyword options ``attach()`` takes (those of ``Watchdog``)."""
    parameters = inspect.signature(Watchdog).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_attach_options(
    owner: str, options: Mapping[str, Any], reserved: Mapping[str, str]
) -> None:
    """Refuse options ``owner`` sets itself, names ``attach()`` does not take, and bad numbers.

    Args:
        owner: The callback's name, for the messages.
        options: The ``**attach_options`` it was given.
        reserved: Options it passes itself, each with what to use instead.

    Raises:
        TypeError: a reserved or unknown option, or a number of the wrong type.
        ValueError: a number out of range.
    """
    for name in options:
        if name in reserved:
            raise TypeError(f"{owner}: {name}= is set by the callback itself; {reserved[name]}")
    known = attach_option_names()
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise TypeError(f"{owner}: unknown option {name}= (not an option of attach()){hint}")
    for name, (least, greatest) in _COUNTS.items():
        if name in options:
            check_count(owner, name, options[name], least, greatest)
    for name, positive in _SECONDS.items():
        if options.get(name) is not None:
            check_seconds(owner, name, options[name], positive)


def check_count(owner: str, name: str, value: Any, least: int, greatest: int | None = None) -> None:
    """``value`` is an int (not a bool) in [least, greatest]; else TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    number = int(value)
    if number < least or (greatest is not None and number > greatest):
        bound = f"from {least} to {greatest}" if greatest is not None else f"at least {least}"
        raise ValueError(f"{owner}: {name} must be {bound}, got {value!r}")


def check_seconds(owner: str, name: str, value: Any, positive: bool) -> None:
    """``value`` is a finite number of seconds, > 0 if ``positive`` else >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        least = "positive" if positive else "zero or more"
        raise ValueError(f"{owner}: {name} must be a finite, {least} number, got {value!r}")


def check_path(owner: str, name: str, value: Any) -> None:
    """``value`` is a path (str or os.PathLike); else TypeError."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{owner}: {name} must be a path, got {value!r}")


def check_handle(owner: str, wd: Any, options: Mapping[str, Any]) -> None:
    """``wd`` is None or a handle from ``watchdog.attach()``, and then comes with no options.

    Raises:
        TypeError: ``wd`` is something else.
        ValueError: attach options along with ``wd``: the handle is attached
            already, so they would be ignored.
    """
    if wd is None:
        return
    if not isinstance(wd, Watchdog):
        raise TypeError(
            f"{owner}: wd must be a handle from watchdog.attach() or None, got {type(wd).__name__}"
        )
    if options:
        names = ", ".join(f"{name}=" for name in sorted(options))
        raise ValueError(
            f"{owner}: {names} would be ignored with wd= (that handle is attached already); "
            "pass them to watchdog.attach() instead"
        )
