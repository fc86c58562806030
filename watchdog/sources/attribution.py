"""Who owns a process: systemd unit, Slurm job, container, Kubernetes pod.

Read from ``/proc/<pid>/cgroup`` and, where readable, ``/proc/<pid>/environ``.
The proc root is a parameter so tests run the parser on fixture trees and a
containerised daemon can read the host's procfs.
"""

from __future__ import annotations

import re
from pathlib import Path

from watchdog.identity import proc_file
from watchdog.samples import Owner

_HEX64 = r"[0-9a-f]{64}"
_CONTAINER = re.compile(
    rf"(?:docker|cri-containerd|crio|libpod|containerd)[-/]({_HEX64})|/({_HEX64})(?:\.scope)?$"
)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)")
_UNIT = re.compile(r"([^/]+\.(?:service|scope))$")
_ENV_LIMIT = 1 << 20  # an environment larger than this is not worth reading


def parse_cgroup(text: str) -> Owner:
    """Owner fields found in the contents of a ``/proc/<pid>/cgroup`` file."""
    container = pod = job = unit = ""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if not path:
            continue
        if not container and (match := _CONTAINER.search(path)):
            container = match.group(1) or match.group(2)
        if not pod and (match := _POD.search(path)):
            pod = match.group(1).replace("_", "-")
        if not job and (match := _SLURM_JOB.search(path)):
            job = match.group(1)
        if not unit and (match := _UNIT.search(path)) and not container:
            unit = match.group(1)
    return Owner(systemd_unit=unit, slurm_job_id=job, container_id=container, pod_uid=pod)


def parse_environ(data: bytes) -> dict[str, str]:
    """The variables of a ``/proc/<pid>/environ`` file (NUL-separated ``KEY=VALUE``)."""
    variables = {}
    for entry in data.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            variables[key.decode(errors="replace")] = value.decode(errors="replace")
    return variables


def owner_of(pid: int, proc_root: Path = Path("/proc")) -> Owner:
    """The owner of ``pid``; fields that cannot be read stay empty (never an exception)."""
    try:
        with open(proc_file(proc_root, pid, "cgroup"), encoding="utf-8", errors="replace") as text:
            owner = parse_cgroup(text.read())
    except OSError:
        owner = Owner()
    if owner.slurm_job_id:
        return owner
    try:
        with open(proc_file(proc_root, pid, "environ"), "rb") as stream:
            environ = parse_environ(stream.read(_ENV_LIMIT))
    except OSError:  # another user's environ is unreadable without privileges
        return owner
    job = environ.get("SLURM_JOB_ID", "")
    if job.isdigit():
        return Owner(owner.systemd_unit, job, owner.container_id, owner.pod_uid)
    return owner
