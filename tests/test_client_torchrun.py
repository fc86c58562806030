"""torchrun restarts with the restart-safe process group (gloo, CPU, two ranks)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from control_helpers import REPO, TESTS

from watchdog.client.distributed import restart_prefix

pytest.importorskip("torch.distributed")

pytest_plugins = ["control_fixtures"]


def test_restart_prefix_from_environment():
    """The store prefix follows TORCHELASTIC_RESTART_COUNT."""
    assert restart_prefix({"TORCHELASTIC_RESTART_COUNT": "3"}) == "restart3"
    assert restart_prefix({}) == "restart0"


@pytest.mark.slow
def test_checkpoint_exit_and_torchrun_restart_resume(short_dir):
    """Both ranks checkpoint at one step and exit 75; torchrun restarts them; they resume."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    result = subprocess.run(
        [torchrun, "--nproc-per-node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", "localhost:0", "--monitor-interval", "0.2",
         str(TESTS / "ddp_loop.py"), str(short_dir / "none.sock"), str(short_dir / "ck"), "10",
         "helper"],
        capture_output=True, text=True, cwd=REPO, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = sorted(re.findall(r"done \d+ \d+ \d+", result.stdout))  # ranks share one pipe
    assert done == ["done 0 5 10", "done 1 5 10"], result.stdout + result.stderr[-2000:]
    assert [p.name for p in (short_dir / "ck").iterdir()] == ["ckpt-000000000005.pt"]
