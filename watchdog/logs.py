"""structlog set-up: JSON lines for journald, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    always: dict[str, str] | None = None,
) -> None:
    """Configure structlog for the daemon.

    Args:
        level: Lowest level logged (``debug``, ``info``, ``warning``, ``error``).
        fmt: ``json``, ``console`` or ``auto`` (console on a terminal, else JSON).
        stream: Where log lines go; standard output (journald) when ``None``.
        always: Fields added to every line, from every thread (e.g. ``source``).
    """
    stream = sys.stdout if stream is None else stream
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_fields(always or {}),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # APScheduler logs through the standard library; keep its chatter out unless debugging.
    logging.getLogger("apscheduler").setLevel(
        logging.WARNING if level != "debug" else logging.DEBUG
    )


def _add_fields(fields: dict[str, str]) -> structlog.typing.Processor:
    def add(
        logger: object, method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add
