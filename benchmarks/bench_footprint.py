"""The daemon's footprint on a full node: RSS and CPU of ``gpu-watchdog run``, seen from outside.

    python benchmarks/bench_footprint.py [--duration 600] [--warmup 60] [--interval 1]
                                         [--scenario fleet] [--scrape-every 15]
                                         [--max-growth 1] [--json OUT]

Starts the real daemon (``python -m watchdog run``, which is ``gpu-watchdog
run``) on a simulated source playing the built-in ``fleet`` scenario: eight
80 GiB GPUs with eight processes each, device and process figures polled
every ``--interval`` seconds (1 Hz), the trace looping. It gets a temporary
socket, state directory and metrics port, and ``/metrics`` is scraped every
``--scrape-every`` seconds (15 s, Prometheus' default) for the whole run,
since scrapes are part of the real load.

Beside it, in the same run, the **baseline** (``baseline_poll.py``): a bare
Python loop that imports the same simulated source, plays the same scenario
and calls ``poll()`` at the same rate, keeping the latest figures -- the
least any poller of these figures in Python costs.

After ``--warmup`` seconds (imports done, first scrapes served, detector
windows begun) both processes are sampled every second from outside, through
``/proc/<pid>/status`` (VmRSS) and ``/proc/<pid>/stat`` (utime + stime), until
``--duration`` seconds after the start. Reported, for each and as the ratio
daemon / baseline: RSS after warm-up, its maximum and at the end; RSS growth
as the slope of a least-squares line through the second half of the samples;
CPU time used as % of one core. Targets: RSS below 50 MiB, growth below
``--max-growth`` MiB/h (flat), CPU below 1 % of one core, every scrape
answered. The exit status is 1 when a target is missed, 2 when the run
itself failed (the daemon died, or did not start).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import (
    Check,
    DaemonRun,
    ProcWatch,
    Scrape,
    all_passed,
    die_with_parent,
    interrupt_on_sigterm,
    missed_runs,
    polls_done,
    print_table,
    ratio,
    scrape,
    stop,
    tracked_series,
)

HERE = Path(__file__).resolve().parent
MAX_RSS_MIB = 50.0
MAX_CPU_PERCENT = 1.0
SAMPLE_EVERY_S = 1.0


def _start_baseline(python: str, scenario: str, interval_s: float, log: Any) -> Any:
    command = [python, str(HERE / "baseline_poll.py"), scenario, str(interval_s)]
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - started before any thread of ours
    )


def measure(daemon: DaemonRun, baseline_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Sample both processes and scrape the daemon for ``args.duration`` seconds."""
    ours, base = ProcWatch(daemon.pid), ProcWatch(baseline_pid)
    start = time.monotonic()
    warm_end, end = start + args.warmup, start + args.duration
    next_sample, next_scrape = warm_end, start
    scrapes: list[Scrape] = []
    failed_scrapes = 0
    next_report = start + 60.0
    while True:
        now = time.monotonic()
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited during the run:\n{daemon.tail()}")
        if now >= next_scrape:
            try:
                scrapes.append(scrape(daemon.url))
            except OSError as exc:
                failed_scrapes += 1
                print(f"  scrape failed: {exc}", file=sys.stderr)
            next_scrape += args.scrape_every
        if now >= next_sample:
            ours.sample()
            base.sample()
            next_sample += SAMPLE_EVERY_S
        if now >= next_report:
            rss = ours.samples[-1].rss_bytes / (1 << 20) if ours.samples else 0.0
            print(f"  {now - start:5.0f} s  daemon RSS {rss:.1f} MiB", file=sys.stderr)
            next_report += 60.0
        if now >= end:
            break
        time.sleep(max(0.0, min(next_scrape, next_sample, end) - time.monotonic()))
    measured = [s for s in scrapes if s.t >= warm_end] or scrapes[-1:]
    first, last = measured[0], measured[-1]
    elapsed = last.t - first.t
    return {
        "ours": ours,
        "baseline": base,
        "scrapes": len(scrapes) + failed_scrapes,
        "failed_scrapes": failed_scrapes,
        "max_scrape_s": max((s.duration_s for s in scrapes), default=0.0),
        "polls": polls_done(last, "simulated") - polls_done(first, "simulated"),
        "polls_due": elapsed / args.interval,
        "missed_runs": missed_runs(last, "simulated") - missed_runs(first, "simulated"),
        "series": tracked_series(last),
    }


def checks(result: dict[str, Any], args: argparse.Namespace, exit_code: int | None) -> list[Check]:
    """The table's rows."""
    ours: ProcWatch = result["ours"]
    base: ProcWatch = result["baseline"]
    (o_start, o_max, o_end), (b_start, b_max, b_end) = ours.rss_mib(), base.rss_mib()
    o_growth, b_growth = ours.growth_mib_per_h(), base.growth_mib_per_h()
    o_cpu, b_cpu = ours.cpu_percent(), base.cpu_percent()
    answered = result["scrapes"] - result["failed_scrapes"]
    return [
        Check(
            "RSS after warm-up (MiB)", f"{o_start:.1f}", f"{b_start:.1f}", ratio(o_start, b_start)
        ),
        Check(
            "RSS max (MiB)",
            f"{o_max:.1f}",
            f"{b_max:.1f}",
            ratio(o_max, b_max),
            f"< {MAX_RSS_MIB:g}",
            o_max < MAX_RSS_MIB,
        ),
        Check("RSS at end (MiB)", f"{o_end:.1f}", f"{b_end:.1f}", ratio(o_end, b_end)),
        Check("detector series tracked", str(result["series"])),
        Check(
            "RSS growth, 2nd half (MiB/h)",
            f"{o_growth:+.2f}",
            f"{b_growth:+.2f}",
            target=f"< {args.max_growth:g} (flat)",
            passed=o_growth < args.max_growth,
        ),
        Check(
            "CPU (% of one core)",
            f"{o_cpu:.3f}",
            f"{b_cpu:.3f}",
            ratio(o_cpu, b_cpu),
            f"< {MAX_CPU_PERCENT:g}",
            o_cpu < MAX_CPU_PERCENT,
        ),
        Check(
            "/metrics scrapes answered",
            f"{answered}/{result['scrapes']}",
            "",
            "",
            "all",
            answered == result["scrapes"],
        ),
        Check("slowest scrape (ms)", f"{1000 * result['max_scrape_s']:.1f}"),
        Check("polls run / due after warm-up", f"{result['polls']:.0f}/{result['polls_due']:.0f}"),
        Check("polls missed (scheduler)", f"{result['missed_runs']:.0f}"),
        Check("exit status on SIGTERM", str(exit_code), "", "", "0", exit_code == 0),
    ]


def _json(result: dict[str, Any], rows: list[Check], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "benchmark": "footprint",
        "scenario": args.scenario,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "interval_s": args.interval,
        "scrape_every_s": args.scrape_every,
        "rows": [vars(row) for row in rows],
        "samples": {
            who: [[round(s.t, 3), s.rss_bytes, s.cpu_s] for s in result[who].samples]
            for who in ("ours", "baseline")
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds before sampling starts (default 60, at most half the run)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval s (default 1)")
    parser.add_argument("--scenario", default="fleet", help="scenario or trace (default fleet)")
    parser.add_argument("--scrape-every", type=float, default=15.0, help="seconds (default 15)")
    parser.add_argument(
        "--max-growth",
        type=float,
        default=1.0,
        help="largest RSS growth counted as flat, MiB/h (default 1)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the daemon and the baseline, e.g. a venv with only the daemon's "
        "dependencies (default: this one)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    args.warmup = min(args.warmup, args.duration / 2)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every target is met, 1 when one is missed, 2 on failure."""
    args = parse_args(argv)
    interrupt_on_sigterm()
    print(
        f"footprint: daemon on simulated {args.scenario!r} at {1 / args.interval:g} Hz, "
        f"{args.duration:.0f} s (warm-up {args.warmup:.0f} s)",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        workdir = Path(tmp)
        daemon = DaemonRun(workdir, args.scenario, args.interval, python=args.python)
        baseline = None
        try:
            daemon.wait_ready()
            with (workdir / "baseline.log").open("wb") as log:
                baseline = _start_baseline(args.python, args.scenario, args.interval, log)
            result = measure(daemon, baseline.pid, args)
        except KeyboardInterrupt:
            print("footprint: interrupted; stopping what it started", file=sys.stderr)
            return 130
        except (RuntimeError, OSError) as exc:
            print(f"footprint: the run failed: {exc}", file=sys.stderr)
            return 2
        finally:
            if baseline is not None:
                stop(baseline)
            daemon.close()
    rows = checks(result, args, daemon.exit_code)
    print_table(
        f"gpu-watchdog footprint: {args.scenario}, {1 / args.interval:g} Hz, "
        f"{args.duration:.0f} s, /metrics every {args.scrape_every:g} s",
        rows,
    )
    if args.json:
        args.json.write_text(json.dumps(_json(result, rows, args), indent=1) + "\n")
    passed = all_passed(rows)
    print("all targets met" if passed else "TARGET MISSED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
