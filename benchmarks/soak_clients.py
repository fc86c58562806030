"""Soak: the daemon polling at 10 Hz with 256 attached training processes, commanded all along.

    python benchmarks/soak_clients.py [--duration 1800] [--clients 256] [--ranks 8]
                                      [--interval 0.1] [--step-every 0.5] [--command-every 10]
                                      [--scenario fleet] [--max-growth 1] [--json OUT]

Starts the real daemon (``python -m watchdog run``) on the simulated
``fleet`` scenario, polled every ``--interval`` seconds (10 Hz), with a
temporary socket, state directory and metrics port. Then ``--clients``
training processes attach to it with the real client library
(``watchdog.attach()``), as jobs of ``--ranks`` ranks each (32 jobs of 8),
and call ``wd.step()`` every ``--step-every`` seconds. They never import
torch: the client library does not need it (it reports no allocator figures
then, as a CPU-only process would).

Why processes and not threads: the daemon keys clients by the pid the kernel
reports for the connection (``SO_PEERCRED``), and ``attach()`` keeps one
registration per process (a second ``attach()`` replaces the first), so 32
handles in one process would be one client. The honest way to get 256
clients is 256 processes; to keep that cheap they are forked from one parent
that imported the client library once, so the interpreter's pages are
shared copy-on-write.

All of them run as the same user here, and so does ``gpu-watchdog send``.
``control.max_clients_per_uid`` (256 by default) counts every connection of a
user, so the soak raises it to the clients plus a few: on a real node 256
processes belong to several users.

For ``--duration`` seconds after every client has registered (the first
``--warmup`` seconds excluded from the figures):

- the daemon's RSS and CPU time are sampled every second from outside
  (``/proc/<pid>/status`` and ``/proc/<pid>/stat``); growth is the slope of a
  least-squares line through the second half of the samples;
- ``/metrics`` is scraped every 15 s; the polls run are compared with the
  polls due (elapsed time / interval) and with the scheduler's own count of
  missed runs, and the registered clients are counted each time;
- every ``--command-every`` seconds ``gpu-watchdog send --json JOB COMMAND``
  sends ``empty_cache`` or ``dump_stacks`` (alternating by round) to the next
  job in turn; each must come back with one ``ok`` result from every rank of
  that job.

Targets: fewer than 1 % of polls missed, RSS flat (growth below
``--max-growth`` MiB/h), every command answered, no client lost. The exit
status is 1 when a target is missed, 2 when the run itself failed. Not part
of CI: it takes half an hour and a few hundred processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    scrape,
    stop,
    tracked_series,
)

HERE = Path(__file__).resolve().parent
COMMANDS = ("empty_cache", "dump_stacks")
MAX_MISSED = 0.01
SAMPLE_EVERY_S = 1.0
SCRAPE_EVERY_S = 15.0
SEND_TIMEOUT_S = 60.0


# -- the clients (run in their own process tree: python soak_clients.py --client-fleet ...) ---


def client_process(socket_path: str, job: str, rank: int, world: int, step_every: float) -> None:
    """One training process: attach, then step until the fleet's parent goes away."""
    import watchdog

    parent = os.getppid()
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    wd = watchdog.attach(
        job=job, rank=rank, local_rank=rank, world_size=world, socket_path=socket_path
    )
    while os.getppid() == parent:  # the check closes the race with die_with_parent
        wd.step()
        time.sleep(step_every)


def client_fleet(socket_path: str, clients: int, ranks: int, step_every: float) -> int:
    """Fork ``clients`` training processes from this one and wait for them.

    The client library is imported once, here, before forking, so its pages
    are shared; the attach happens in each child (a handle never crosses a fork).
    """
    import watchdog.client  # noqa: F401 - imported once for all children

    if "torch" in sys.modules:  # the point is clients without torch
        print("soak: torch got imported by the client library", file=sys.stderr)
        return 2
    # Raising (not setting a flag) is what ends a blocked waitpid: PEP 475 retries it otherwise.
    interrupt_on_sigterm()
    children: list[int] = []
    for index in range(clients):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                client_process(
                    socket_path, f"soak-{index // ranks:02d}", index % ranks, ranks, step_every
                )
            except BaseException:  # a child must never return into the parent's code
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    print(f"soak: {len(children)} client processes started", file=sys.stderr, flush=True)
    unexpected = 0
    with contextlib.suppress(KeyboardInterrupt, ChildProcessError):
        while children:
            pid, status = os.waitpid(-1, 0)
            if pid in children:
                children.remove(pid)
                unexpected += 1
                print(f"soak: client {pid} exited early ({status})", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough; finish reaping
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return 1 if unexpected else 0


def start_fleet(args: argparse.Namespace, socket_path: str, log: Any) -> subprocess.Popen[bytes]:
    """The client fleet in a session of its own, so one killpg ends every client."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--client-fleet",
        socket_path,
        "--clients",
        str(args.clients),
        "--ranks",
        str(args.ranks),
        "--step-every",
        str(args.step_every),
    ]
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - started before any thread of ours
    )


# -- the commands --------------------------------------------------------------------------------


@dataclass
class CommandLog:
    """Every send and what came back."""

    sent: int = 0
    """Commands sent (one per targeted process)."""
    answered: int = 0
    """Commands answered ok by the process they were sent to."""
    failures: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    """Wall time of each ``gpu-watchdog send``, process start included."""
    commanded: set[int] = field(default_factory=set)
    """Pids that answered at least one command."""


def send_once(
    env: dict[str, str], job: str, command: str, expected: set[int], log: CommandLog
) -> None:
    """``gpu-watchdog send --json JOB COMMAND``; check one ok result from each pid of the job."""
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchdog",
            "send",
            "--json",
            "--timeout",
            str(SEND_TIMEOUT_S),
            job,
            command,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=SEND_TIMEOUT_S + 30,
        check=False,
    )
    log.latencies_s.append(time.monotonic() - started)
    log.sent += len(expected)
    try:
        results = json.loads(done.stdout) if done.stdout.strip() else []
    except json.JSONDecodeError:
        results = []
    ok = {r["pid"] for r in results if r.get("ok") and r.get("command") == command}
    answered = ok & expected
    log.answered += len(answered)
    log.commanded |= answered
    if answered != expected or done.returncode != 0 or len(results) != len(expected):
        missing = sorted(expected - answered)
        errors = [r.get("error") for r in results if not r.get("ok")]
        log.failures.append(
            f"{command} to {job}: exit {done.returncode}, {len(answered)}/{len(expected)} ok, "
            f"missing {missing[:8]}, errors {errors[:3]}, stderr {done.stderr.strip()[-300:]!r}"
        )


def command_loop(
    env: dict[str, str],
    jobs: dict[str, set[int]],
    every_s: float,
    stopped: threading.Event,
    log: CommandLog,
) -> None:
    """Send to one job every ``every_s`` s, job after job, alternating the command by round."""
    names = sorted(jobs)
    index = 0
    while not stopped.wait(every_s):
        job = names[index % len(names)]
        command = COMMANDS[(index // len(names)) % len(COMMANDS)]
        try:
            send_once(env, job, command, jobs[job], log)
        except (OSError, subprocess.SubprocessError) as exc:
            log.sent += len(jobs[job])
            log.failures.append(f"{command} to {job}: {exc}")
        index += 1


# -- the run ------------------------------------------------------------------------------------


def registered(snapshot: Scrape) -> dict[str, set[int]]:
    """Registered clients by job, from the per-client series of ``/metrics``."""
    jobs: dict[str, set[int]] = {}
    for (name, labels), _ in snapshot.values.items():
        if name == "gpu_watchdog_client_heartbeat_age_seconds":
            have = dict(labels)
            jobs.setdefault(have["training_job"], set()).add(int(have["pid"]))
    return jobs


def wait_for_clients(daemon: DaemonRun, clients: int, timeout_s: float) -> dict[str, set[int]]:
    """Wait until ``clients`` processes are registered; return them by job."""
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited:\n{daemon.tail()}")
        with contextlib.suppress(OSError):
            jobs = registered(scrape(daemon.url))
            count = sum(len(pids) for pids in jobs.values())
            if count >= clients:
                return jobs
        time.sleep(1.0)
    raise RuntimeError(f"only {count} of {clients} clients registered within {timeout_s:.0f} s")


@dataclass
class Soak:
    """What the main loop collects."""

    watch: ProcWatch
    scrapes: list[Scrape] = field(default_factory=list)
    failed_scrapes: int = 0
    fewest_clients: int | None = None


def soak(daemon: DaemonRun, fleet: subprocess.Popen[bytes], args: argparse.Namespace) -> Soak:
    """Sample and scrape the daemon for ``args.duration`` seconds."""
    result = Soak(ProcWatch(daemon.pid))
    start = time.monotonic()
    warm_end, end = start + args.warmup, start + args.duration
    next_sample, next_scrape, next_report = warm_end, start, start + 60.0
    while True:
        now = time.monotonic()
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited during the soak:\n{daemon.tail()}")
        if fleet.poll() is not None:
            raise RuntimeError(f"the client fleet exited with {fleet.returncode}")
        if now >= next_scrape:
            try:
                taken = scrape(daemon.url)
                result.scrapes.append(taken)
                count = taken.metric("gpu_watchdog_clients")
                result.fewest_clients = int(min(count, result.fewest_clients or count))
            except OSError as exc:
                result.failed_scrapes += 1
                print(f"  scrape failed: {exc}", file=sys.stderr)
            next_scrape += SCRAPE_EVERY_S
        if now >= next_sample:
            result.watch.sample()
            next_sample += SAMPLE_EVERY_S
        if now >= next_report and result.watch.samples and result.scrapes:
            rss = result.watch.samples[-1].rss_bytes / (1 << 20)
            polls = polls_done(result.scrapes[-1], "simulated")
            print(
                f"  {now - start:5.0f} s  daemon RSS {rss:.1f} MiB, {polls:.0f} polls",
                file=sys.stderr,
                flush=True,
            )
            next_report += 60.0
        if now >= end:
            return result
        time.sleep(max(0.0, min(next_scrape, next_sample, end) - time.monotonic()))


def checks(
    result: Soak,
    commands: CommandLog,
    args: argparse.Namespace,
    exit_code: int | None,
) -> list[Check]:
    """The table's rows."""
    warm_end = result.scrapes[0].t + args.warmup
    measured = [s for s in result.scrapes if s.t >= warm_end] or result.scrapes[-1:]
    first, last = measured[0], measured[-1]
    due = (last.t - first.t) / args.interval
    run = polls_done(last, "simulated") - polls_done(first, "simulated")
    skipped = missed_runs(last, "simulated") - missed_runs(first, "simulated")
    missed = max(0.0, due - run) / max(1.0, due)
    start_rss, max_rss, end_rss = result.watch.rss_mib()
    growth = result.watch.growth_mib_per_h()
    series = tracked_series(last)
    drops = sum(
        value
        for (name, _), value in last.values.items()
        if name == "gpu_watchdog_control_dropped_connections_total"
    )
    answered = commands.answered == commands.sent and not commands.failures
    latency = sorted(commands.latencies_s)
    return [
        Check("polls run / due after warm-up", f"{run:.0f}/{due:.0f}"),
        Check(
            "polls missed",
            f"{100 * missed:.2f} %",
            target=f"< {100 * MAX_MISSED:g} %",
            passed=missed < MAX_MISSED,
        ),
        Check("missed runs (scheduler's count)", f"{skipped:.0f}", target="0", passed=skipped == 0),
        Check(
            "RSS after warm-up / max / end (MiB)",
            f"{start_rss:.1f} / {max_rss:.1f} / {end_rss:.1f}",
        ),
        Check("detector series tracked", str(series)),
        Check(
            "RSS growth, 2nd half (MiB/h)",
            f"{growth:+.2f}",
            target=f"< {args.max_growth:g} (flat)",
            passed=growth < args.max_growth,
        ),
        Check("CPU (% of one core)", f"{result.watch.cpu_percent():.2f}"),
        Check(
            "commands answered ok",
            f"{commands.answered}/{commands.sent}",
            target="all",
            passed=answered and commands.sent > 0,
        ),
        Check("clients commanded at least once", f"{len(commands.commanded)}/{args.clients}"),
        Check(
            "gpu-watchdog send, median / max (s)",
            f"{latency[len(latency) // 2]:.2f} / {latency[-1]:.2f}" if latency else "-",
        ),
        Check(
            "fewest clients registered",
            f"{result.fewest_clients}/{args.clients}",
            target="all",
            passed=result.fewest_clients == args.clients,
        ),
        Check("control connections dropped", f"{drops:.0f}", target="0", passed=drops == 0),
        Check(
            "/metrics scrapes answered",
            f"{len(result.scrapes)}/{len(result.scrapes) + result.failed_scrapes}",
            target="all",
            passed=result.failed_scrapes == 0,
        ),
        Check("exit status on SIGTERM", str(exit_code), target="0", passed=exit_code == 0),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds left out of the figures (default 60, at most half)",
    )
    parser.add_argument("--clients", type=int, default=256, help="training processes (256)")
    parser.add_argument("--ranks", type=int, default=8, help="ranks per job (8)")
    parser.add_argument("--interval", type=float, default=0.1, help="poll interval s (0.1)")
    parser.add_argument(
        "--step-every",
        type=float,
        default=0.5,
        help="seconds between a client's wd.step() calls (0.5)",
    )
    parser.add_argument(
        "--command-every",
        type=float,
        default=10.0,
        help="seconds between two sends, each to one job (10)",
    )
    parser.add_argument("--scenario", default="fleet", help="scenario or trace (default fleet)")
    parser.add_argument(
        "--max-growth",
        type=float,
        default=1.0,
        help="largest RSS growth counted as flat, MiB/h (default 1)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    parser.add_argument("--client-fleet", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = min(args.warmup, args.duration / 2)
    return args


def _json(result: Soak, commands: CommandLog, rows: list[Check], args: argparse.Namespace) -> Any:
    return {
        "benchmark": "soak_clients",
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "client_fleet")},
        "rows": [vars(row) for row in rows],
        "command_failures": commands.failures,
        "samples": [[round(s.t, 3), s.rss_bytes, s.cpu_s] for s in result.watch.samples],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 when every target is met, 1 when one is missed, 2 on failure."""
    args = parse_args(argv)
    if args.client_fleet:
        return client_fleet(args.client_fleet, args.clients, args.ranks, args.step_every)
    interrupt_on_sigterm()
    print(
        f"soak: {args.clients} clients, daemon at {1 / args.interval:g} Hz on {args.scenario!r}, "
        f"{args.duration:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    commands, stopped = CommandLog(), threading.Event()
    with tempfile.TemporaryDirectory(prefix="soak-clients-") as tmp:
        workdir = Path(tmp)
        cap = {"GPU_WATCHDOG_CONTROL_MAX_CLIENTS_PER_UID": str(args.clients + 16)}
        daemon = DaemonRun(workdir, args.scenario, args.interval, extra_env=cap)
        fleet = None
        sender = None
        try:
            daemon.wait_ready()
            with (workdir / "clients.log").open("wb") as log:
                fleet = start_fleet(args, daemon.socket_path, log)
            jobs = wait_for_clients(daemon, args.clients, timeout_s=120 + args.clients)
            print(
                f"soak: {args.clients} clients registered in {len(jobs)} jobs",
                file=sys.stderr,
                flush=True,
            )
            sender = threading.Thread(
                target=command_loop,
                args=(daemon.env, jobs, args.command_every, stopped, commands),
                daemon=True,
            )
            sender.start()
            result = soak(daemon, fleet, args)
        except KeyboardInterrupt:
            print("soak: interrupted; stopping what it started", file=sys.stderr)
            return 130
        except (RuntimeError, OSError) as exc:
            print(f"soak: the run failed: {exc}", file=sys.stderr)
            return 2
        finally:
            stopped.set()
            if sender is not None:
                sender.join(SEND_TIMEOUT_S + 30)
            if fleet is not None:
                stop(fleet, group=True)
            daemon.close()
    rows = checks(result, commands, args, daemon.exit_code)
    print_table(
        f"gpu-watchdog soak: {args.clients} clients, {1 / args.interval:g} Hz, "
        f"{args.duration:.0f} s, a command every {args.command_every:g} s",
        rows,
    )
    for failure in commands.failures[:20]:
        print(f"  command failed: {failure}")
    if args.json:
        args.json.write_text(json.dumps(_json(result, commands, rows, args), indent=1) + "\n")
    passed = all_passed(rows)
    print("all targets met" if passed else "TARGET MISSED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
