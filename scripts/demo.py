"""Run the daemon on a SIMULATED leaking GPU and show, live, what it sees.

Started by scripts/demo.sh. It runs ``gpu-watchdog run --simulate leak``,
reads the daemon's own /metrics every couple of seconds, prints one line per
read, and stops the daemon when the simulated GPU is full or after
``--duration`` seconds, leaving nothing running.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

GIB = 1 << 30


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _first(metrics: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    for (metric, metric_labels), value in metrics.items():
        if metric == name and all(dict(metric_labels).get(k) == v for k, v in labels.items()):
            return value
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="leak", help="built-in scenario or trace file")
    parser.add_argument("--speed", type=float, default=40.0, help="trace seconds per second")
    parser.add_argument("--listen", default="127.0.0.1:9723")
    parser.add_argument("--duration", type=float, default=120.0, help="stop after S seconds")
    args = parser.parse_args()
    url = f"http://{args.listen}"
    # The demo's socket and journal live in a scratch directory, not /run or /var/lib.
    scratch = tempfile.mkdtemp(prefix="gpu-watchdog-demo-")
    env = {
        **os.environ,
        "GPU_WATCHDOG_SOCKET": os.path.join(scratch, "watchdog.sock"),
        "GPU_WATCHDOG_DAEMON_STATE_DIR": os.path.join(scratch, "state"),
    }
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchdog",
            "run",
            "--simulate",
            args.scenario,
            "--speed",
            str(args.speed),
            "--listen",
            args.listen,
        ],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    print(
        f"demo: daemon pid {daemon.pid} on a SIMULATED GPU playing {args.scenario!r} "
        f"at {args.speed:g}x"
    )
    print(f"demo: look at {url}/metrics (Prometheus) and {url}/healthz")
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.duration and daemon.poll() is None:
            time.sleep(2)
            try:
                metrics = _metrics(url + "/metrics")
            except OSError:
                continue
            used = _first(metrics, "gpu_watchdog_gpu_memory_used_bytes", gpu="0")
            total = _first(metrics, "gpu_watchdog_gpu_memory_total_bytes", gpu="0")
            if used is None or not total:
                continue
            leak = _first(metrics, "gpu_watchdog_finding_active", kind="leak", gpu="0")
            tto = _first(metrics, "gpu_watchdog_time_to_oom_seconds", gpu="0")
            line = (
                f"  GPU 0: {used / GIB:5.1f} / {total / GIB:.0f} GiB ({100 * used / total:3.0f}%)"
            )
            if leak is not None:
                line += "  leak: " + ("RAISED" if leak else "no")
            if tto is not None:
                line += f"  predicted OOM in {tto / 60:.0f} min (trace time)"
            print(line, flush=True)
            if used >= total:
                print("demo: the simulated GPU is full (out of memory)")
                break
    except KeyboardInterrupt:
        pass
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
    print(f"demo: done; the daemon exited with status {daemon.returncode}")
    print(f"demo: its audit journal: gpu-watchdog history --state-dir {scratch}/state")
    return 0


if __name__ == "__main__":
    sys.exit(main())
