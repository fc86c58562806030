"""How much does ``wd.step()`` cost when nothing is pending? Compared with an empty loop.

Run: python benchmarks/bench_step.py [--batch 10000] [--repeats 300] [--check]

A daemon (an in-process ControlServer on a temporary socket) is started so
that the client's background thread is connected and heartbeating, as in a
real job. Each repeat times ``batch`` iterations of an empty loop, of a loop
calling a no-op Python method, and of a loop calling ``wd.step()``; the
medians per iteration are printed, with the cost of ``step()`` over the empty
loop and the ratio. ``--check`` exits 1 if that cost exceeds 1 µs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


class _Noop:
    def step(self) -> None:
        pass


def _per_iteration_ns(batch: int, repeats: int, call: object | None) -> float:
    samples = []
    counter = time.perf_counter_ns
    loop = range(batch)
    for _ in range(repeats):
        if call is None:
            start = counter()
            for _ in loop:
                pass
            samples.append(counter() - start)
        else:
            start = counter()
            for _ in loop:
                call()  # type: ignore[operator]
            samples.append(counter() - start)
    return statistics.median(samples) / batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--check", action="store_true", help="exit 1 if step() costs > 1 µs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import structlog

    import watchdog
    from watchdog.config import ControlSettings
    from watchdog.control import ControlServer

    with tempfile.TemporaryDirectory(prefix="wd-bench-") as tmp:
        server = ControlServer(
            ControlSettings(socket_path=str(Path(tmp) / "wd.sock"), heartbeat_s=0.5),
            logger=structlog.wrap_logger(structlog.ReturnLogger()),
        )
        server.start()
        wd = watchdog.attach(socket_path=server.socket_path)
        wd.link.connected.wait(5)
        try:
            _per_iteration_ns(args.batch, 20, wd.step)  # warm-up
            empty = _per_iteration_ns(args.batch, args.repeats, None)
            noop = _per_iteration_ns(args.batch, args.repeats, _Noop().step)
            step = _per_iteration_ns(args.batch, args.repeats, wd.step)
            connected = wd.link.connected.is_set()
        finally:
            wd.close()
            server.stop()
    cost = step - empty
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "daemon_connected": connected,
        "batch": args.batch,
        "repeats": args.repeats,
        "empty_loop_ns": round(empty, 2),
        "noop_method_loop_ns": round(noop, 2),
        "step_loop_ns": round(step, 2),
        "step_cost_ns": round(cost, 2),
        "step_vs_empty_ratio": round(step / empty, 2),
        "step_vs_noop_method_ratio": round(step / noop, 2),
        "limit_ns": 1000,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"empty loop        {empty:8.1f} ns/iteration")
        print(f"no-op method loop {noop:8.1f} ns/iteration")
        print(f"wd.step() loop    {step:8.1f} ns/iteration  (daemon connected: {connected})")
        print(f"step() cost       {cost:8.1f} ns median over the empty loop (limit 1000 ns)")
        print(f"ratio step/empty  {step / empty:8.2f}x   step/no-op method {step / noop:.2f}x")
    return 1 if args.check and cost > 1000 else 0


if __name__ == "__main__":
    sys.exit(main())
