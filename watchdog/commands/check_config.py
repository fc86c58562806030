"""``gpu-watchdog check-config``: validate a configuration without starting anything."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from watchdog.config import (
    DEFAULT_PATH,
    Config,
    config_file_argument,
    config_path,
    load_config,
)
from watchdog.config_docs import toml_value
from watchdog.control.server import check_settings as check_control_settings
from watchdog.exporter.security import WebSecurity


def register(subparsers: Any) -> None:
    """Add the ``check-config`` subcommand."""
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file (and GPU_WATCHDOG_* variables) and print the result.",
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=config_file_argument,
        help=f"config file (default: GPU_WATCHDOG_CONFIG, else {DEFAULT_PATH})",
    )
    parser.add_argument(
        "--show", action="store_true", help="print the effective configuration as TOML"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load and validate; print ``ok`` (and the effective settings with ``--show``)."""
    path = config_path(args.path)
    config = load_config(path)
    # The files the settings name, too: a certificate the daemon cannot read fails here,
    # and so does a socket group this machine lacks.
    WebSecurity.from_settings(config.metrics)
    check_control_settings(config.control)
    verdict = f"{path or 'defaults'}: ok"
    if args.show:
        # stdout is the TOML alone, so that `check-config --show > file` is a config file.
        print(verdict, file=sys.stderr)
        print(render_toml(config), end="")
    else:
        print(verdict)
    return 0


def render_toml(config: Config) -> str:
    """The effective configuration as TOML that loads back to the same configuration."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        values = getattr(config, section.name)
        tables: list[str] = []
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            render = item.metadata.get("render")
            if render and value:
                # Arrays of tables ([[policy.ladder]]) must follow the table's plain keys.
                tables += render(section.name, value)
            elif render:
                lines.append(f"{item.name} = []")  # none, which is not the default
            else:
                lines.append(f"{item.name} = {toml_value(value)}")
        lines += [*tables, ""]
    return "\n".join(lines)
