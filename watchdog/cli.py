"""The ``gpu-watchdog`` command line: one subcommand per module in ``watchdog.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import structlog

from watchdog import __version__
from watchdog.errors import EXIT_USAGE, WatchdogError
from watchdog.logs import configure_logging

# Each module defines register(subparsers), which adds its parser and sets `func`.
COMMAND_MODULES = (
    "run",
    "check_config",
    "status",
    "record",
    "replay",
    "history",
    "clients",
    "send",
    "demo",
)


COMMANDS = frozenset(name.replace("_", "-") for name in COMMAND_MODULES)
"""The subcommands as typed (``check-config``)."""
_TOP_OPTIONS = ("-h", "--help", "--version")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser for every subcommand."""
    parser = _Parser(
        prog="gpu-watchdog",
        description="Watch GPU training jobs for memory leaks and near-OOM, and act on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"watchdog.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not any(word in COMMANDS for word in argv):
        # argparse would only say that COMMAND is missing, not which option it did not know.
        unknown = [word for word in argv if word.startswith("-") and word not in _TOP_OPTIONS]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    # Commands for a person: their output is stdout, what goes wrong is on stderr (a table
    # or a TOML file with log lines in it is neither readable nor parsable). Put back after:
    # a caller in this process (a test, a notebook) keeps its own logging.
    previous = structlog.get_config()
    configure_logging("warning", "console", stream=sys.stderr)
    try:
        return _run(args)
    finally:
        structlog.configure(**previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except WatchdogError as exc:
        print(f"gpu-watchdog {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error; keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
