"""``gpu-watchdog clients`` and ``send`` against a live control server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from control_helpers import REPO, wait_for

from watchdog.cli import build_parser
from watchdog.commands import clients as clients_command
from watchdog.commands import send as send_command
from watchdog.testing import FakeDaemon

pytest_plugins = ["control_fixtures"]


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


@pytest.fixture
def attached():
    """A FakeDaemon with this process attached and a thread calling step()."""
    import watchdog

    with FakeDaemon() as daemon:
        wd = watchdog.attach(
            socket_path=daemon.socket_path, job="cli-job", checkpoint=lambda step: {"saved": step}
        )
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                wd.step()
                stop.wait(0.002)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        daemon.wait_for_client()
        wait_for(lambda: daemon.clients()[0].report.step is not None)
        yield daemon
        stop.set()
        thread.join()
        wd.close()


def test_clients_lists_this_process(attached):
    """`clients` prints one row per registered process, '-' for unknown figures."""
    result = run_cli("clients", "--socket", attached.socket_path)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:5] == ["PID", "JOB", "RANK", "DEVICE", "STEP"]
    assert row.split()[:2] == [str(os.getpid()), "cli-job"]
    assert " - " in row  # CPU: allocator figures unknown, not 0
    as_json = json.loads(run_cli("clients", "--json", "--socket", attached.socket_path).stdout)
    assert as_json[0]["allocated_bytes"] is None


def test_send_prints_result_and_exit_code(attached):
    """`send` prints each result; exit 0 when all ok, 1 when one failed."""
    ok = run_cli("send", "cli-job", "checkpoint", "--socket", attached.socket_path)
    assert ok.returncode == 0, ok.stderr
    assert "checkpoint ok" in ok.stdout
    assert "saved:" in ok.stdout
    failed = run_cli("send", str(os.getpid()), "dump_snapshot", "--socket", attached.socket_path)
    assert failed.returncode == 1
    assert "CUDA is not initialised" in failed.stdout
    stacks = run_cli("send", str(os.getpid()), "dump_stacks", "--socket", attached.socket_path)
    assert "most recent call first" in stacks.stdout


def test_send_errors_are_one_line(attached, short_dir):
    """Unknown targets and an absent daemon give one error line and a non-zero exit."""
    unknown = run_cli("send", "nobody", "checkpoint", "--socket", attached.socket_path)
    assert unknown.returncode == 1
    assert "no registered client" in unknown.stderr
    absent = run_cli("clients", "--socket", str(short_dir / "absent.sock"))
    assert absent.returncode == 1
    assert "cannot reach the daemon" in absent.stderr
    assert len(absent.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-5"])
def test_send_refuses_a_timeout_that_is_no_positive_number(attached, timeout):
    """A --timeout that is not a positive number is one line naming it, and nothing is sent."""
    result = run_cli(
        "send", "cli-job", "checkpoint", "--timeout", timeout, "--socket", attached.socket_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gpu-watchdog send: error: --timeout must be a number of seconds > 0, got {timeout}"
    ]
    assert attached.server.stats()[0] == {}  # no command counted: nothing was sent


@pytest.mark.parametrize("timeout", ["1e10", "86401"])
def test_send_refuses_a_timeout_past_a_day(attached, timeout):
    """A --timeout longer than a day is one range error and exit 2, not an overflow traceback."""
    result = run_cli(
        "send", "cli-job", "checkpoint", "--timeout", timeout, "--socket", attached.socket_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gpu-watchdog send: error: --timeout must be at most 86400 seconds (a day), "
        f"got {float(timeout):g}"
    ]
    assert attached.server.stats()[0] == {}


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["clients", "--socket", ""], {}),
        (["clients"], {"GPU_WATCHDOG_SOCKET": ""}),
        (["send", "1", "empty_cache", "--socket", ""], {}),
        (["send", "1", "empty_cache"], {"GPU_WATCHDOG_SOCKET": ""}),
        (["check-config"], {"GPU_WATCHDOG_SOCKET": ""}),
        (["run", "--simulate", "leak"], {"GPU_WATCHDOG_SOCKET": ""}),
    ],
)
def test_an_empty_socket_path_is_a_usage_error(argv, env):
    """An empty --socket or GPU_WATCHDOG_SOCKET is one usage line, exit 2: never the default."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **env},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    # The configuration may refuse the empty value itself ("control.socket_path must not
    # be empty"); either way it is one line about the empty socket path.
    assert "socket" in line
    assert "empty" in line


def test_what_clients_sent_is_escaped_in_the_table():
    """Control characters a client sent print escaped, so each client is one table row."""
    table = clients_command.format_table(
        [
            {
                "pid": 7,
                "job": "evil\n\x1b[31mRED\x00",
                "device": "cuda:0\r\nX\u202e",
                "heartbeat_age_s": 0.0,
                "growth_planned_s": 1e300,
            }
        ]
    )
    _header, row = table.splitlines()
    for raw in ("\x1b", "\x00", "\r"):
        assert raw not in table
    assert "evil\\n\\x1b[31mRED\\x00" in row
    assert "cuda:0\\r\\nX\\u202e" in row
    assert row.endswith(">360m")


def test_what_a_process_answered_is_escaped_by_send():
    """Error text and details are one escaped line each; stacks keep their newlines only."""
    text = send_command.describe(
        {
            "pid": 1,
            "job": "j",
            "rank": 0,
            "command": "dump_stacks",
            "ok": False,
            "duration_s": 1e300,
            "error": "boom\n\x1b]0;owned\x07",
            "details": {"path\x1b": "/x\ny", "stacks": "Thread 1\n  \x1b[2Jframe"},
        }
    )
    assert text.splitlines() == [
        "pid 1 (job j, rank 0): dump_stacks FAILED in 1e+300 s",
        "  error: boom\\n\\x1b]0;owned\\x07",
        "  path\\x1b: /x\\ny",
        "Thread 1",
        "  \\x1b[2Jframe",
    ]


def test_send_to_a_target_of_other_digits_is_an_unknown_job(attached):
    """A target "²" (str.isdigit, yet no int) is a job name nobody has, not a traceback."""
    result = run_cli("send", "\u00b2", "checkpoint", "--socket", attached.socket_path)
    assert result.returncode == 1
    assert "no registered client is pid or job '²'" in result.stderr


def test_socket_from_environment(attached):
    """GPU_WATCHDOG_SOCKET points `clients` at the daemon when --socket is not given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    env["GPU_WATCHDOG_SOCKET"] = attached.socket_path
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "clients"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "cli-job" in result.stdout


def test_table_and_describe_formatting():
    """Byte figures are human-readable; stacks print after the result line."""
    table = clients_command.format_table(
        [
            {
                "pid": 1,
                "job": "j",
                "rank": 0,
                "device": "cuda:0",
                "step": 3,
                "allocated_bytes": 3 << 30,
                "reserved_bytes": None,
                "peak_allocated_bytes": 1536,
                "alloc_retries": 0,
                "ooms": 0,
                "rss_bytes": 10,
                "heartbeat_age_s": 1.25,
            }
        ]
    )
    assert "3.0G" in table
    assert "1.5K" in table
    assert table.splitlines()[1].endswith("1.2s  -")
    planned = clients_command.format_table(
        [
            {
                "pid": 2,
                "job": "j",
                "heartbeat_age_s": 0.0,
                "growth_planned_s": 540.0,
                "growth_up_to_bytes": 30 << 30,
            },
            {"pid": 3, "job": "j", "heartbeat_age_s": 0.0, "growth_planned_s": 42.0},
        ]
    )
    assert planned.splitlines()[1].endswith("9m to 30.0G")
    assert planned.splitlines()[2].endswith("42s")
    text = send_command.describe(
        {
            "pid": 1,
            "job": "j",
            "rank": 0,
            "command": "dump_stacks",
            "ok": True,
            "duration_s": 0.001,
            "details": {"stacks": "Thread 0x1", "threads": {}},
        }
    )
    assert text.splitlines() == ["pid 1 (job j, rank 0): dump_stacks ok in 0.001 s", "Thread 0x1"]
    no_rank = send_command.describe(
        {"pid": 1, "job": "j", "rank": None, "command": "checkpoint", "ok": True}
    )
    assert no_rank == "pid 1 (job j, rank -): checkpoint ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_send_refused_to_another_user():
    """Over the socket, uid comes from SO_PEERCRED: nobody may not command root's process."""
    import shutil

    import watchdog

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")
    with FakeDaemon(socket_mode="0666") as daemon:
        os.chmod(os.path.dirname(daemon.socket_path), 0o755)
        wd = watchdog.attach(socket_path=daemon.socket_path, job="root-job")
        try:
            daemon.wait_for_client()
            env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
            as_nobody = subprocess.run(
                [
                    setpriv,
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    sys.executable,
                    "-m",
                    "watchdog",
                    "send",
                    "root-job",
                    "dump_stacks",
                    "--socket",
                    daemon.socket_path,
                ],
                capture_output=True,
                text=True,
                cwd="/",
                env={**env, "PYTHONPATH": str(REPO)},
                timeout=60,
            )
            listed = subprocess.run(
                [
                    setpriv,
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    sys.executable,
                    "-m",
                    "watchdog",
                    "clients",
                    "--socket",
                    daemon.socket_path,
                ],
                capture_output=True,
                text=True,
                cwd="/",
                env={**env, "PYTHONPATH": str(REPO)},
                timeout=60,
            )
        finally:
            wd.close()
    assert as_nobody.returncode == 1, as_nobody.stderr
    assert "uid 65534 may not command" in as_nobody.stderr
    assert listed.returncode == 0, listed.stderr


_REGISTER_AS = """
import socket, sys
from watchdog.control.protocol import FrameDecoder, encode
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(sys.argv[1])
sock.sendall(encode({"type": "register", "job": sys.argv[2]}))
decoder = FrameDecoder(1 << 20)
while True:
    data = sock.recv(65536)
    if not data:
        print("closed")
        break
    messages = list(decoder.feed(data))
    if messages:
        reply = messages[0]
        print(reply["type"], reply.get("code", ""), reply.get("message", ""))
        break
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_another_user_may_not_join_a_registered_job():
    """A job is acted on by name: a second uid registering under it is refused, its own is not."""
    import shutil

    import watchdog

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")

    def register_as_nobody(socket_path: str, job: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
        done = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                _REGISTER_AS,
                socket_path,
                job,
            ],
            capture_output=True,
            text=True,
            cwd="/",
            env={**env, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with FakeDaemon(socket_mode="0666") as daemon:
        os.chmod(os.path.dirname(daemon.socket_path), 0o755)
        wd = watchdog.attach(socket_path=daemon.socket_path, job="root-job")
        try:
            daemon.wait_for_client()
            taken = register_as_nobody(daemon.socket_path, "root-job")
            own = register_as_nobody(daemon.socket_path, "nobody-job")
            jobs = {c.job for c in daemon.server.clients()}
        finally:
            wd.close()
    assert taken.startswith("error job_taken job 'root-job' is registered by another user")
    assert own.startswith("registered")
    assert jobs == {"root-job"}  # the refused one never joined; the other has left


def test_send_dir_is_taken_from_where_the_command_runs(monkeypatch, tmp_path):
    """A relative --dir names a directory under the caller's working directory, not the job's."""
    sent: list[dict[str, object]] = []

    class Requester:
        def __init__(self, path: str) -> None:
            pass

        def __enter__(self) -> Requester:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def send(self, target, action, args, timeout_s):
            sent.append(args)
            return [{"pid": 1, "job": "j", "rank": 0, "command": action, "ok": True}]

    monkeypatch.setattr(send_command, "ControlRequester", Requester)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["send", "1", "dump_snapshot", "--dir", "snaps"])
    assert send_command.run(args) == 0
    assert sent == [{"dir": str(tmp_path / "snaps")}]
