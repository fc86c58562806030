"""Lightning: ``WatchdogCallback`` steps the watchdog after every training batch.

Checkpoints go through ``trainer.save_checkpoint`` (Lightning's own format,
so ``trainer.fit(..., ckpt_path=callback.latest_checkpoint())`` resumes them)
and are committed atomically: written to a temporary name, fsynced, renamed,
directory fsynced. Other ranks report the checkpoint only once global rank 0
has committed it. Importing this module imports Lightning (``lightning`` or
the older ``pytorch_lightning``); ``import watchdog`` never does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise ImportError(
            "watchdog.integrations.lightning requires Lightning: "
            "pip install 'gpu-job-watchdog[lightning]'"
        ) from None

from watchdog.client import CheckpointStore, Watchdog, attach
from watchdog.client.checkpoint import atomic_produce
from watchdog.client.commands import CommandError
from watchdog.integrations import _options

_RESERVED = {
    "model": "it attaches the LightningModule being fitted",
    "checkpoint": "checkpoints are the Trainer's own (trainer.save_checkpoint)",
    "keep_checkpoints": "use WatchdogCallback(keep=...)",
    "optimizer": "Lightning's checkpoint holds the optimizer state",
    "resume": "resume with trainer.fit(..., ckpt_path=callback.latest_checkpoint())",
    "rank": "ranks come from the Trainer",
    "local_rank": "ranks come from the Trainer",
    "world_size": "ranks come from the Trainer",
}
"""Options of ``attach()`` this callback passes itself, or that it would leave unused."""


class WatchdogCallback(pl.Callback):
    """Attach to the gpu-watchdog daemon for the duration of ``trainer.fit``."""

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] = "checkpoints",
        keep: int = 2,
        wd: Watchdog | None = None,
        **attach_options: Any,
    ) -> None:
        """Args:
        checkpoint_dir: Where the watchdog's checkpoints go (``lightning-<step>.pt``).
        keep: Checkpoints kept.
        wd: An existing handle; else one is attached at fit start.
        **attach_options: Passed to ``watchdog.attach`` (job, socket_path, ...).

        Raises:
            TypeError: an option this callback sets itself, one ``attach()`` does
                not take, a ``wd`` that is not a handle, or a value of the wrong type.
            ValueError: a value out of range, or attach options along with ``wd``.
        """
        super().__init__()
        _options.check_path("WatchdogCallback", "checkpoint_dir", checkpoint_dir)
        _options.check_count("WatchdogCallback", "keep", keep, 1)
        _options.check_handle("WatchdogCallback", wd, attach_options)
        _options.check_attach_options("WatchdogCallback", attach_options, _RESERVED)
        self.store = CheckpointStore(checkpoint_dir, prefix="lightning", keep=keep)
        self.wd = wd
        self._own = wd is None
        self._options = attach_options
        self._trainer: Any = None

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint, for ``trainer.fit(model, ckpt_path=...)``."""
        found = self.store.complete()
        return str(found[0]) if found else None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Attach at the start of fitting, with Lightning's ranks."""
        if stage != "fit":
            return
        self._trainer = trainer
        if self.wd is None:
            self.wd = attach(
                model=pl_module,
                checkpoint=self._checkpoint,
                rank=trainer.global_rank,
                local_rank=trainer.local_rank,
                world_size=trainer.world_size,
                checkpoint_dir=self.store.directory,
                **self._options,
            )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The safe point: after the optimizer step of this batch."""
        if self.wd is not None:
            self.wd.step(trainer.global_step)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Detach after fitting (only a handle this callback attached)."""
        if stage == "fit" and self._own and self.wd is not None:
            self.wd.close()
            self.wd = None

    def _checkpoint(self, step: int) -> dict[str, Any]:
        trainer = self._trainer
        path = self.store.path_for(step)
        if trainer.is_global_zero:
            # atomic_produce removes the temporary file on any failure, of the save itself
            # too: a full disk fails inside save_checkpoint with part of the file written.
            size = atomic_produce(path, trainer.save_checkpoint)
            self.store.prune()
            return {"path": str(path), "bytes": size}
        # Every rank must call it (Lightning's barrier is inside); global zero alone writes.
        trainer.save_checkpoint(path.with_name(f".{path.name}.tmp.{os.getpid()}"))
        return self._committed_by_rank0(path, step)

    def _committed_by_rank0(self, path: Path, step: int) -> dict[str, Any]:
        """Wait until global rank 0 has committed ``path``; only then is the checkpoint real.

        Lightning's barrier ends when rank 0 has written its temporary file, before rank 0
        fsyncs and renames it: a rank leaving for a restart then could have the launcher
        kill rank 0 mid-commit, and one that never sees the file (rank 0 was not sent the
        command) must not report a checkpoint.
        """
        wait_s = self.wd.restart_wait_s if self.wd is not None else 0.0  # set: it calls us
        deadline = time.monotonic() + wait_s
        while not path.exists():
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"global rank 0 committed no checkpoint of step {step} within {wait_s:g} s "
                    f"({path}); send the command to the job, not to one rank, and keep "
                    "checkpoint_dir on a filesystem every rank sees"
                )
            time.sleep(0.05)
        return {"path": str(path), "written_by": "global rank 0"}
