"""``gpu-watchdog demo``: a real training job with a planted leak, caught and restarted, live."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from pathlib import Path
from typing import Any

from watchdog.config import parse_listen
from watchdog.errors import UsageError

MIB = 1 << 20


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="see it work: a PyTorch job (CPU) leaks, is caught, checkpointed and restarted",
        description="Run the daemon on a SIMULATED idle GPU watching the real host memory of a "
        "real PyTorch training job (CPU) with a planted leak: the leak is raised, the job is "
        "checkpointed and restarted, and it resumes and finishes. About 90 seconds; leaves "
        "nothing running. With --gpu: the job trains on a CUDA device and leaks GPU memory, "
        "and the daemon reads real NVML. See docs/demo.md.",
    )
    parser.add_argument("--steps", type=int, default=1600, help="training steps (default 1600)")
    parser.add_argument("--no-leak", action="store_true", help="train without the planted leak")
    parser.add_argument(
        "--dry-run", action="store_true", help="the policy decides and records, but sends nothing"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the daemon's /metrics address (default: a free port on 127.0.0.1)",
    )
    parser.add_argument(
        "--dir", type=Path, metavar="DIR", help="run directory (default: a new temporary one)"
    )
    parser.add_argument(
        "--gpu",
        type=int,
        nargs="?",
        const=0,
        metavar="INDEX",
        help="train on CUDA device INDEX (default 0) with a real GPU leak seen through real "
        "NVML; needs an NVIDIA driver and a CUDA build of torch",
    )
    parser.add_argument(
        "--leak-rate",
        type=float,
        metavar="MIB_PER_S",
        help="leak this many MiB/s (default: sized to fill the host's RAM in ~45 min)",
    )
    parser.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> Any:
    """Validated ``DemoOptions`` from the command line.

    Raises:
        UsageError: a value out of range, a bad address, or torch missing.
    """
    from watchdog.demo.runner import DemoOptions

    if not 200 <= args.steps <= 1_000_000:
        raise UsageError(f"--steps: expected 200 to 1000000, got {args.steps}")
    if args.leak_rate is not None and not 0.5 <= args.leak_rate <= 256:
        raise UsageError(f"--leak-rate: expected 0.5 to 256 MiB/s, got {args.leak_rate:g}")
    if args.gpu is not None and not 0 <= args.gpu < 1024:
        raise UsageError(f"--gpu: expected a CUDA device index, got {args.gpu}")
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    if importlib.util.find_spec("torch") is None:
        raise UsageError("the demo needs torch: pip install 'gpu-job-watchdog[torch]'")
    if args.dir is not None:
        _make_run_dir(args.dir)
    return DemoOptions(
        steps=args.steps,
        leak=not args.no_leak,
        dry_run=args.dry_run,
        listen=args.listen,
        run_dir=args.dir,
        leak_rate=None if args.leak_rate is None else args.leak_rate * MIB,
        gpu=args.gpu,
    )


def _make_run_dir(path: Path) -> None:
    """Create ``path`` for the demo's files, or say in one line why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        empty = not any(path.iterdir())
    except FileExistsError:
        raise UsageError(f"--dir: {path} is not a directory") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        reason = getattr(exc, "strerror", None) or exc
        if isinstance(exc, NotADirectoryError):
            reason = "a part of it is a file"
        raise UsageError(f"--dir: cannot create {path}: {reason}") from None
    if not empty:
        raise UsageError(f"--dir: {path} is not empty")


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the job finished all its steps."""
    from watchdog.demo.runner import Demo

    options = options_from(args)
    # SIGTERM or a closed terminal unwind like Ctrl-C, so the demo stops what it started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    result = Demo(options).run()
    return 0 if result.ok else 1
