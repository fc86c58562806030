"""A ControlServer in its own process, for tests that kill and restart "the daemon".

Usage: python tests/control_harness.py SOCKET_PATH [HEARTBEAT_S] [READ_TIMEOUT_S]
Prints "ready" once listening; serves until SIGTERM or SIGKILL.
"""

from __future__ import annotations

import signal
import sys
import threading

from watchdog.config import ControlSettings
from watchdog.control import ControlServer
from watchdog.logs import configure_logging


def main() -> None:
    path = sys.argv[1]
    heartbeat = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
    read_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    server = ControlServer(
        ControlSettings(socket_path=path, heartbeat_s=heartbeat, read_timeout_s=read_timeout)
    )
    configure_logging("info", "console", stream=sys.stderr)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print("ready", flush=True)
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
