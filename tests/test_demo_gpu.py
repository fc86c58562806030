"""``gpu-watchdog demo --gpu`` where no GPU is at hand: its refusal, and its NVML plumbing.

The GPU run itself needs CUDA (scripts/gpu_smoke_test.py and docs/demo.md
record it on hardware). Here: without CUDA it stops at once with one line and
exit 3, leaving nothing behind; and its daemon, started on real NVML (the
fake libnvidia-ml through the real bindings), is what the demo's GPU memory
line reads the training process's figure from.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.fake_libnvml import GIB, FakeNvml, FakeProcess, FakeState, compiler, gpus
from watchdog.demo.display import Display
from watchdog.demo.runner import (
    CudaDevice,
    Demo,
    DemoOptions,
    leak_rate_for,
    metric,
    scrape,
    start_daemon,
    stop_group,
)
from watchdog.errors import EXIT_NVML_UNAVAILABLE

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def test_gpu_leak_is_sized_to_the_card_within_gpu_bounds():
    """An 80 GiB card fills in ~45 min (~30 MiB/s); tiny and huge cards are bounded."""
    assert leak_rate_for(80 * GIB, gpu=True) == pytest.approx(80 * GIB / 2700)
    assert leak_rate_for(1 * GIB, gpu=True) == 8 * MIB
    assert leak_rate_for(10_000 * GIB, gpu=True) == 256 * MIB
    assert leak_rate_for(200 * GIB) == 32 * MIB  # host memory keeps its own bounds


def test_demo_gpu_without_cuda_exits_3_with_one_line_and_leaves_nothing(tmp_path):
    """No CUDA device: one line naming the problem, exit 3, no run directory left behind."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "demo", "--gpu"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert result.returncode == EXIT_NVML_UNAVAILABLE
    assert result.stderr.strip().splitlines() == [
        "gpu-watchdog demo: error: --gpu: torch sees no CUDA device "
        "(torch.cuda.is_available() is False)"
    ]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_gpu_demo_daemon_reads_nvml_and_the_display_shows_the_jobs_gpu_memory(
    tmp_path, monkeypatch
):
    """The --gpu daemon runs on NVML, not simulated, and the demo reads the job's VRAM from it."""
    if compiler() is None:
        require_tool("cc")
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    state = FakeState(gpus=gpus(1))
    state.gpus[0].processes = [FakeProcess(pid=job.pid, used_memory=3 * GIB)]
    fake = FakeNvml(tmp_path / "nvml.json", state)
    for key in ("LD_LIBRARY_PATH", "FAKE_NVML_STATE"):
        monkeypatch.setenv(key, fake.env()[key])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = io.StringIO()
    demo = Demo(DemoOptions(gpu=0, run_dir=run_dir), display=Display(out, live=False))
    demo.cuda = CudaDevice(0, "NVIDIA Fake A100 80GB", 80 * GIB, 79 * GIB)
    daemon, url = start_daemon(run_dir, real_nvml=True)
    demo.result.metrics_url = url
    try:
        assert _wait_for(lambda: demo._memory_of(job.pid) == 3 * GIB)
        state.gpus[0].processes[0].used_memory = 4 * GIB
        fake.write()
        # The demo polls the process list every second (production: every 5 s).
        assert _wait_for(lambda: demo._memory_of(job.pid) == 4 * GIB, timeout_s=10)
        metrics = scrape(url)
        assert metric(metrics, "gpu_watchdog_build_info", source="nvml") == 1
        assert metric(metrics, "gpu_watchdog_build_info", source="simulated") is None
        demo._rss = [3.0 * GIB, 4.0 * GIB]
        demo._status()
        assert "GPU mem" in out.getvalue()
    finally:
        stop_group(daemon)
        job.kill()
        job.wait()


def _wait_for(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_gpu_smoke_test_without_cuda_exits_2_with_one_line():
    """The smoke script loads (its imports from the demo hold) and refuses a host without CUDA."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_smoke_test.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["gpu_smoke_test: error: no CUDA device 0 here"]
