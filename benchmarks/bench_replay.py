"""How fast ``gpu-watchdog replay`` is: device samples per second, CSV parsing included.

    python benchmarks/bench_replay.py [--hours 24] [--gpus 8] [--process-every 5] [--repeat 5]
                                      [--leak-every 3] [--sawtooth SECONDS] [--decimals]

Writes a trace of ``--gpus`` GPUs sampled every second for ``--hours`` (each
GPU with one or two training processes, sampled every ``--process-every``
seconds; all with sawtooth, eval spikes and noise, and the first job on every
``--leak-every``-th GPU leaking slowly: a rising series is judged at
every close of its time scales, so the more leak, the slower; with
``--sawtooth``, every job saws with that cycle, and one of about a minute
is the slowest shape: each close of the finest levels judges both its
windows in full, docs/detection.md "Throughput"),
then times, in the same run:

- the baseline: reading the file with ``csv.reader`` and doing nothing else;
- the replay: ``watchdog.detectors.replay.replay_file``, i.e. parsing,
  validating and running every sample through the detection engine.

Each is timed ``--repeat`` times and the best run counts: on a shared
machine the others measure the neighbours. The target is 250,000 device
samples per second for the replay. The ratio
says how many times longer the whole replay takes than the bare parse.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import GIB, healthy_job, leak_fn

from watchdog.detectors.replay import replay_file

TARGET = 250_000


def _with_leak(
    memory: Callable[[float], float], leak: Callable[[float], float]
) -> Callable[[float], float]:
    return lambda t: memory(t) + leak(t)


def write_trace(
    path: Path,
    hours: float,
    gpus: int,
    process_every: int,
    seed: int,
    decimals: bool = False,
    leak_every: int = 3,
    sawtooth_s: float | None = None,
) -> int:
    """Write the benchmark trace; return the number of device rows.

    ``decimals``: ``pid`` and ``total_bytes`` as pandas writes columns with empty
    cells (``10000.0``), which the replay reads on its second, lenient pass.
    ``sawtooth_s``: every job saws with this cycle (None: as each job draws).
    """
    point = ".0" if decimals else ""
    rng = random.Random(seed)
    total = 80 * GIB
    jobs = []
    for gpu in range(gpus):
        count = 1 + gpu % 2
        for k in range(count):
            memory = healthy_job(rng, 0.0, total * rng.uniform(0.2, 0.35), sawtooth_s=sawtooth_s)
            if gpu % leak_every == 0 and k == 0:
                leak = leak_fn("steady", 3600.0, total * 0.2 / (hours * 3600), rng)
                memory = _with_leak(memory, leak)
            jobs.append((gpu, 10_000 + 100 * gpu + k, memory))
    rows = 0
    with path.open("w") as out:
        out.write("t,gpu,pid,used_bytes,total_bytes\n")
        for second in range(int(hours * 3600)):
            t = float(second)
            per_gpu = [0] * gpus
            lines = []
            for gpu, pid, memory in jobs:
                value = int(memory(t) + rng.gauss(0, 16 << 20)) >> 21 << 21
                per_gpu[gpu] += value
                if second % process_every == 0:
                    lines.append(f"{second},{gpu},{pid}{point},{value},\n")
            for gpu in range(gpus):
                out.write(f"{second},{gpu},,{per_gpu[gpu] + (300 << 20)},{int(total)}{point}\n")
                rows += 1
            out.writelines(lines)
    return rows


def bare_parse(path: Path) -> int:
    """The baseline: csv.reader over the file, rows counted and dropped."""
    count = 0
    with path.open(newline="") as stream:
        for _ in csv.reader(stream):
            count += 1
    return count


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above zero, or a one-line usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """Write the trace, time both, print the numbers; exit 1 below the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=_positive(float), default=24.0)
    parser.add_argument("--gpus", type=_positive(int), default=8)
    parser.add_argument("--process-every", type=_positive(int), default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--leak-every",
        type=_positive(int),
        default=3,
        help="the first job on every Nth GPU leaks (1: all)",
    )
    parser.add_argument(
        "--sawtooth",
        type=_positive(float),
        metavar="SECONDS",
        help="every job saws with this cycle (default: 40%% of jobs, cycles of 60-1200 s)",
    )
    parser.add_argument("--trace", type=Path, help="benchmark this trace instead of writing one")
    parser.add_argument(
        "--repeat", type=_positive(int), default=5, help="runs of each; the best counts"
    )
    parser.add_argument(
        "--decimals", action="store_true", help="write pid and total_bytes as pandas does (1.0)"
    )
    args = parser.parse_args(argv)
    if args.trace is not None and not args.trace.is_file():
        parser.error(f"--trace: not a file: {args.trace}")
    with tempfile.TemporaryDirectory() as folder:
        path = args.trace or Path(folder) / "bench.csv"
        if args.trace is None:
            started = time.perf_counter()
            write_trace(
                path,
                args.hours,
                args.gpus,
                args.process_every,
                args.seed,
                args.decimals,
                args.leak_every,
                args.sawtooth,
            )
            print(
                f"wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - started:.0f} s"
            )
        # The best of a few runs each: what the code costs, not what else the machine did.
        parse_s = replay_s = math.inf
        for _ in range(args.repeat):
            started = time.perf_counter()
            rows = bare_parse(path)
            parse_s = min(parse_s, time.perf_counter() - started)
            started = time.perf_counter()
            result = replay_file(path)
            replay_s = min(replay_s, time.perf_counter() - started)
    device_rate = result.device_samples / replay_s
    print(
        f"rows: {rows - 1:,} ({result.device_samples:,} device, {result.process_samples:,} process)"
    )
    print(f"bare csv.reader parse: {parse_s:.2f} s")
    print(
        f"replay (parse + detect): {replay_s:.2f} s = {device_rate:,.0f} device samples/s "
        f"({(result.device_samples + result.process_samples) / replay_s:,.0f} samples/s in all), "
        f"{len(result.events)} events"
    )
    print(f"replay / bare parse: {replay_s / parse_s:.2f}x")
    print(f"target {TARGET:,} device samples/s: {'met' if device_rate >= TARGET else 'MISSED'}")
    return 0 if device_rate >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
