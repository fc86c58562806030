"""Runs the demo: the daemon, the training job, a launcher that restarts it, and the display.

By default the daemon runs on a SIMULATED idle GPU (the job trains on the
CPU) and watches the real host memory of the registered training process.
With ``gpu`` set (``gpu-watchdog demo --gpu``) the daemon reads real NVML and
the job trains on that CUDA device, leaking device memory. The demo
plays the launcher: when the job exits 75 after ``checkpoint_and_restart`` it
starts it again, as torchrun, systemd or Slurm would, and the new process
resumes from the checkpoint. Everything is started in its own process group
and stopped in ``finally``, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from watchdog.demo.display import MIB, Display, mib, minutes, sparkline
from watchdog.errors import EXIT_NVML_UNAVAILABLE, WatchdogError

CONFIG = Path(__file__).with_name("config.toml")
RESTART_EXIT_CODE = 75
TARGET_TIME_TO_OOM_S = 2700.0
"""The leak is sized to fill this host's available memory in about 45 minutes."""
MIN_LEAK_RATE = 2 * MIB
MAX_LEAK_RATE = 32 * MIB
MIN_GPU_LEAK_RATE = 8 * MIB
MAX_GPU_LEAK_RATE = 256 * MIB
MAX_LAUNCHES = 3
_ANNOUNCE = re.compile(r"metrics on (http://\S+)/metrics")


@dataclass(frozen=True)
class DemoOptions:
    """What ``gpu-watchdog demo`` was asked for."""

    steps: int = 1600
    leak: bool = True
    dry_run: bool = False
    listen: str = "127.0.0.1:0"
    run_dir: Path | None = None
    step_time_s: float = 0.05
    leak_rate: float | None = None  # bytes/s; None: sized to the host (or the GPU)
    gpu: int | None = None
    """CUDA device index: train there and watch it through real NVML. None: CPU job."""


@dataclass(frozen=True)
class CudaDevice:
    """What a short-lived probe process saw of one CUDA device."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass
class DemoResult:
    """What happened, also written to ``<run_dir>/summary.json``."""

    run_dir: str
    final_step: int | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    weights: str = ""
    metrics_url: str = ""
    leak_rate_bytes_per_s: float = 0.0
    findings: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The job finished all its steps."""
        return self.final_step is not None


def leak_rate_for(available_bytes: float, gpu: bool = False) -> float:
    """Bytes per second that fill ``available_bytes`` in ~45 min.

    Within 2 to 32 MiB/s for host memory; 8 to 256 MiB/s on a GPU, whose
    memory is filled faster (an 80 GiB card at ~30 MiB/s).
    """
    low, high = (MIN_GPU_LEAK_RATE, MAX_GPU_LEAK_RATE) if gpu else (MIN_LEAK_RATE, MAX_LEAK_RATE)
    return min(high, max(low, available_bytes / TARGET_TIME_TO_OOM_S))


_CUDA_PROBE = """
import json, sys
import torch
index = int(sys.argv[1])
if not torch.cuda.is_available():
    print(json.dumps({"error": "torch sees no CUDA device (torch.cuda.is_available() is False)"}))
elif index >= torch.cuda.device_count():
    print(json.dumps({"error": f"no CUDA device {index}: torch sees "
                               f"{torch.cuda.device_count()}"}))
else:
    free, total = torch.cuda.mem_get_info(index)
    print(json.dumps({"name": torch.cuda.get_device_name(index), "total": total, "free": free}))
"""


def probe_cuda(index: int, timeout_s: float = 120.0) -> CudaDevice:
    """The CUDA device ``index`` as a separate Python process sees it.

    A child process, so that this one never creates a CUDA context: the
    context would hold GPU memory for the whole demo and show up in NVML as
    another process on the card.

    Raises:
        WatchdogError: torch sees no such device, or the probe failed.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CUDA_PROBE, str(index)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise WatchdogError(
            f"--gpu: probing CUDA device {index} took over {timeout_s:.0f} s"
        ) from None
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {}
    except ValueError:
        found = {}
    if "error" in found:
        raise WatchdogError(f"--gpu: {found['error']}", EXIT_NVML_UNAVAILABLE)
    if done.returncode != 0 or "total" not in found:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WatchdogError(
            f"--gpu: probing CUDA device {index} failed: {tail}", EXIT_NVML_UNAVAILABLE
        )
    return CudaDevice(index, str(found["name"]), int(found["total"]), int(found["free"]))


class Demo:
    """One run of the demo; ``run()`` returns its result and leaves nothing running."""

    def __init__(self, options: DemoOptions, display: Display | None = None) -> None:
        self.options = options
        self.display = display or Display()
        self.run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix="gpu-watchdog-demo-"))
        self.state_dir = self.run_dir / "state"
        self.socket = self.run_dir / "watchdog.sock"
        self.result = DemoResult(run_dir=str(self.run_dir))
        self._daemon: subprocess.Popen[bytes] | None = None
        self._train: subprocess.Popen[str] | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._journal_offset = 0
        self._rss: list[float] = []
        self._step = 0
        self.cuda: CudaDevice | None = None

    # --- the run ------------------------------------------------------------------------

    def run(self) -> DemoResult:
        """Start the daemon, run the job to the end (restarting it on exit 75), stop all."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if self.options.gpu is not None:
            try:
                self.cuda = probe_cuda(self.options.gpu)
            except WatchdogError:
                if self.options.run_dir is None:  # ours, and still empty
                    self.run_dir.rmdir()
                raise
        try:
            self._start_daemon()
            self._header()
            self._launch_until_done()
            self._poll_journal()
            self._save_metrics()
        finally:
            stop_group(self._train)
            stop_group(self._daemon)
            self.result.wall_s = round(time.monotonic() - started, 1)
            (self.run_dir / "summary.json").write_text(json.dumps(asdict(self.result), indent=2))
        self._summary()
        return self.result

    def _start_daemon(self) -> None:
        self._daemon, self.result.metrics_url = start_daemon(
            self.run_dir, self.options.listen, self.options.dry_run, real_nvml=self.cuda is not None
        )

    def _header(self) -> None:
        cuda = self.cuda
        if cuda is None:
            available, where = float(psutil.virtual_memory().available), "this host's"
        else:
            available, where = float(cuda.free_bytes), f"cuda:{cuda.index}'s"
        rate = self.options.leak_rate or leak_rate_for(available, gpu=cuda is not None)
        self.result.leak_rate_bytes_per_s = rate if self.options.leak else 0.0
        show = self.display.line
        device = "CPU" if cuda is None else f"cuda:{cuda.index}, {cuda.name}"
        show(f"gpu-watchdog demo: a real PyTorch training job ({device}) watched by the daemon")
        show(f"  run directory  {self.run_dir}")
        daemon = f"pid {self._daemon.pid if self._daemon else '?'}"
        if cuda is None:
            show(
                f"  daemon         {daemon}: a SIMULATED idle GPU, plus the REAL host memory "
                "of the training process"
            )
        else:
            show(
                f"  daemon         {daemon}: REAL NVML (every GPU on this host), plus the host "
                "memory of the training process"
            )
        show(f"  metrics        {self.result.metrics_url}  (while the demo runs)")
        pace = 1 / self.options.step_time_s if self.options.step_time_s else 0
        show(f"  training job   {self.options.steps} steps at ~{pace:.0f} steps/s, fixed seed")
        if self.options.leak:
            memory = "host memory" if cuda is None else "GPU memory"
            show(
                f"  planted leak   validation losses kept with their autograd graphs "
                f"({memory}): ~{rate / MIB:.1f} MiB/s, sized to fill {where} "
                f"{mib(available)} free in ~{minutes(available / rate)}"
            )
        else:
            show("  planted leak   none (--no-leak): the daemon should leave the job alone")
        show(
            "  policy         demo config: leak -> dump_snapshot; leak with OOM predicted "
            "within 2 h -> checkpoint_and_restart"
        )
        show(
            "                 (the default ladder restarts only within 30 min of the OOM)"
            + ("; DRY RUN: decide and record, send nothing" if self.options.dry_run else "")
        )
        show("")

    def _launch_until_done(self) -> None:
        for launch in range(MAX_LAUNCHES):
            code = self._run_training(launch)
            self.result.exit_codes.append(code)
            if code == 0:
                return
            if code != RESTART_EXIT_CODE:
                raise WatchdogError(
                    f"the training job failed with status {code}; see {self.run_dir / 'train.log'}"
                )
            if launch + 1 < MAX_LAUNCHES:
                self.result.restarts += 1
                self.display.event(
                    "launcher",
                    f"exit {code}: starting the job again (as torchrun, systemd or Slurm would)",
                )
        raise WatchdogError(f"the job asked for a restart {MAX_LAUNCHES} times; giving up")

    def _run_training(self, launch: int) -> int:
        options = self.options
        rate = self.result.leak_rate_bytes_per_s
        command = [
            sys.executable,
            "-m",
            "watchdog.demo.train",
            "--steps",
            str(options.steps),
            "--checkpoint-dir",
            str(self.run_dir / "checkpoints"),
            "--out",
            str(self.run_dir / "final.pt"),
            "--leak-bytes-per-step",
            str(int(rate * options.step_time_s)),
            "--step-time",
            str(options.step_time_s),
            "--socket",
            str(self.socket),
        ]
        if self.cuda is not None:
            command += ["--device", f"cuda:{self.cuda.index}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
        with open(self.run_dir / "train.log", "a") as log:
            self._train = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                start_new_session=True,
            )
        assert self._train.stdout is not None
        reader = threading.Thread(target=self._read_events, args=(self._train.stdout,), daemon=True)
        reader.start()
        ticks = 0
        while self._train.poll() is None:
            self._tick(self._train.pid, sample=ticks % 4 == 0)
            ticks += 1
            time.sleep(0.25)
        reader.join(timeout=5)
        self._tick(None)
        return self._train.returncode

    def _read_events(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._events.put(event)

    # --- what the display shows -------------------------------------------------------

    def _tick(self, pid: int | None, sample: bool = False) -> None:
        self._poll_journal()  # first: a decision is journalled before the job acts on it
        while not self._events.empty():
            self._show_event(self._events.get_nowait())
        if pid is not None and sample:  # one sample a second, kept across restarts
            used = self._memory_of(pid)
            if used is not None:
                self._rss.append(used)
                self._status()

    def _memory_of(self, pid: int) -> float | None:
        """The figure the leak grows: host RSS, or (--gpu) the job's GPU memory per NVML."""
        if self.cuda is None:
            return _rss_with_children(pid)
        try:  # what the daemon sees, from its /metrics, rather than a second NVML client
            metrics = scrape(self.result.metrics_url)
        except (OSError, ValueError):
            return None
        return metric(metrics, "gpu_watchdog_process_gpu_memory_bytes", pid=str(pid))

    def _status(self) -> None:
        rss = self._rss[-1]
        rate = (self._rss[-1] - self._rss[-11]) / 10 if len(self._rss) > 10 else None
        label = "host RSS" if self.cuda is None else "GPU mem "
        text = f"{label} {sparkline(self._rss, 40)} {mib(rss):>8}"
        if rate is not None:
            text += f"  {rate / MIB:+5.1f} MiB/s"
        text += f"  step {self._step}/{self.options.steps}"
        self.display.status(text)

    def _show_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        show = self.display.event
        if kind == "start":
            resumed = event.get("resumed_from")
            how = f"resumed from step {resumed}" if resumed is not None else "fresh start"
            show("train", f"started, pid {event.get('pid')} ({how})")
        elif kind == "step":
            self._step = int(event.get("step", 0))
        elif kind == "restart":
            show(
                "train",
                f"checkpoint written at step {event.get('step')}: "
                f"{event.get('checkpoint')}; exiting with {event.get('code')}",
            )
        elif kind == "done":
            self._step = int(event.get("step", 0))
            self.result.final_step = self._step
            self.result.weights = str(event.get("out", ""))
            loss = event.get("loss")
            # None when a restart came on the last step: the resumed job has no step left.
            said = f"final loss {loss:.4f}" if isinstance(loss, (int, float)) else "no step left"
            show("train", f"finished at step {self._step}, {said}")

    def _poll_journal(self) -> None:
        path = self.state_dir / "journal.jsonl"
        try:
            with open(path, "rb") as stream:
                stream.seek(self._journal_offset)
                data = stream.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._journal_offset += end
        for raw in data[:end].splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            self._show_entry(entry)

    def _show_entry(self, entry: dict[str, Any]) -> None:
        kind = entry.get("type")
        show = self.display.event
        if kind == "finding":
            text = f"{entry.get('kind')} {entry.get('state')}: {entry.get('message')}"
            self.result.findings.append(text)
            show(
                str(entry.get("kind")).upper() if entry.get("state") == "raised" else "cleared",
                text,
            )
        elif kind == "decision":
            text = str(entry.get("message") or f"{entry.get('outcome')} {entry.get('action')}")
            self.result.decisions.append(f"{entry.get('outcome')} {entry.get('action')}")
            show("policy", text)
        elif kind == "result":
            ok = bool(entry.get("ok"))
            outcome = "ok" if ok else f"error: {entry.get('error')}"
            self.result.results.append(f"{entry.get('action')} {'ok' if ok else 'error'}")
            note = " (expected without CUDA)" if "CUDA" in str(entry.get("error")) else ""
            show("result", f"{entry.get('action')} from pid {entry.get('pid')}: {outcome}{note}")

    # --- the end ------------------------------------------------------------------------

    def _save_metrics(self) -> None:
        if not self.result.metrics_url:
            return
        try:
            with urllib.request.urlopen(self.result.metrics_url, timeout=5) as response:
                (self.run_dir / "metrics.txt").write_bytes(response.read())
        except OSError:
            pass

    def _summary(self) -> None:
        result, show = self.result, self.display.line
        show("")
        state = "finished" if result.ok else "did NOT finish"
        show(
            f"gpu-watchdog demo: the job {state}: step {result.final_step} of "
            f"{self.options.steps}, {result.restarts} restart(s), {result.wall_s:.0f} s"
        )
        sent = [d for d in result.decisions if d.startswith("send ")]
        show(
            f"  decisions      {len(result.decisions)} ({len(sent)} sent): "
            f"{', '.join(result.decisions) or 'none'}"
        )
        show(f"  final weights  {result.weights or '-'}")
        show(f"  journal        gpu-watchdog history --state-dir {self.state_dir}")
        show(
            f"  metrics        {self.run_dir / 'metrics.txt'} (the last scrape of "
            f"{result.metrics_url or 'the daemon'})"
        )
        show(f"  logs           {self.run_dir / 'daemon.log'}, {self.run_dir / 'train.log'}")
        show("  nothing is left running; remove the run directory when done")


def stop_group(process: subprocess.Popen[Any] | None) -> None:
    """End the process group ``process`` leads (started with start_new_session=True).

    SIGTERM, then SIGKILL after 10 s; then SIGKILL to any member the leader left behind.
    """
    if process is None:
        return
    for signum, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def start_daemon(
    run_dir: Path, listen: str = "127.0.0.1:0", dry_run: bool = False, real_nvml: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """``gpu-watchdog run`` with the demo's config, in its own process group.

    On a SIMULATED idle GPU, or with ``real_nvml`` on this host's NVML, its
    process list polled every second (the default 5 s is for production,
    where the list takes the driver's lock). Its socket is
    ``run_dir/watchdog.sock``, its journal ``run_dir/state``, its log
    ``run_dir/daemon.log``. Returns the process and its /metrics URL once the
    socket is served.

    Raises:
        WatchdogError: the daemon exited or did not start within 60 s (it is stopped).
    """
    socket = run_dir / "watchdog.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    env |= {
        "GPU_WATCHDOG_SOCKET": str(socket),
        "GPU_WATCHDOG_DAEMON_STATE_DIR": str(run_dir / "state"),
        "GPU_WATCHDOG_DAEMON_LOG_FORMAT": "json",
    }
    if dry_run:
        env["GPU_WATCHDOG_POLICY_DRY_RUN"] = "true"
    command = [sys.executable, "-m", "watchdog", "run", "--config", str(CONFIG), "--listen", listen]
    if real_nvml:
        env["GPU_WATCHDOG_SOURCES_PROCESS_INTERVAL_S"] = "1"
    else:
        trace = run_dir / "idle-gpu.csv"  # an idle 80 GiB GPU for a day: the job is on the CPU
        rows = [f"{t},0,,0,{80 << 30}" for t in (0, 86400)]
        trace.write_text("t,gpu,pid,used_bytes,total_bytes\n" + "\n".join(rows) + "\n")
        command += ["--simulate", str(trace)]
    log_path = run_dir / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = _ANNOUNCE.search(text)
        if found and socket.exists():
            return daemon, found.group(1) + "/metrics"
        if daemon.poll() is not None:
            tail = text.strip().splitlines()[-1:] or ["(no output)"]
            # Exit 3 (no NVML) passes through: `demo --gpu` on a host without a driver.
            code = EXIT_NVML_UNAVAILABLE if daemon.returncode == EXIT_NVML_UNAVAILABLE else None
            raise WatchdogError(
                f"the daemon exited with status {daemon.returncode}: {tail[0]}", code
            )
        time.sleep(0.1)
    stop_group(daemon)
    raise WatchdogError(f"the daemon did not start within 60 s; see {log_path}")


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 5.0) -> MetricSamples:
    """A /metrics page as ``{(name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(metrics: MetricSamples, name: str, **labels: str) -> float | None:
    """The first sample of ``name`` whose labels include ``labels``; None if there is none."""
    for (found, found_labels), value in metrics.items():
        if found == name and all(dict(found_labels).get(k) == v for k, v in labels.items()):
            return value
    return None


def _rss_with_children(pid: int) -> float | None:
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return float(total)
    except psutil.Error:
        return None
