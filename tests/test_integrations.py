"""The framework integrations, with the real frameworks on CPU (tiny models, no downloads)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from watchdog.client import RESTART_EXIT_CODE
from watchdog.testing import FakeDaemon

torch = pytest.importorskip("torch")


def command_thread(daemon: FakeDaemon, plan: list[str], results: list) -> threading.Thread:
    """Send each command of ``plan`` once the process has registered, recording results."""

    def run() -> None:
        daemon.wait_for_client(timeout_s=60)
        for command in plan:
            results.extend(daemon.send(command, timeout_s=60))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_optimizer_hook_steps_and_checkpoints(tmp_path):
    """The optimizer post-step hook counts steps; a checkpoint command runs after a step."""
    from watchdog.integrations.pytorch import watch_optimizer

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with FakeDaemon() as daemon:
        wd = watch_optimizer(
            optimizer, model, socket_path=daemon.socket_path, checkpoint_dir=tmp_path
        )
        try:
            for _ in range(3):
                optimizer.step()
            assert wd.step_count == 3
            daemon.wait_for_client()
            future = daemon.server.send_command_async(os.getpid(), "checkpoint", 0)
            deadline = time.monotonic() + 10
            while not future.done() and time.monotonic() < deadline:
                model(torch.ones(2, 4)).sum().backward()
                optimizer.step()
                time.sleep(0.005)
            (result,) = future.result(1)
        finally:
            wd.close()
    assert result.ok
    assert os.path.exists(result.details["path"])


@pytest.mark.slow
def test_lightning_callback_checkpoint_restart_resume(tmp_path):
    """Lightning: checkpoint, checkpoint_and_restart (SystemExit 75), then resume from it."""
    pl = pytest.importorskip("lightning.pytorch")
    from watchdog.integrations.lightning import WatchdogCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.first_step = None

        def training_step(self, batch, batch_idx):
            if self.first_step is None:
                self.first_step = self.global_step
            time.sleep(0.01)
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))

    def trainer(callback, max_steps):
        return pl.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback],
            default_root_dir=tmp_path,
        )

    results: list = []
    with FakeDaemon() as daemon:
        callback = WatchdogCallback(checkpoint_dir=tmp_path / "ck", socket_path=daemon.socket_path)
        sender = command_thread(daemon, ["checkpoint", "checkpoint_and_restart"], results)
        loader = torch.utils.data.DataLoader(data, batch_size=4)
        with pytest.raises(SystemExit) as exited:
            trainer(callback, 10_000).fit(Tiny(), loader)
        sender.join(30)
    assert exited.value.code == RESTART_EXIT_CODE
    assert [r.ok for r in results] == [True, True], results
    restart_step = results[1].details["step"]
    assert callback.latest_checkpoint().endswith(f"lightning-{restart_step:012d}.pt")
    with FakeDaemon() as daemon:
        resumed = WatchdogCallback(checkpoint_dir=tmp_path / "ck", socket_path=daemon.socket_path)
        model = Tiny()
        trainer(resumed, restart_step + 3).fit(model, loader, ckpt_path=resumed.latest_checkpoint())
    assert model.first_step == restart_step


@pytest.mark.slow
def test_huggingface_callback_checkpoint_restart_resume(tmp_path):
    """transformers: a command makes the Trainer save; restart exits 75; training resumes."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from watchdog.integrations.huggingface import WatchdogTrainerCallback

    class Slow(transformers.TrainerCallback):
        first_step = None

        def on_step_end(self, args, state, control, **kwargs):
            if Slow.first_step is None:
                Slow.first_step = state.global_step
            time.sleep(0.01)

    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    generator = torch.Generator().manual_seed(0)
    data = [
        {
            "input_ids": torch.randint(0, 32, (8,), generator=generator),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }
        for i in range(64)
    ]

    def trainer(callback, max_steps):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        return transformers.Trainer(
            model=transformers.BertForSequenceClassification(config),
            args=args,
            train_dataset=data,
            callbacks=[callback, Slow()],
        )

    results: list = []
    with FakeDaemon() as daemon:
        callback = WatchdogTrainerCallback(socket_path=daemon.socket_path)
        sender = command_thread(daemon, ["checkpoint", "checkpoint_and_restart"], results)
        with pytest.raises(SystemExit) as exited:
            trainer(callback, 10_000).train()
        sender.join(30)
    assert exited.value.code == RESTART_EXIT_CODE
    assert [r.ok for r in results] == [True, True], results
    first, restart = (r.details for r in results)
    assert os.path.isdir(first["path"])
    assert restart["path"].endswith(f"checkpoint-{restart['step']}")
    Slow.first_step = None
    with FakeDaemon() as daemon:
        resumed = trainer(
            WatchdogTrainerCallback(socket_path=daemon.socket_path), restart["step"] + 3
        )
        resumed.train(resume_from_checkpoint=True)
    assert Slow.first_step == restart["step"] + 1
    assert resumed.state.global_step == restart["step"] + 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "needs"),
    [
        ("plain_pytorch.py", "torch"),
        ("optimizer_hook.py", "torch"),
        ("lightning_example.py", "lightning"),
        ("huggingface_example.py", "accelerate"),
    ],
)
def test_examples_run_and_register(script, needs, tmp_path):
    """Each example trains to the end, registered with a daemon, and checkpoints on command."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip(needs)
    repo = Path(__file__).resolve().parent.parent
    with FakeDaemon() as daemon:
        env = {**os.environ, "GPU_WATCHDOG_SOCKET": daemon.socket_path, "PYTHONUNBUFFERED": "1"}
        where = [
            "--output-dir" if "huggingface" in script else "--checkpoint-dir",
            str(tmp_path / "ck"),
        ]
        proc = subprocess.Popen(
            [sys.executable, str(repo / "examples" / script), "--steps", "100000", *where],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            client = daemon.wait_for_client(proc.pid, timeout_s=60)
            (result,) = daemon.send("checkpoint", target=client.pid, timeout_s=60)
            (restart,) = daemon.send("checkpoint_and_restart", target=client.pid, timeout_s=60)
            code = proc.wait(60)
        finally:
            proc.kill()
            proc.wait()
    assert result.ok, result.error
    assert restart.ok, restart.error
    assert code == RESTART_EXIT_CODE, proc.stderr.read() if proc.stderr else ""


def fake_lightning_trainer(save_checkpoint, *, rank: int = 0, world_size: int = 1):
    """Just what WatchdogCallback reads of a Trainer: ranks, the step and save_checkpoint."""
    from types import SimpleNamespace

    return SimpleNamespace(
        global_rank=rank,
        local_rank=rank,
        world_size=world_size,
        is_global_zero=rank == 0,
        global_step=7,
        save_checkpoint=save_checkpoint,
    )


def test_lightning_full_disk_leaves_no_partial_checkpoint(tmp_path):
    """A save that fails inside trainer.save_checkpoint (ENOSPC) leaves no temporary file."""
    import errno

    pytest.importorskip("lightning.pytorch")
    from watchdog.integrations.lightning import WatchdogCallback

    def save_checkpoint(path):
        with open(path, "wb") as stream:
            stream.write(b"x" * 65536)
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer = fake_lightning_trainer(save_checkpoint)
    with FakeDaemon() as daemon:
        callback = WatchdogCallback(checkpoint_dir=tmp_path, socket_path=daemon.socket_path)
        callback.setup(trainer, None, "fit")
        try:
            result = daemon.run_command(callback.wd, "checkpoint", timeout_s=10)
        finally:
            callback.teardown(trainer, None, "fit")
    assert not result.ok
    assert "No space left" in result.error
    assert os.listdir(tmp_path) == []


def test_lightning_other_rank_waits_for_rank_zero_commit(tmp_path):
    """Rank 1 restarts only once rank 0's checkpoint of that step exists."""
    pytest.importorskip("lightning.pytorch")
    from watchdog.integrations.lightning import WatchdogCallback

    trainer = fake_lightning_trainer(lambda path: None, rank=1, world_size=2)
    with FakeDaemon() as daemon:
        callback = WatchdogCallback(
            checkpoint_dir=tmp_path, socket_path=daemon.socket_path, restart_wait_s=10
        )
        callback.setup(trainer, None, "fit")
        seen_at_exit = []

        def rank_zero_commits() -> None:
            time.sleep(0.3)  # rank 0 still fsyncing and renaming after Lightning's barrier
            callback.store.path_for(callback.wd.step_count).write_bytes(b"rank 0")

        writer = threading.Thread(target=rank_zero_commits)
        writer.start()
        try:
            with pytest.raises(SystemExit) as exited:
                daemon.run_command(callback.wd, "checkpoint_and_restart", timeout_s=10)
            seen_at_exit = [p.name for p in tmp_path.iterdir()]
        finally:
            writer.join()
            callback.teardown(trainer, None, "fit")
    assert exited.value.code == RESTART_EXIT_CODE
    assert seen_at_exit, "rank 1 exited before rank 0 committed the checkpoint"


def test_lightning_other_rank_claims_no_commit_it_cannot_see(tmp_path):
    """Rank 1 with no rank 0 file in time reports a failure and does not exit."""
    pytest.importorskip("lightning.pytorch")
    from watchdog.integrations.lightning import WatchdogCallback

    trainer = fake_lightning_trainer(lambda path: None, rank=1, world_size=2)
    with FakeDaemon() as daemon:
        callback = WatchdogCallback(
            checkpoint_dir=tmp_path, socket_path=daemon.socket_path, restart_wait_s=0.3
        )
        callback.setup(trainer, None, "fit")
        try:
            result = daemon.run_command(callback.wd, "checkpoint_and_restart", timeout_s=10)
        finally:
            callback.teardown(trainer, None, "fit")
    assert not result.ok
    assert "global rank 0 committed no checkpoint of step" in result.error
