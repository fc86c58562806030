"""benchmarks/bench_nvml_poll.py keeps working: its workers run on the fake library."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, require_tool
from tests.fake_libnvml import FakeNvml, FakeProcess, FakeState, compiler, gpus

BENCH = REPO / "benchmarks" / "bench_nvml_poll.py"


@pytest.mark.parametrize("contender", ["ours", "gpustat", "nvitop"])
def test_each_worker_polls_the_fake_library(tmp_path: Path, contender: str) -> None:
    """Each contender's worker polls one fake GPU and reports a positive CPU cost per poll."""
    require_tool(Path(compiler() or "cc").name)
    if contender != "ours" and importlib.util.find_spec(contender) is None:
        pytest.skip(f"{contender} is installed only for the benchmark")
    state = FakeState(gpus=gpus(1))
    state.gpus[0].processes = [FakeProcess(pid=1)]
    fake = FakeNvml(tmp_path / "nvml.json", state)
    env = fake.env()
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [PYTHON, str(BENCH), "--worker", contender, "--polls", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["cpu_ms"] > 0
    if contender == "ours":
        assert {"nvml_devices", "nvml_processes", "host"} <= set(result["parts_ms"])
