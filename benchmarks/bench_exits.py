"""Many processes exiting in one poll: the detection engine's cost, against a quiet poll.

    python benchmarks/bench_exits.py [--counts 500,2000,8000] [--repeat 3]

For each count N: N processes on 8 GPUs, each with a GPU series, a host-RSS
series and allocator figures (four series per process), are polled until
every series exists. Then, in the same run, two polls are timed: the
**baseline**, a poll in which the same N processes are all still there (the
usual case), and the poll in which all N have exited. The ratio exit /
baseline stays about the same as N grows when the cost of forgetting a
process does not depend on how many others there are; an engine that scanned
every series for each exiting process would show the ratio growing with N.
Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.detectors import DetectionEngine
from watchdog.samples import (
    DeviceSample,
    GpuProcessSample,
    HostMemory,
    HostProcessSample,
    Reading,
)

GIB = 1 << 30
GPUS = 8


def _reading(t: float, pids: list[int]) -> Reading:
    return Reading(
        t=t,
        devices=[
            DeviceSample(gpu=g, used_bytes=10 * GIB, total_bytes=80 * GIB) for g in range(GPUS)
        ],
        processes=[GpuProcessSample(gpu=p % GPUS, pid=p, used_bytes=GIB // 4) for p in pids],
        host_processes=[HostProcessSample(pid=p, rss_bytes=GIB, started=p) for p in pids],
        host_memory=HostMemory(total_bytes=512 * GIB, available_bytes=400 * GIB),
    )


def _timed(engine: DetectionEngine, reading: Reading) -> float:
    start = time.perf_counter()
    engine.observe(reading)
    return time.perf_counter() - start


def measure(count: int) -> tuple[float, float]:
    """Seconds for one poll with ``count`` processes staying, and for one with all gone."""
    pids = list(range(1000, 1000 + count))
    engine = DetectionEngine()
    for t in range(3):
        engine.observe(_reading(float(t), pids))
    for pid in pids:
        engine.observe_allocator(3.0, pid % GPUS, pid, GIB // 8, GIB // 5)
    staying = _timed(engine, _reading(4.0, pids))
    exiting = _timed(engine, _reading(5.0, []))
    if engine.series_count() != GPUS:
        raise SystemExit(f"bench_exits: {engine.series_count()} series left, expected {GPUS}")
    return staying, exiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="500,2000,8000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| processes | poll, all staying (baseline) | poll, all exiting | ratio |")
    print("|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        runs = [measure(count) for _ in range(args.repeat)]
        staying = min(r[0] for r in runs)
        exiting = min(r[1] for r in runs)
        ratio = exiting / staying
        print(f"| {count} | {staying * 1e3:.1f} ms | {exiting * 1e3:.1f} ms | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
