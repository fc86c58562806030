"""attach() checks its arguments and environment at the call; once attached, the daemon
can neither stop nor spin the training process, nor keep a dead one looking alive."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from control_helpers import REPO, wait_for

from watchdog.client import CheckpointStore, Deferred, attach, handle
from watchdog.client import commands as client_commands
from watchdog.client import link as link_module
from watchdog.testing import FakeDaemon

try:
    import torch
except ImportError:  # the core test environment has no torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

pytest_plugins = ["control_fixtures"]

_LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_ERROR_FILE",
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "GPU_WATCHDOG_RESTART_MODE",
    "GPU_WATCHDOG_CHECKPOINT_DIR",
    "GPU_WATCHDOG_SNAPSHOT_DIR",
)


def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python of its own, from the repository, output captured."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No launcher or watchdog variables of the machine running the tests."""
    for name in _LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def offline(**options: Any) -> Any:
    """attach() with no background thread, so only its checks run."""
    return attach(socket_path="/nonexistent/wd.sock", connect=False, **options)


# --- 1. heartbeat_s -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 0, 1e-9, math.nan, math.inf, 1e10, "5", True])
def test_a_heartbeat_out_of_bounds_is_refused_at_attach(value):
    """A heartbeat that would spin the thread or fail every session is a ValueError now."""
    with pytest.raises(ValueError, match=r"heartbeat_s must be a number of seconds from 0\.05"):
        offline(heartbeat_s=value)


def test_a_heartbeat_from_the_daemon_is_kept_within_bounds():
    """A daemon's heartbeat_s of 1e300 (or 0) is clamped, not passed to select()."""
    link = link_module.Link("/nonexistent.sock", dict, dict, lambda m, g: None)
    link._accept_settings({"heartbeat_s": 1e300})
    assert link.heartbeat_s == 3600.0
    link._accept_settings({"heartbeat_s": 0})
    assert link.heartbeat_s == 0.05
    link._accept_settings({"heartbeat_s": 10**400})
    assert link.heartbeat_s == 3600.0


# --- 2. device ------------------------------------------------------------------------------


class FakeTorchDevice:
    """What attach() reads of a torch.device: ``type``, ``index`` and its text."""

    def __init__(self, text: str) -> None:
        self.type, _, index = text.partition(":")
        self.index = int(index) if index else None
        self._text = text

    def __str__(self) -> str:
        return self._text


@pytest.mark.parametrize(
    ("device", "named"),
    [
        (0, "cuda:0"),
        (1, "cuda:1"),
        ("cuda:2", "cuda:2"),
        ("cpu", "cpu"),
        (FakeTorchDevice("cuda:3"), "cuda:3"),
    ],
)
def test_a_device_is_taken_as_an_index_a_string_or_a_torch_device(device, named):
    """device=0 is GPU 0 (not "unset"), device=1 is cuda:1, a torch.device its text."""
    wd = offline(device=device)
    assert wd.device == named
    assert wd._registration()["device"] == named  # what the background thread sends


@needs_torch
def test_a_real_torch_device_is_taken():
    """torch.device("cuda:0") works on a CPU-only torch too (it is only a name)."""
    assert offline(device=torch.device("cuda:0")).device == "cuda:0"


@pytest.mark.parametrize(
    ("device", "error"),
    [(1.5, TypeError), (object(), TypeError), (-1, ValueError), ("cuda:x", ValueError)],
)
def test_a_device_of_another_kind_is_refused_at_attach(device, error):
    """Anything else is an error naming device, not an AttributeError on a background thread."""
    with pytest.raises(error, match="device must"):
        offline(device=device)


# --- 3. socket_path -------------------------------------------------------------------------


def test_a_socket_path_may_be_a_path_object(server_factory, handles):
    """socket_path=pathlib.Path(...) registers."""
    server = server_factory()
    wd = attach(socket_path=Path(server.socket_path))
    handles.append(wd)
    wait_for(server.clients, what="registration")
    assert wd.socket_path == server.socket_path


@pytest.mark.parametrize("value", [5, b"/run/wd.sock", ["/run/wd.sock"]])
def test_a_socket_path_of_another_kind_is_refused(value):
    """A socket path that connect() would refuse at every retry is a TypeError now."""
    with pytest.raises(TypeError, match="socket_path must be a str"):
        attach(socket_path=value, connect=False)


def test_a_socket_path_no_socket_can_have_is_refused(monkeypatch):
    """Over sun_path's length no daemon can listen: once a background retry for ever."""
    long_path = "/tmp/" + "d" * 120 + "/wd.sock"
    with pytest.raises(ValueError, match="socket_path is 133 bytes long"):
        attach(socket_path=long_path, connect=False)
    monkeypatch.setenv("GPU_WATCHDOG_SOCKET", long_path)
    with pytest.raises(ValueError, match="environment variable GPU_WATCHDOG_SOCKET is 133"):
        attach(connect=False)


# --- 4. close() while the daemon does not answer ----------------------------------------------


def test_close_is_prompt_while_the_daemon_never_answers_the_registration(short_dir, handles):
    """A daemon that accepts and never answers does not hold close() for seconds."""
    path = str(short_dir / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(4)
        listener.settimeout(10)
        wd = attach(socket_path=path)
        handles.append(wd)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(65536)  # the registration came; it is never answered
            started = time.monotonic()
            wd.close()
            assert time.monotonic() - started < 0.5
            assert not wd.link._thread.is_alive()


# --- 5. checkpoint_and_restart from a thread that is not the main one ---------------------------


def test_a_restart_from_a_training_thread_still_exits_with_the_code(tmp_path):
    """With restart_exit="raise" on a non-main thread the process exits 75, not 0."""
    # The daemon runs here, the job in a process of its own: the job exits as soon as
    # it has acknowledged the restart, so nothing inside it could report the result.
    script = textwrap.dedent(
        """
        import sys, threading, time
        import watchdog

        wd = watchdog.attach(socket_path=sys.argv[1], checkpoint=lambda step: {})

        def train():
            while True:
                wd.step()
                time.sleep(0.005)

        threading.Thread(target=train, name="trainer", daemon=True).start()
        time.sleep(30)  # the trainer thread must end the process before this does
        """
    )
    with FakeDaemon() as daemon:
        job = subprocess.Popen(
            [sys.executable, "-c", script, daemon.socket_path],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            daemon.wait_for_client(job.pid)
            (result,) = daemon.send("checkpoint_and_restart", target=job.pid, timeout_s=10)
            _, stderr = job.communicate(timeout=30)
        finally:
            if job.poll() is None:
                job.kill()
                job.communicate()
    assert result.ok, result.error
    assert job.returncode == 75, stderr
    assert "not the main thread" in stderr


# --- 6. fork ----------------------------------------------------------------------------------


def test_a_forked_child_lets_go_of_the_connection(server_factory):
    """A parent killed with SIGKILL leaves the daemon at once, though its forked child lives."""
    server = server_factory()
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        import watchdog

        wd = watchdog.attach(socket_path={server.socket_path!r})
        while not wd.link.connected.is_set():
            time.sleep(0.01)
        child = os.fork()
        if child == 0:  # a DataLoader worker, say: outlives the parent for a while
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)  # let go of the test's pipes: it waits for their end
            os.dup2(quiet, 2)
            time.sleep(20)
            os._exit(0)
        print(child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = _run_python(script)
    child = int(done.stdout.split()[0])
    try:
        assert done.returncode == -9
        os.kill(child, 0)  # the child is still alive
        wait_for(lambda: not server.clients(), timeout_s=3, what="the killed parent to go")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, 9)


# --- 7. restart_exit_code ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 256, 300, -1, "75", 75.0, True])
def test_a_restart_exit_code_outside_1_to_255_is_refused(code):
    """0 would end the job, 300 exits 44, "75" exits 1: each is a ValueError at attach."""
    with pytest.raises(ValueError, match="restart_exit_code must be an integer"):
        offline(restart_exit_code=code)


# --- 8. Deferred ------------------------------------------------------------------------------


def test_a_deferred_save_may_fail_with_an_exception(server_factory, handles):
    """fail(OSError(...)) answers the command with the exception's text."""
    server = server_factory()

    def checkpoint(step: int) -> Deferred:
        deferred = Deferred()
        error = OSError(errno.ENOSPC, "No space left on device")
        threading.Timer(0.05, deferred.fail, args=(error,)).start()
        return deferred

    wd = attach(socket_path=server.socket_path, checkpoint=checkpoint)
    handles.append(wd)
    wait_for(server.clients)
    stop = threading.Event()

    def train() -> None:
        while not stop.is_set():
            wd.step()
            time.sleep(0.002)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    try:
        (result,) = server.send_command(os.getpid(), "checkpoint", requester_uid=0, timeout_s=5)
    finally:
        stop.set()
        trainer.join()
    assert not result.ok
    assert result.error.startswith("OSError: [Errno 28] No space left on device")


@pytest.mark.parametrize(
    ("call", "argument"),
    [("resolve", "done"), ("resolve", [1, 2]), ("resolve", 3), ("fail", 123), ("fail", None)],
)
def test_a_deferred_refuses_what_it_cannot_report_and_stays_open(call, argument):
    """A bad argument raises TypeError naming it, before anything is marked done."""
    finished: list[tuple[Any, str]] = []
    deferred = Deferred()
    deferred._finish = lambda details, error: finished.append((details, error))
    with pytest.raises(TypeError, match=r"details must be a dict|error must be an exception"):
        getattr(deferred, call)(argument)
    assert not deferred.done
    assert finished == []
    deferred.resolve({"path": "/ck/1.pt"})  # still answerable, once
    deferred.fail("late")
    assert finished == [({"path": "/ck/1.pt"}, "")]


# --- 9. steps and checkpoint names ---------------------------------------------------------


@pytest.mark.parametrize("step", [-1, 2**63, 10**30])
def test_a_step_the_daemon_would_refuse_is_a_value_error(step, handles):
    """Negative or >= 2**63: refused at the call, the count left as it was."""
    wd = offline()
    handles.append(wd)
    wd.step(5)
    with pytest.raises(ValueError, match="step must be from 0 to 2"):
        wd.step(step)
    assert wd.step_count == 5


def test_a_numpy_step_out_of_range_is_a_value_error_too(handles):
    """The slow path (integers of other kinds) checks the range as well."""
    numpy = pytest.importorskip("numpy")
    wd = offline()
    handles.append(wd)
    with pytest.raises(ValueError, match="step must be from 0"):
        wd.step(numpy.int64(-3))
    wd.step(numpy.int64(7))
    assert wd.step_count == 7


def test_checkpoints_past_twelve_digits_are_found_and_pruned(tmp_path):
    """ckpt-1000000000002.pt (13 digits) is the newest, and old ones are pruned past it."""
    store = CheckpointStore(tmp_path, keep=2)
    for step in (5, 10**12 + 2, 10**12 + 3):
        store.path_for(step).write_bytes(b"x")
    assert store.path_for(10**12 + 2).name == "ckpt-1000000000002.pt"
    assert [p.name for p in store.complete()] == [
        "ckpt-1000000000003.pt",
        "ckpt-1000000000002.pt",
        "ckpt-000000000005.pt",
    ]
    store.prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-1000000000002.pt",
        "ckpt-1000000000003.pt",
    ]
    assert store.path_for(7).name == "ckpt-000000000007.pt"  # still 12 digits at least


@needs_torch
def test_a_token_counter_step_resumes(tmp_path, handles):
    """wd.step(10**12) then a checkpoint: resume() finds it (not None)."""
    model = torch.nn.Linear(2, 2)
    wd = offline(model=model, checkpoint_dir=tmp_path)
    handles.append(wd)
    wd.step(10**12 + 2)
    wd.save_checkpoint()
    wd.step_count = 0
    assert wd.resume() == 10**12 + 2


# --- 10. failure text -------------------------------------------------------------------------


def test_an_os_error_leads_with_itself_not_its_context():
    """ENOSPC raised while handling EXDEV is reported as ENOSPC."""
    try:
        try:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        except OSError:
            raise OSError(errno.ENOSPC, "No space left on device")  # noqa: B904
    except OSError as exc:
        text = handle._failure_text(exc)
    assert text == "OSError: [Errno 28] No space left on device"


# --- 11. expect_growth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((600, 2**63), "up_to_bytes must be a positive integer below 2\\*\\*63"),
        ((600, 2**70), "up_to_bytes"),
        ((10**400,), "for_s must be a positive number"),
        ((math.nan,), "for_s must be a positive number"),
    ],
)
def test_a_growth_plan_the_daemon_would_refuse_is_a_value_error(args, match, handles):
    """up_to_bytes from 2**63 up, or a for_s too large for a float: ValueError at the call."""
    wd = offline()
    handles.append(wd)
    with pytest.raises(ValueError, match=match):
        wd.expect_growth(*args)
    assert wd._growth is None


def test_a_growth_plan_takes_numpy_numbers(handles):
    """np.float32 seconds and np.int64 bytes, as step() takes numpy integers."""
    numpy = pytest.importorskip("numpy")
    wd = offline()
    handles.append(wd)
    wd.expect_growth(numpy.float32(600), up_to_bytes=numpy.int64(1 << 30))
    assert wd._growth is not None
    assert wd._growth[1] == 1 << 30
    assert type(wd._growth[1]) is int
    assert wd._planned()["growth_up_to_bytes"] == 1 << 30


# --- 12. ranks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"rank": "0"}, "rank"),
        ({"rank": -1}, "rank"),
        ({"rank": 1.0}, "rank"),
        ({"world_size": 1.0}, "world_size"),
        ({"world_size": 0}, "world_size"),
        ({"local_rank": "1"}, "local_rank"),
        ({"local_rank": -2}, "local_rank"),
        ({"rank": 2, "world_size": 2}, "rank must be less than world_size"),
    ],
)
def test_ranks_the_daemon_would_refuse_are_refused_at_attach(options, named):
    """A rank the daemon refuses would be "no daemon at ..." forever: a ValueError now."""
    with pytest.raises(ValueError, match=named):
        offline(**options)


def test_an_explicit_rank_must_fit_the_launchers_world_size(monkeypatch):
    """rank=4 where WORLD_SIZE=4 is refused; rank=3 is taken."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="rank 4 of 4"):
        offline(rank=4)
    assert offline(rank=3).ranks["world_size"] == 4


# --- 13. callbacks and directories --------------------------------------------------------------


@pytest.mark.parametrize("option", ["checkpoint", "resume"])
def test_a_callback_that_is_not_callable_is_refused(option):
    """checkpoint="/scratch/ckpt" (meant for checkpoint_dir) is a TypeError at attach."""
    with pytest.raises(TypeError, match=f"{option} must be a function"):
        offline(**{option: "/scratch/ckpt"})


@pytest.mark.parametrize("option", ["checkpoint_dir", "snapshot_dir"])
def test_a_directory_that_is_a_file_is_refused(option, tmp_path, monkeypatch):
    """A directory option naming a regular file: ValueError "is a file", option or variable."""
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match=f"{option} '.*afile' is a file"):
        offline(**{option: afile})
    variable = f"GPU_WATCHDOG_{option.upper()}"
    monkeypatch.setenv(variable, str(afile))
    with pytest.raises(ValueError, match=f"from {variable}"):
        offline()
    offline(**{option: tmp_path / "new"})  # one that does not exist yet is made later


# --- 14. numeric options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("keep_checkpoints", 2.5),
        ("keep_checkpoints", math.nan),
        ("keep_checkpoints", "2"),
        ("keep_checkpoints", 0),
        ("restart_wait_s", math.nan),
        ("restart_wait_s", -5),
        ("restart_wait_s", "30"),
        ("snapshot_max_entries", 0),
        ("snapshot_max_entries", "100"),
        ("snapshot_min_free_bytes", -1),
        ("snapshot_min_free_bytes", 1.5),
    ],
)
def test_a_numeric_option_is_checked_under_its_own_name(option, value):
    """Every numeric option: ValueError naming the option (not "keep")."""
    with pytest.raises(ValueError, match=f"^{option} must be"):
        offline(**{option: value})


def test_a_bad_second_attach_leaves_the_first_attached(server_factory, handles):
    """The options are checked before the running handle is replaced."""
    server = server_factory()
    first = attach(socket_path=server.socket_path)
    handles.append(first)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        attach(socket_path=server.socket_path, keep_checkpoints=0)
    assert not first.closed
    wait_for(server.clients)


# --- 15. the environment ----------------------------------------------------------------------


def test_a_bad_restart_mode_variable_is_named(monkeypatch):
    """GPU_WATCHDOG_RESTART_MODE=Raise: the error names the variable."""
    monkeypatch.setenv("GPU_WATCHDOG_RESTART_MODE", "Raise")
    with pytest.raises(ValueError, match="GPU_WATCHDOG_RESTART_MODE must be one of raise"):
        offline()
    assert offline(restart_exit="os_exit").restart_exit == "os_exit"  # the option wins


@pytest.mark.parametrize(
    "variable", ["RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID"]
)
@pytest.mark.parametrize("value", ["\u00b2", "-2", "1.0", "9" * 30])
def test_a_launcher_variable_that_is_no_integer_is_named(variable, value, monkeypatch):
    """RANK="²" (a digit to str.isdigit, not to int) etc.: ValueError naming the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"environment variable {variable} must be"):
        offline()


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK", "WORLD_SIZE"])
def test_minus_one_in_a_launcher_variable_is_not_distributed(variable, monkeypatch):
    """LOCAL_RANK=-1 is how some scripts say "no distributed run" (Hugging Face's default):
    read as unset, not a reason to stop the job at attach()."""
    monkeypatch.setenv(variable, "-1")
    assert offline().ranks[variable.lower()] is None


@pytest.mark.parametrize(
    ("variable", "value"), [("TORCHELASTIC_RUN_ID", "a\tb"), ("SLURM_JOB_ID", "7" * 300)]
)
def test_a_job_from_the_environment_names_its_variable(variable, value, monkeypatch):
    """A job id the daemon would refuse, from the launcher: the error names the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"job must .*from {variable}"):
        offline()
    assert offline(job="mine").job == "mine"  # the option wins


def test_a_restart_count_that_is_no_integer_refuses_the_group_restart():
    """TORCHELASTIC_RESTART_COUNT="²" makes a refusal, not a ValueError in the handler."""
    env = {"TORCHELASTIC_MAX_RESTARTS": "3", "TORCHELASTIC_RESTART_COUNT": "\u00b2"}
    assert "not started by torchrun" in client_commands.group_restart_refusal(env, 0, 1, {})
