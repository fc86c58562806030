"""GPU smoke test: a real CUDA leak, seen through real NVML, raised, and acted on.

Usage (on a machine with an NVIDIA GPU, CUDA torch and nvidia-ml-py installed)::

    python scripts/gpu_smoke_test.py [--gpu 0] [--steps 2400] [--keep DIR]

It starts ``gpu-watchdog run`` on real NVML (with the demo's short detection
settings, ``watchdog/demo/config.toml``) and the demo's training job
(``watchdog.demo.train``) on ``cuda:N``, with its leak on the GPU: validation
losses kept with their autograd graphs, so the activations stay allocated on
the device. Then it checks, printing PASS or FAIL for each:

1. ``nvml_sees_process``: NVML (``gpu_watchdog_process_gpu_memory_bytes``)
   reports the job's pid with GPU memory.
2. ``empty_cache``: ``gpu-watchdog send PID empty_cache`` answers ok and frees
   at least 256 MiB (the job frees a 1 GiB tensor at start, which the caching
   allocator keeps).
3. ``leak_raised``: a ``leak`` finding is raised (``process`` or ``gpu``
   series, or the client's ``allocated`` series).
4. ``checkpoint_and_restart``: the policy sends it, the job checkpoints and
   exits 75, the script restarts it (as a launcher would), and it resumes from
   the checkpoint and finishes all steps with exit 0.
5. ``demo_gpu``: ``gpu-watchdog demo --gpu N`` as a user runs it exits 0
   after exactly one restart.

Exit status: 0 all passed, 1 a check failed, 2 no CUDA or NVML here. The
last lines are a report to paste into docs/demo.md with the date. Nothing is
left running; the run directory is removed unless ``--keep DIR`` is given.

See docs/demo.md for the runs recorded on hardware.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout: the watchdog package beside this script

from watchdog.demo.runner import (  # noqa: E402
    RESTART_EXIT_CODE,
    metric,
    scrape,
    start_daemon,
    stop_group,
)

MIB = 1 << 20
GIB = 1 << 30


class Check:
    """The outcome of one named check."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok: bool | None = None
        self.detail = "not run"

    def set(self, ok: bool, detail: str) -> bool:
        """Record the outcome, print it, and return ``ok``."""
        self.ok, self.detail = ok, detail
        print(f"{'PASS' if ok else 'FAIL'}  {self.name}: {detail}", flush=True)
        return ok


def require_gpu(gpu: int) -> dict[str, str]:
    """The GPU's name and the versions in use; exit 2 if CUDA or NVML is missing."""
    try:
        import torch
    except ImportError:
        sys.exit("gpu_smoke_test: error: torch is not installed")
    if not torch.cuda.is_available() or torch.cuda.device_count() <= gpu:
        print(f"gpu_smoke_test: error: no CUDA device {gpu} here", file=sys.stderr)
        sys.exit(2)
    try:
        import pynvml
    except ImportError:
        print("gpu_smoke_test: error: nvidia-ml-py is not installed", file=sys.stderr)
        sys.exit(2)
    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()
    return {
        "gpu": torch.cuda.get_device_name(gpu),
        "driver": str(driver.decode() if isinstance(driver, bytes) else driver),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
    }


def free_gpu_bytes(gpu: int) -> int:
    """Free memory on the GPU, from torch."""
    import torch

    free, _total = torch.cuda.mem_get_info(gpu)
    return int(free)


def journal(state_dir: Path) -> list[dict[str, Any]]:
    """The daemon's audit journal entries so far."""
    try:
        lines = (state_dir / "journal.jsonl").read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


class Smoke:
    """One run of the smoke test in ``run_dir``."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.state_dir = run_dir / "state"
        self.socket = run_dir / "watchdog.sock"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
        self.env |= {"GPU_WATCHDOG_SOCKET": str(self.socket), "PYTHONUNBUFFERED": "1"}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.job: subprocess.Popen[str] | None = None
        self.url = ""
        self.checks = {
            name: Check(name)
            for name in (
                "nvml_sees_process",
                "empty_cache",
                "leak_raised",
                "checkpoint_and_restart",
                "demo_gpu",
            )
        }

    def start_daemon(self) -> None:
        """``gpu-watchdog run`` on real NVML with the demo's detection settings."""
        self.daemon, self.url = start_daemon(self.run_dir, real_nvml=True)
        print(f"daemon: pid {self.daemon.pid}, {self.url}", flush=True)

    def start_job(self, leak_bytes_per_step: int, cache_bytes: int) -> subprocess.Popen[str]:
        """The demo's training job on the GPU; its stdout is JSON events."""
        command = [
            sys.executable,
            "-m",
            "watchdog.demo.train",
            "--steps",
            str(self.args.steps),
            "--device",
            f"cuda:{self.args.gpu}",
            "--checkpoint-dir",
            str(self.run_dir / "checkpoints"),
            "--out",
            str(self.run_dir / "final.pt"),
            "--leak-bytes-per-step",
            str(leak_bytes_per_step),
            "--step-time",
            str(self.args.step_time),
            "--cache-bytes",
            str(cache_bytes),
            "--socket",
            str(self.socket),
            "--job",
            "gpu-smoke",
        ]
        with open(self.run_dir / "train.log", "a") as log:
            self.job = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )
        return self.job

    def wait_metric(self, name: str, timeout_s: float, **labels: str) -> float | None:
        """Poll /metrics until ``name{labels}`` is present and positive."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                value = metric(scrape(self.url), name, **labels)
                if value:
                    return value
            time.sleep(0.5)
        return None

    def send(self, pid: int, command: str) -> list[dict[str, Any]]:
        """``gpu-watchdog send --json PID COMMAND``."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "watchdog",
                "send",
                "--json",
                str(pid),
                command,
                "--timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        try:
            answers = json.loads(result.stdout)
        except ValueError:
            return [{"ok": False, "error": result.stderr.strip() or result.stdout.strip()}]
        return answers if isinstance(answers, list) else [answers]

    def run(self) -> bool:
        """Run every check; True when all passed."""
        rate = min(256 * MIB, max(8 * MIB, free_gpu_bytes(self.args.gpu) / 2700))
        leak_per_step = int(rate * self.args.step_time)
        print(
            f"leak: ~{rate / MIB:.0f} MiB/s on cuda:{self.args.gpu} "
            f"({leak_per_step / MIB:.2f} MiB per step)",
            flush=True,
        )
        self.start_daemon()
        job = self.start_job(leak_per_step, cache_bytes=GIB)
        first = self._read_until(job, "start", 120)
        if first is None:
            return self._finish_checks("the job did not start")
        pid = int(first["pid"])
        self._check_nvml(pid)
        self._check_empty_cache(pid)
        self._check_leak_and_restart(job, pid)
        self.close()
        self._check_demo()
        return all(check.ok for check in self.checks.values())

    def _check_nvml(self, pid: int) -> None:
        used = self.wait_metric("gpu_watchdog_process_gpu_memory_bytes", 30, pid=str(pid))
        self.checks["nvml_sees_process"].set(
            used is not None,
            f"NVML reports pid {pid} with {used / MIB:.0f} MiB on the GPU"
            if used
            else f"pid {pid} absent from gpu_watchdog_process_gpu_memory_bytes",
        )

    def _check_empty_cache(self, pid: int) -> None:
        if self.wait_metric("gpu_watchdog_client_step", 30, pid=str(pid)) is None:
            self.checks["empty_cache"].set(False, "the job did not register with the daemon")
            return
        answers = self.send(pid, "empty_cache")
        answer: dict[str, Any] = answers[0] if answers else {"ok": False, "error": "no answer"}
        details = answer.get("details") or {}
        freed = details.get("freed_bytes") or 0
        self.checks["empty_cache"].set(
            bool(answer.get("ok")) and freed >= 256 * MIB,
            f"ok={answer.get('ok')}, freed {freed / MIB:.0f} MiB "
            f"(reserved {details.get('reserved_before')} -> {details.get('reserved_after')})"
            + (f", error: {answer.get('error')}" if answer.get("error") else ""),
        )

    def _check_leak_and_restart(self, job: subprocess.Popen[str], pid: int) -> None:
        code = self._wait_exit(job, 300)
        raised = [
            e
            for e in journal(self.state_dir)
            if e.get("type") == "finding"
            and e.get("kind") == "leak"
            and e.get("state") == "raised"
            and (e.get("pid") == pid or (e.get("pid") is None and e.get("gpu") == self.args.gpu))
        ]
        self.checks["leak_raised"].set(
            bool(raised),
            "; ".join(str(e.get("message")) for e in raised)
            if raised
            else f"no leak raised on pid {pid} or GPU {self.args.gpu} before the job ended",
        )
        if code != RESTART_EXIT_CODE:
            self.checks["checkpoint_and_restart"].set(False, f"the job exited {code}, not 75")
            return
        resumed = self.start_job(0, cache_bytes=0)  # the restarted job, leak fixed for brevity
        start = self._read_until(resumed, "start", 120)
        done = self._read_until(resumed, "done", 600)
        final = self._wait_exit(resumed, 60)
        results = [
            e
            for e in journal(self.state_dir)
            if e.get("type") == "result" and e.get("action") == "checkpoint_and_restart"
        ]
        ok = (
            bool(results)
            and bool(results[0].get("ok"))
            and start is not None
            and start.get("resumed_from") is not None
            and done is not None
            and done.get("step") == self.args.steps
            and final == 0
        )
        self.checks["checkpoint_and_restart"].set(
            ok,
            f"job exited 75; restarted, resumed from step "
            f"{start.get('resumed_from') if start else None}, finished at step "
            f"{done.get('step') if done else None} with exit {final}",
        )

    def _check_demo(self) -> None:
        """``gpu-watchdog demo --gpu N`` as a user runs it: exit 0 after exactly one restart."""
        demo_dir = self.run_dir / "demo"
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "watchdog",
                    "demo",
                    "--gpu",
                    str(self.args.gpu),
                    "--dir",
                    str(demo_dir),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=REPO,
                env=self.env,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.checks["demo_gpu"].set(False, "gpu-watchdog demo --gpu ran over 10 minutes")
            return
        (self.run_dir / "demo-gpu.out").write_text(done.stdout + done.stderr)
        try:
            summary = json.loads((demo_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        ok = done.returncode == 0 and summary.get("restarts") == 1
        self.checks["demo_gpu"].set(
            ok,
            f"exit {done.returncode}, {summary.get('restarts')} restart(s), final step "
            f"{summary.get('final_step')}, {summary.get('wall_s')} s; decisions "
            f"{summary.get('decisions')}",
        )

    def _read_until(
        self, job: subprocess.Popen[str], event: str, timeout_s: float
    ) -> dict[str, Any] | None:
        """Read the job's events until ``event`` (None on EOF; the caller bounds the time)."""
        assert job.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in job.stdout:
            with contextlib.suppress(ValueError):
                found = json.loads(line)
                if isinstance(found, dict) and found.get("event") == event:
                    return found
            if time.monotonic() > deadline:
                return None
        return None

    def _wait_exit(self, job: subprocess.Popen[str], timeout_s: float) -> int | None:
        assert job.stdout is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.stdout.read()  # drain, so the job never blocks on a full pipe
            return job.wait(timeout=timeout_s)
        return None

    def _finish_checks(self, why: str) -> bool:
        for check in self.checks.values():
            if check.ok is None:
                check.set(False, why)
        return False

    def close(self) -> None:
        """Stop the job and the daemon."""
        stop_group(self.job)
        stop_group(self.daemon)


def main() -> int:
    """Run the smoke test and print the report."""
    parser = argparse.ArgumentParser(description="GPU smoke test of gpu-watchdog (needs CUDA).")
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    parser.add_argument("--steps", type=int, default=2400, help="training steps (default 2400)")
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds per step")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the run directory here")
    args = parser.parse_args()
    if args.steps < 400 or args.gpu < 0 or args.step_time <= 0:
        print(
            "gpu_smoke_test: error: --steps must be >= 400, --gpu >= 0, --step-time > 0",
            file=sys.stderr,
        )
        return 2
    info = require_gpu(args.gpu)
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="wd-gpu-smoke-", dir="/tmp"))
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    smoke = Smoke(args, run_dir)
    try:
        passed = smoke.run()
    except (RuntimeError, OSError) as exc:
        passed = smoke._finish_checks(str(exc))
    finally:
        smoke.close()
    elapsed = time.monotonic() - started
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("\n--- report (paste into docs/demo.md) ---")
    print(
        f"{today}: {info['gpu']}, driver {info['driver']}, torch {info['torch']} "
        f"(CUDA {info['cuda']}), {elapsed:.0f} s"
    )
    for check in smoke.checks.values():
        print(f"- {'PASS' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if args.keep is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run directory: {run_dir}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
