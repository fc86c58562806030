"""Runs as pid 1 of a new pid namespace: a daemon, then two processes that get the same pid.

Usage (as root): unshare --pid --fork --mount-proc python tests/pid_reuse_launcher.py RUN_DIR

The daemon (tests/fault_helpers.py's config, ladder leak -> checkpoint) runs in
the namespace, so the pids it sees are the namespace's. Process A (job
``old-job``) leaks host memory until the daemon has raised the leak and A has
run the checkpoint it was sent. A is SIGKILLed, and process B (job
``new-job``, no leak) is forked at once with A's pid, set through
``/proc/sys/kernel/ns_last_pid`` as CRIU does. B is forked from this process,
which has already imported everything, so it registers within milliseconds,
before the daemon's next host poll can notice that A is gone.

Prints one JSON line: ``{"pid": P, "a": ..., "b": ...}``; A's and B's output
are in RUN_DIR/a.out and RUN_DIR/b.out. When this process exits, the kernel
ends everything else in the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from fault_helpers import (
    journal,
    metrics_url,
    run_client,
    start_daemon,
    wait_for_host_polls,
    wait_until,
    write_config,
)

PID = 4000
"""A's and B's pid: far above what the daemon and its threads take in the namespace."""


def fork_with_pid(pid: int, child: Callable[[], None]) -> int:
    """Fork ``child`` as process ``pid``; the child waits until its pid is confirmed."""
    for _ in range(5):
        ready_r, ready_w = os.pipe()
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        forked = os.fork()
        if forked == 0:
            os.close(ready_w)
            go = os.read(ready_r, 1)
            if go == b"1":
                try:
                    child()
                finally:
                    os._exit(0)
            os._exit(1)
        os.close(ready_r)
        if forked == pid:
            os.write(ready_w, b"1")
            os.close(ready_w)
            return forked
        os.close(ready_w)  # another process took the pid first: that child exits; again
        os.waitpid(forked, 0)
    raise RuntimeError(f"could not fork a process with pid {pid}")


def client(run_dir: Path, job: str, leak_mib_per_s: float, out: str) -> Callable[[], None]:
    """The child's body: output to ``out``, then a training loop attached to the daemon."""

    def body() -> None:
        fd = os.open(run_dir / out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        run_client(str(run_dir / "wd.sock"), job, leak_mib_per_s, str(run_dir / f"ckpt-{job}"))

    return body


def said(run_dir: Path, out: str, prefix: str) -> bool:
    path = run_dir / out
    return path.exists() and any(line.startswith(prefix) for line in path.read_text().splitlines())


def main() -> None:
    run_dir = Path(sys.argv[1])
    # No restart of a series on a fall of memory: only the pid's identity tells A from B.
    config = write_config(
        run_dir, "checkpoint", "cooldown_s = 900.0", detection="reset_drop_ratio = 1.0"
    )
    daemon = start_daemon(run_dir, config)
    a = fork_with_pid(PID, client(run_dir, "old-job", 32.0, "a.out"))
    wait_until(lambda: said(run_dir, "a.out", "checkpoint end"), 90, "A's checkpoint")
    os.kill(a, signal.SIGKILL)
    os.waitpid(a, 0)
    b = fork_with_pid(PID, client(run_dir, "new-job", 0.0, "b.out"))
    wait_until(lambda: said(run_dir, "b.out", "registered 1"), 30, "B to register")
    seen = len(journal(run_dir))

    def settled() -> bool:
        """A's finding cleared since B came, or (the bug) something decided for B's job."""
        return any(
            (e.get("type") == "finding" and e.get("state") == "cleared" and e.get("pid") == PID)
            or e.get("job") == "new-job"
            for e in journal(run_dir)[seen:]
        )

    wait_until(settled, 30, "the daemon to notice the new process")
    wait_for_host_polls(metrics_url(run_dir / "daemon.log"), 8)  # and nothing sent to B
    print(json.dumps({"pid": PID, "a": a, "b": b}), flush=True)
    os.kill(b, signal.SIGKILL)
    os.waitpid(b, 0)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)


if __name__ == "__main__":
    main()
