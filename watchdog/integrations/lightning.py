"""Lightning: ``WatchdogCallback`` steps the watchdog after every training batch.

Checkpoints go through ``trainer.save_checkpoint`` (Lightning's own format,
so ``trainer.fit(..., ckpt_path=callback.latest_checkpoint())`` resumes them)
and are committed atomically: written to a temporary name, fsynced, renamed,
directory fsynced. Importing this module imports Lightning (``lightning`` or
the older ``pytorch_lightning``); ``import watchdog`` never does.
"""

from __future__ import annotations

import contextlib
import os
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
from watchdog.client.checkpoint import fsync_directory


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
        """
        super().__init__()
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
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # every rank calls it; Lightning writes on global zero
        if not trainer.is_global_zero:
            return {"path": str(path), "written_by": "global rank 0"}
        try:
            with open(tmp, "rb") as stream:
                os.fsync(stream.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
        fsync_directory(path.parent)
        self.store.prune()
        return {"path": str(path), "bytes": path.stat().st_size}
