"""The in-process library, attached to an in-process server: commands, failures, checkpoints."""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from control_helpers import wait_for

from watchdog.client import (
    RESTART_EXIT_CODE,
    CheckpointStore,
    Deferred,
    RestartRequested,
    attach,
)
from watchdog.client.checkpoint import atomic_write

try:
    import torch
except ImportError:  # the core test environment has no torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

pytest_plugins = ["control_fixtures"]


@pytest.fixture
def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def train_in_thread(wd, stop: threading.Event, pause: float = 0.001) -> threading.Thread:
    """A training loop calling wd.step() in its own thread until ``stop``."""

    def loop() -> None:
        while not stop.is_set():
            try:
                wd.step()
            except SystemExit:
                return
            time.sleep(pause)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def checkpoint_while_training(server, wd):
    """Send ``checkpoint`` to this process while a thread trains: (its one result, the thread)."""
    stop = threading.Event()
    trainer = train_in_thread(wd, stop)
    try:
        (result,) = server.send_command(os.getpid(), "checkpoint", requester_uid=0, timeout_s=10)
    finally:
        stop.set()
        trainer.join()
    return result, trainer.name


def test_import_is_cheap():
    """Importing watchdog and attaching pulls in neither torch nor any framework."""
    import subprocess

    code = (
        "import sys, watchdog; wd = watchdog.attach(socket_path='/nonexistent/s'); wd.step(); "
        "wd.close(); print(sorted(m for m in ('torch', 'lightning', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_step_fast_path_calls_nothing(handles):
    """step() with nothing pending calls no C function at all (so no system call)."""
    wd = attach(socket_path="/nonexistent/s", connect=False)
    handles.append(wd)
    calls = []

    def profile(frame, event, arg):
        if event.startswith("c_"):
            calls.append(arg)

    wd.step()
    sys.setprofile(profile)
    try:
        wd.step()
        wd.step(41)
    finally:
        sys.setprofile(None)
    calls = [c for c in calls if getattr(c, "__name__", "") != "setprofile"]
    assert calls == []
    assert wd.step_count == 41


def test_no_daemon_warns_once_and_trains_on(short_dir, caplog, handles):
    """Without a daemon: one warning, steps keep working, retries stay quiet."""
    caplog.set_level(logging.DEBUG, logger="watchdog.client")
    wd = attach(socket_path=str(short_dir / "none.sock"))
    handles.append(wd)
    for _ in range(1000):
        wd.step()
    wait_for(lambda: sum(1 for r in caplog.records if "retrying" in r.message), what="warning")
    time.sleep(1.0)  # several retries with backoff
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "no daemon" in warnings[0].message
    assert sum(1 for r in caplog.records if "still no daemon" in r.message) >= 2
    assert wd.step_count == 1000


def test_daemon_appears_later(server_factory, short_dir, handles):
    """A client started before the daemon registers once the daemon comes up."""
    path = short_dir / "run" / "wd.sock"
    wd = attach(socket_path=str(path))
    handles.append(wd)
    time.sleep(0.3)
    server = server_factory()
    wait_for(server.clients, what="late registration")


@needs_torch
def test_commands_run_on_the_training_thread(
    server_factory, model_and_optimizer, short_dir, handles
):
    """checkpoint runs inside step() on the training thread and its result comes back."""
    server = server_factory()
    model, optimizer = model_and_optimizer
    seen_threads = []

    def checkpoint(step):
        seen_threads.append(threading.current_thread().name)
        return {"saved_at": step}

    wd = attach(model, optimizer, socket_path=server.socket_path, checkpoint=checkpoint)
    handles.append(wd)
    wait_for(server.clients)
    result, trainer = checkpoint_while_training(server, wd)
    assert result.ok, result.error
    assert result.details["saved_at"] == result.details["step"]
    assert seen_threads == [trainer]
    assert result.duration_s is not None


def _disk_full(step):
    raise OSError(errno.ENOSPC, "No space left on device")


def _disk_full_as_torch_save_says_it(step):
    # torch.save on a full disk raises a RuntimeError; the OSError is only its context.
    try:
        _disk_full(step)
    except OSError:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 1152 vs 1046"
        ) from None


@pytest.mark.parametrize("broken", [_disk_full, _disk_full_as_torch_save_says_it])
def test_failing_command_is_reported_and_training_continues(server_factory, handles, broken):
    """An exception inside a command becomes an error result naming the OS error behind it."""
    server = server_factory()

    wd = attach(socket_path=server.socket_path, checkpoint=broken)
    handles.append(wd)
    wait_for(server.clients)
    stop = threading.Event()
    trainer = train_in_thread(wd, stop)
    try:
        (result,) = server.send_command(os.getpid(), "checkpoint", requester_uid=0, timeout_s=10)
        before = wd.step_count
        wait_for(lambda: wd.step_count > before + 10, what="training continues")
    finally:
        stop.set()
        trainer.join()
    assert not result.ok
    assert "No space left" in result.error


def test_cpu_only_figures_are_null_and_snapshot_is_a_clear_error(server_factory, handles):
    """On CPU the allocator figures are None (not 0) and dump_snapshot says why it cannot."""
    server = server_factory()
    wd = attach(socket_path=server.socket_path)
    handles.append(wd)
    wait_for(lambda: server.clients() and server.clients()[0].report.step is not None)
    report = server.clients()[0].report
    assert report.allocated_bytes is None
    assert report.reserved_bytes is None
    assert report.rss_bytes is not None
    assert report.rss_bytes > 0
    stop = threading.Event()
    trainer = train_in_thread(wd, stop)
    try:
        (snap,) = server.send_command(os.getpid(), "dump_snapshot", requester_uid=0, timeout_s=10)
        (empty,) = server.send_command(os.getpid(), "empty_cache", requester_uid=0, timeout_s=10)
    finally:
        stop.set()
        trainer.join()
    assert not snap.ok
    assert "CUDA is not initialised" in snap.error
    assert empty.ok
    assert empty.details["freed_bytes"] is None


def test_dump_stacks_answers_while_training_is_stuck(server_factory, handles):
    """dump_stacks is answered by the background thread while the training thread hangs."""
    server = server_factory()
    wd = attach(socket_path=server.socket_path)
    handles.append(wd)
    wait_for(server.clients)
    stuck = threading.Event()

    def hang_in_training():
        wd.step()
        stuck.wait(30)

    trainer = threading.Thread(target=hang_in_training, name="stuck-trainer", daemon=True)
    trainer.start()
    try:
        (result,) = server.send_command(os.getpid(), "dump_stacks", requester_uid=0, timeout_s=5)
    finally:
        stuck.set()
        trainer.join()
    assert result.ok
    assert "hang_in_training" in result.details["stacks"]
    assert "stuck-trainer" in result.details["threads"].values()


def test_at_step_defers_the_command(server_factory, handles):
    """A command with at_step runs at the first step() reaching that step, not before."""
    server = server_factory()
    ran_at = []
    wd = attach(socket_path=server.socket_path, checkpoint=ran_at.append)
    handles.append(wd)
    wait_for(server.clients)
    future = server.send_command_async(
        os.getpid(), "checkpoint", requester_uid=0, args={"at_step": 50}, timeout_s=10
    )
    wait_for(lambda: wd._pending, what="command queued")
    for _ in range(49):
        wd.step()
    assert ran_at == []
    wd.step()
    assert ran_at == [50]
    assert future.result(5)[0].ok


@needs_torch
def test_checkpoint_and_restart_exits_with_the_code(
    server_factory, model_and_optimizer, short_dir, handles
):
    """checkpoint_and_restart commits a checkpoint, reports, then raises SystemExit(75)."""
    server = server_factory()
    model, optimizer = model_and_optimizer
    wd = attach(model, optimizer, socket_path=server.socket_path, checkpoint_dir=short_dir / "ck")
    handles.append(wd)
    wait_for(server.clients)
    future = server.send_command_async(os.getpid(), "checkpoint_and_restart", requester_uid=0)
    wait_for(lambda: wd._pending, what="command queued")
    wd.step_count = 9
    with pytest.raises(RestartRequested) as raised:
        wd.step()
    assert raised.value.code == RESTART_EXIT_CODE
    (result,) = future.result(5)
    assert result.ok
    assert result.details["exit_code"] == RESTART_EXIT_CODE
    assert CheckpointStore(short_dir / "ck").complete()[0].name == "ckpt-000000000010.pt"


@needs_torch
def test_a_rank_restarts_only_once_rank_0_committed_the_checkpoint(
    server_factory, model_and_optimizer, short_dir, handles, monkeypatch
):
    """Rank 1 waits for rank 0's checkpoint of the step: none, it fails and trains on."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    server = server_factory()
    model, optimizer = model_and_optimizer
    wd = attach(
        model,
        optimizer,
        socket_path=server.socket_path,
        checkpoint_dir=short_dir / "ck",
        restart_wait_s=0.3,
    )
    handles.append(wd)
    wait_for(server.clients)
    # Sent to this rank alone: rank 0 never writes a checkpoint of step 10.
    future = server.send_command_async(os.getpid(), "checkpoint_and_restart", requester_uid=0)
    wait_for(lambda: wd._pending, what="command queued")
    wd.step_count = 9
    wd.step()  # no RestartRequested: restarting would lose every step since the last one
    (result,) = future.result(5)
    assert not result.ok
    assert "rank 0 committed no checkpoint of step 10" in result.error
    # Rank 0 committed this time: rank 1 reports it and leaves for the restart.
    CheckpointStore(short_dir / "ck").save({"step": 20}, 20)
    future = server.send_command_async(os.getpid(), "checkpoint_and_restart", requester_uid=0)
    wait_for(lambda: wd._pending, what="command queued")
    wd.step_count = 19
    with pytest.raises(RestartRequested):
        wd.step()
    (result,) = future.result(5)
    assert result.ok
    assert result.details["path"].endswith("ckpt-000000000020.pt")


def test_a_checkpoint_function_that_skips_its_rank_is_not_held_for_rank_0(
    server_factory, short_dir, handles, monkeypatch
):
    """Only the default checkpoint waits for rank 0's file: a user's writes elsewhere."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    server = server_factory()
    wd = attach(
        socket_path=server.socket_path,
        checkpoint_dir=short_dir / "ck",
        checkpoint=lambda step: {"skipped": "rank 0 saves to object storage"},
        restart_wait_s=30,
    )
    handles.append(wd)
    wait_for(server.clients)
    future = server.send_command_async(os.getpid(), "checkpoint_and_restart", requester_uid=0)
    wait_for(lambda: wd._pending, what="command queued")
    started = time.monotonic()
    with pytest.raises(RestartRequested):
        wd.step()
    assert time.monotonic() - started < 10  # not the 30 s wait for a file never coming
    (result,) = future.result(5)
    assert result.ok
    assert result.details["skipped"] == "rank 0 saves to object storage"


@needs_torch
def test_default_checkpoint_and_resume(model_and_optimizer, short_dir, handles):
    """The default checkpoint saves model, optimizer and step; resume restores all three."""
    model, optimizer = model_and_optimizer
    wd = attach(
        model, optimizer, socket_path="/nonexistent/s", connect=False, checkpoint_dir=short_dir
    )
    handles.append(wd)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    wd.step(7)
    details = wd.save_checkpoint()
    assert details["path"].endswith("ckpt-000000000007.pt")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    fresh = attach(
        model, optimizer, socket_path="/nonexistent/s", connect=False, checkpoint_dir=short_dir
    )
    handles.append(fresh)
    assert fresh.resume() == 7
    assert fresh.step_count == 7
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key])


@needs_torch
def test_resume_ignores_temporaries_and_corrupt_files(short_dir, caplog):
    """Resume loads the newest complete checkpoint: temporaries never, corrupt ones skipped."""
    store = CheckpointStore(short_dir, keep=5)
    store.save({"step": 1}, 1)
    store.save({"step": 2}, 2)
    (short_dir / ".ckpt-000000000009.pt.tmp.1").write_bytes(b"half written")
    store.path_for(3).write_bytes(b"not a torch file")
    path, state = store.load_latest()
    assert path == store.path_for(2)
    assert state["step"] == 2
    assert "unreadable" in caplog.text


def test_a_checkpoint_is_committed_by_fsyncing_file_then_rename_then_directory(
    short_dir, monkeypatch
):
    """The rename is the commit: the file is synced before it, the directory after it.

    Without the directory's fsync a power loss can undo the rename, and the job
    resumes from an older checkpoint than the one it reported saved.
    """
    steps: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        steps.append(("fsync", kind))
        real_fsync(fd)

    def replace(src, dst) -> None:
        steps.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = short_dir / "ckpt" / "state.bin"
    assert atomic_write(target, lambda stream: stream.write(b"weights")) == 7
    assert steps == [("fsync", "file"), ("rename", "state.bin"), ("fsync", "directory")]
    assert target.read_bytes() == b"weights"


@needs_torch
def test_failed_save_keeps_the_previous_checkpoint(short_dir, monkeypatch):
    """A save failing mid-write (ENOSPC) leaves no file behind; the previous one still loads."""
    store = CheckpointStore(short_dir)
    store.save({"step": 1}, 1)

    def full_disk(obj, stream):
        stream.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.save({"step": 2}, 2)
    assert sorted(p.name for p in short_dir.iterdir()) == ["ckpt-000000000001.pt"]
    monkeypatch.undo()
    assert store.load_latest()[1]["step"] == 1


@needs_torch
def test_prune_keeps_newest(short_dir):
    """Only the newest ``keep`` checkpoints stay."""
    store = CheckpointStore(short_dir, keep=2)
    for step in (1, 2, 3):
        store.save({"step": step}, step)
    assert [p.name for p in store.complete()] == ["ckpt-000000000003.pt", "ckpt-000000000002.pt"]


def test_second_attach_replaces_the_first(server_factory, handles):
    """One registration per process: a second attach() closes the first handle."""
    server = server_factory()
    first = attach(socket_path=server.socket_path)
    second = attach(socket_path=server.socket_path)
    handles.extend([first, second])
    assert first.closed
    wait_for(lambda: len(server.clients()) == 1)
    first.step()  # still safe


@pytest.mark.parametrize("job", ["a\nb", "\x1b[31mred", "x" * 257])
def test_a_job_name_the_daemon_would_refuse_is_refused_at_attach(tmp_path, monkeypatch, job):
    """A name with control characters or too long: a ValueError now, not a link that the
    daemon drops at every try (its registration is malformed)."""
    with pytest.raises(ValueError, match="job must"):
        attach(job=job, socket_path=str(tmp_path / "none.sock"))
    monkeypatch.setenv("SLURM_JOB_ID", job)  # from the environment, the same
    with pytest.raises(ValueError, match="job must"):
        attach(socket_path=str(tmp_path / "none.sock"))


def test_job_and_rank_from_environment(monkeypatch):
    """Job id: given name, else torchrun's run id, else Slurm's, else user-pid."""
    from watchdog.client import runtime

    assert runtime.job_id("mine", env={"TORCHELASTIC_RUN_ID": "r"}) == "mine"
    assert runtime.job_id(env={"TORCHELASTIC_RUN_ID": "r", "SLURM_JOB_ID": "5"}) == "r"
    assert runtime.job_id(env={"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "5"}) == "5"
    assert runtime.job_id(env={}).endswith(f"-{os.getpid()}")
    # torchrun without --rdzv-id: the ranks share their agent's run directory, across
    # restarts too; without one (--log-dir /dev/null) each is on its own.
    error_file = "/tmp/torchelastic_x1/none_k2j4h6z8/attempt_1/0/error.json"
    torchrun = {
        "TORCHELASTIC_RUN_ID": "none",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "TORCHELASTIC_ERROR_FILE": error_file,
    }
    assert runtime.job_id(env=torchrun).endswith("-torchrun-k2j4h6z8")
    torchrun["TORCHELASTIC_ERROR_FILE"] = ""
    assert runtime.job_id(env=torchrun).endswith(f"-{os.getpid()}")
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "TORCHELASTIC_RESTART_COUNT": "2"}
    assert runtime.ranks(env) == {"rank": 3, "local_rank": 1, "world_size": 8, "restart_count": 2}
    assert (
        runtime.ranks({"SLURM_PROCID": "4", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8"})["rank"] == 4
    )


def test_benchmark_step_under_one_microsecond():
    """benchmarks/bench_step.py --check passes: step() costs under 1 µs over an empty loop."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_step.py"
    spec = importlib.util.spec_from_file_location("bench_step", path)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--batch", "2000", "--repeats", "50", "--check"]) == 0


def test_failed_checkpoint_never_leads_to_a_restart(server_factory, handles):
    """checkpoint_and_restart whose checkpoint fails reports the error and does not exit."""
    server = server_factory()

    def broken(step):
        raise OSError(errno.ENOSPC, "No space left on device")

    wd = attach(socket_path=server.socket_path, checkpoint=broken, restart_exit="os_exit")
    handles.append(wd)
    wait_for(server.clients)
    stop = threading.Event()
    trainer = train_in_thread(wd, stop)
    try:
        (result,) = server.send_command(
            os.getpid(), "checkpoint_and_restart", requester_uid=0, timeout_s=10
        )
        before = wd.step_count
        # os_exit would have ended this very test process; training goes on instead.
        wait_for(lambda: wd.step_count > before + 10, what="training continues")
    finally:
        stop.set()
        trainer.join()
    assert not result.ok
    assert "No space left" in result.error
    assert "exit_code" not in result.details


@pytest.mark.parametrize(
    ("error", "starts_over"),
    [(ConnectionError("daemon closed the connection"), True), (OverflowError("a bug"), False)],
)
def test_backoff_starts_over_after_each_registered_session(monkeypatch, error, starts_over):
    """A session lost after registering (a daemon restart) reconnects at the shortest wait;
    one ended by a bug of ours (it would fail the same way at once) backs off, no hot loop."""
    from watchdog.client import link as link_module

    waits: list[float] = []
    link = link_module.Link("/nonexistent.sock", dict, dict, lambda m, g: None)

    def registered_then_lost() -> None:
        link.generation += 1
        raise error

    class Stop:
        def is_set(self) -> bool:
            return len(waits) >= 6

        def wait(self, timeout: float) -> bool:
            waits.append(timeout)
            return False

    monkeypatch.setattr(link, "_session", registered_then_lost)
    monkeypatch.setattr(link, "_stop", Stop())
    link._run()
    if starts_over:
        assert max(waits) <= 1.5 * link_module.MIN_BACKOFF_S
    else:
        assert waits[-1] >= 0.5 * link_module.MIN_BACKOFF_S * 2**5


def test_step_takes_integers_of_any_kind_and_refuses_the_rest(handles):
    """An integer-like step (numpy, a tensor) is stored as an int; a float is a clear error."""

    class StepLike:
        def __index__(self) -> int:
            return 12

    wd = attach(socket_path="/nonexistent/wd.sock", connect=False)
    handles.append(wd)
    wd.step(StepLike())
    assert wd.step_count == 12
    assert type(wd.step_count) is int
    with pytest.raises(TypeError, match=r"step must be an integer, got 3\.5"):
        wd.step(3.5)


def resolved_later(details: dict) -> Deferred:
    """A checkpoint still being written, finished by another thread a moment later."""
    deferred = Deferred()
    threading.Timer(0.05, deferred.resolve, args=(details,)).start()
    return deferred


@pytest.mark.parametrize(
    ("checkpoint", "key", "sent"),
    [
        (lambda step: {"loss": float("nan")}, "loss", "nan"),
        (lambda step: resolved_later({"path": Path("/ck/1.pt")}), "path", "/ck/1.pt"),
    ],
)
def test_a_result_that_is_not_json_still_reaches_the_daemon(
    server_factory, handles, checkpoint, key, sent
):
    """Details that JSON cannot hold (NaN, a Path) are sent as text; the command succeeds."""
    server = server_factory()
    wd = attach(socket_path=server.socket_path, checkpoint=checkpoint)
    handles.append(wd)
    wait_for(server.clients)
    result, _ = checkpoint_while_training(server, wd)
    assert result.ok, result.error
    assert result.details[key] == sent
    assert wd.link.generation == 1  # the connection was never torn down


def test_a_long_error_is_cut_to_what_the_daemon_takes(server_factory, handles):
    """A failing command's error, however long, arrives (cut), not as a dropped connection."""
    server = server_factory()

    def broken(step):
        raise RuntimeError("disk quota exceeded writing " + "/very/long/path" * 600)

    wd = attach(socket_path=server.socket_path, checkpoint=broken)
    handles.append(wd)
    wait_for(server.clients)
    result, _ = checkpoint_while_training(server, wd)
    assert not result.ok
    assert result.error.startswith("RuntimeError: disk quota exceeded")
    assert server.stats()[1] == {}  # nothing dropped


@needs_torch
def test_a_reused_directory_never_loses_the_checkpoint_just_written(short_dir, caplog):
    """Another run's higher steps are no reason to delete this save; the user is warned."""
    old_run = CheckpointStore(short_dir, keep=2)
    old_run.save({"run": "old"}, 5000)
    old_run.save({"run": "old"}, 6000)
    path, _ = CheckpointStore(short_dir, keep=2).save({"run": "new"}, 100)
    assert path.exists()
    assert any("holds later steps than 100" in r.message for r in caplog.records)
