"""``gpu-watchdog status``'s table: what other users' processes chose stays on its line."""

from __future__ import annotations

from watchdog.commands.status import render
from watchdog.daemon.state import Snapshot
from watchdog.samples import NVML, DeviceSample, GpuProcessSample, HostProcessSample, Owner

GIB = 1 << 30


def test_a_process_s_owner_and_command_are_escaped() -> None:
    """SLURM_JOB_ID and the command line come from the process: a newline or an escape
    sequence in them is shown escaped, one row per process."""
    host = HostProcessSample(
        pid=4242,
        command="py\n\x1b[2J",
        owner=Owner(slurm_job_id="7\r\x1b[2J"),
    )
    snap = Snapshot(
        origin=NVML,
        devices=(DeviceSample(gpu=0, name="Test GPU", total_bytes=16 * GIB, used_bytes=GIB),),
        processes=(GpuProcessSample(gpu=0, pid=4242, used_bytes=GIB),),
        host_processes=(host,),
        host_memory=None,
        collectors=(),
        taken_mono=0.0,
    )
    lines = render(snap).splitlines()
    assert len(lines) == 4
    row = lines[-1]
    assert "\x1b" not in row
    assert "\r" not in row
    assert "slurm:7\\r\\x1b[2J" in row
    assert row.endswith("py\\n\\x1b[2J")
