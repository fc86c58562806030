"""Per-poll CPU cost of our NVML sources against gpustat's and nvitop's, on one fake NVML.

    python benchmarks/bench_nvml_poll.py [--gpus 8] [--procs-per-gpu 2] [--polls 200]
                                         [--rounds 3] [--json OUT] [--max-ratio R]

One run builds the fake ``libnvidia-ml.so.1`` (tests/fake_libnvml), writes one
state (GPUs with processes that are real, sleeping child processes, so every
tool's psutil work is real) and measures, in a fresh interpreter each, round
after round, interleaved:

- **ours**: one full refresh as the daemon does it: ``NvmlDeviceSource.poll``,
  ``NvmlProcessSource.poll``, ``HostSource.poll`` (RSS with children and the
  owner from cgroup/environ) and, where ``watchdog.detectors`` is installed,
  the detection engine on each reading. Per source too.
- **gpustat**: ``GPUStatCollection.new_query()``, its one query API (it also
  reads fan, encoder/decoder and the power limit). Its ``time.sleep(0.1)`` per
  GPU for ``cpu_percent`` costs no CPU and is skipped to keep the run short.
- **nvitop**: the least its API needs for the same figures: per device
  ``uuid``, ``name``, ``memory_info``, ``gpu_utilization``, ``temperature``,
  ``power_usage``, ``processes()``, and per process ``gpu_memory``,
  ``host_memory`` (RSS), ``username`` and ``name``; devices built once, as
  our handles are.

Each worker imports its tool, polls a few times to warm up (symbol probing,
caches), then times ``--polls`` polls with ``time.process_time()`` (all
threads' CPU). Reported: median CPU ms per poll over the rounds, and
ours / peer. With ``--max-ratio`` the exit status is 1 when a ratio exceeds it.
gpustat and nvitop must be installed (``pip install gpustat nvitop``);
a missing one is reported and left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONTENDERS = ("ours", "gpustat", "nvitop")


# -- the workers (run in a fresh interpreter with the fake library on LD_LIBRARY_PATH) ----------


def _ours() -> tuple[Any, dict[str, Any]]:
    from watchdog.sources.host import HostSource
    from watchdog.sources.nvml import Nvml
    from watchdog.sources.nvml_devices import DeviceHandles, NvmlDeviceSource
    from watchdog.sources.nvml_processes import NvmlProcessSource

    try:
        from watchdog.detectors.engine import DetectionEngine

        engine: Any = DetectionEngine()
    except ImportError:
        engine = None
    nvml = Nvml()
    nvml.init()
    handles = DeviceHandles(nvml)
    devices = NvmlDeviceSource(nvml, handles)
    processes = NvmlProcessSource(nvml, handles, max_processes=1024)
    pids: list[int] = []
    host = HostSource(lambda: pids)
    parts: dict[str, float] = {"nvml_devices": 0.0, "nvml_processes": 0.0, "host": 0.0}
    if engine is not None:
        parts["detection"] = 0.0

    def poll() -> None:
        clock = time.process_time
        t0 = clock()
        device_reading = devices.poll()
        t1 = clock()
        process_reading = processes.poll()
        pids[:] = [p.pid for p in process_reading.processes or []]
        t2 = clock()
        host_reading = host.poll()
        t3 = clock()
        if engine is not None:
            for reading in (device_reading, process_reading, host_reading):
                engine.observe(reading)
        t4 = clock()
        parts["nvml_devices"] += t1 - t0
        parts["nvml_processes"] += t2 - t1
        parts["host"] += t3 - t2
        if engine is not None:
            parts["detection"] += t4 - t3

    return poll, parts


def _gpustat() -> tuple[Any, dict[str, Any]]:
    import types

    from gpustat import core

    # Its 0.1 s wait for cpu_percent is wall time, not CPU: skip it to keep the run short.
    core.time = types.SimpleNamespace(sleep=lambda _s: None, time=time.time)

    def poll() -> None:
        core.GPUStatCollection.new_query()

    return poll, {}


def _nvitop() -> tuple[Any, dict[str, Any]]:
    from nvitop import Device

    devices = Device.all()

    def poll() -> None:
        for device in devices:
            device.uuid()
            device.name()
            device.memory_info()
            device.gpu_utilization()
            device.temperature()
            device.power_usage()
            for process in device.processes().values():
                process.gpu_memory()
                process.host_memory()
                process.username()
                process.name()

    return poll, {}


def worker(name: str, polls: int, warmup: int) -> dict[str, Any]:
    """Time ``polls`` polls of contender ``name`` in this process."""
    poll, parts = {"ours": _ours, "gpustat": _gpustat, "nvitop": _nvitop}[name]()
    for _ in range(warmup):
        poll()
    for key in parts:
        parts[key] = 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(polls):
        poll()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "cpu_ms": 1000 * cpu / polls,
        "wall_ms": 1000 * wall / polls,
        "parts_ms": {key: 1000 * value / polls for key, value in parts.items()},
    }


# -- the driver ------------------------------------------------------------------------------


def _children(count: int) -> list[subprocess.Popen[bytes]]:
    """Real processes for the GPUs' process lists: sleepers, each holding a little memory."""
    code = "import time; x = bytearray(8 << 20); time.sleep(3600)"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def _state(gpu_count: int, pids: list[int], per_gpu: int) -> Any:
    from tests.fake_libnvml import GIB, FakeProcess, FakeState, gpus

    state = FakeState(gpus=gpus(gpu_count))
    for index, gpu in enumerate(state.gpus):
        mine = pids[index * per_gpu : (index + 1) * per_gpu]
        gpu.processes = [FakeProcess(pid=pid, used_memory=2 * GIB) for pid in mine]
        gpu.fan_speed = 30  # gpustat reads it; a datacenter GPU's NotSupported would be cheaper
    return state


def _run_worker(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", name, "--polls", str(args.polls)]
    with tempfile.TemporaryDirectory() as cwd:  # nvitop may write a log file in its cwd
        done = subprocess.run(
            command, check=False, env=env, capture_output=True, text=True, cwd=cwd, timeout=600
        )
    if done.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _available(name: str) -> bool:
    if name == "ours":
        return True
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main() -> int:
    """Parse arguments; run a worker or the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--procs-per-gpu", type=int, default=2)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--max-ratio", type=float, help="exit 1 if ours/peer exceeds this")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.polls, warmup=5)))
        return 0

    from tests.fake_libnvml import FakeNvml

    contenders = [name for name in CONTENDERS if _available(name)]
    missing = sorted(set(CONTENDERS) - set(contenders))
    children = _children(args.gpus * args.procs_per_gpu)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            state = _state(args.gpus, [c.pid for c in children], args.procs_per_gpu)
            fake = FakeNvml(Path(scratch) / "nvml.json", state)
            env = fake.env()
            env["PYTHONPATH"] = str(REPO)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
            for _ in range(args.rounds):
                for name in contenders:
                    runs[name].append(_run_worker(name, env, args))
    finally:
        for child in children:
            child.kill()
            child.wait()
    result = _summarise(runs, args, missing)
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.max_ratio is not None:
        over = {k: v for k, v in result["ratios"].items() if v > args.max_ratio}
        if over:
            print(f"FAIL: ratio above {args.max_ratio}: {over}", file=sys.stderr)
            return 1
    return 0


def _summarise(
    runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, missing: list[str]
) -> dict[str, Any]:
    cpu = {name: statistics.median(r["cpu_ms"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["wall_ms"] for r in rs) for name, rs in runs.items()}
    parts = {
        key: statistics.median(r["parts_ms"][key] for r in runs["ours"])
        for key in runs["ours"][0]["parts_ms"]
    }
    ratios = {f"ours/{peer}": cpu["ours"] / cpu[peer] for peer in cpu if peer != "ours"}
    without_host = sum(v for k, v in parts.items() if k != "host")
    partial = {
        f"ours_without_host/{peer}": without_host / cpu[peer] for peer in cpu if peer != "ours"
    }
    return {
        "setup": {
            "gpus": args.gpus,
            "processes": args.gpus * args.procs_per_gpu,
            "polls": args.polls,
            "rounds": args.rounds,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "cpu_ms_per_poll": cpu,
        "wall_ms_per_poll": wall,
        "ours_parts_ms": parts,
        "ratios": ratios,
        "ratios_without_host": partial,
        "missing": missing,
    }


def _print(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(
        f"{setup['gpus']} fake GPUs, {setup['processes']} processes, "
        f"{setup['polls']} polls x {setup['rounds']} rounds (median)"
    )
    print(f"{'':10} {'CPU ms/poll':>12} {'wall ms/poll':>13}")
    for name, value in result["cpu_ms_per_poll"].items():
        print(f"{name:10} {value:12.3f} {result['wall_ms_per_poll'][name]:13.3f}")
    print("ours by part: " + ", ".join(f"{k} {v:.3f}" for k, v in result["ours_parts_ms"].items()))
    for key, value in result["ratios"].items():
        print(f"{key} = {value:.2f}")
    for key, value in result["ratios_without_host"].items():
        print(f"{key} = {value:.2f}  (our NVML sources and detection only)")
    for name in result["missing"]:
        print(f"{name}: not installed, left out (pip install {name})")


if __name__ == "__main__":
    sys.exit(main())
