"""Hugging Face transformers: ``WatchdogTrainerCallback`` for ``Trainer``.

A checkpoint command asks the Trainer to save at the end of the current step
(``control.should_save``), so the checkpoint is the Trainer's own
``output_dir/checkpoint-<step>`` that ``trainer.train(resume_from_checkpoint=True)``
resumes; the result is reported once the Trainer has saved (``on_save``).
Importing this module imports transformers; ``import watchdog`` never does.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "watchdog.integrations.huggingface requires transformers: "
        "pip install 'gpu-job-watchdog[huggingface]'"
    ) from None

from watchdog.client import Deferred, Watchdog, attach
from watchdog.integrations import _options

_RESERVED = {
    "model": "it attaches the Trainer's model",
    "checkpoint": "checkpoints are the Trainer's own (output_dir/checkpoint-<step>)",
    "checkpoint_dir": "set TrainingArguments(output_dir=...)",
    "keep_checkpoints": "set TrainingArguments(save_total_limit=...)",
    "optimizer": "the Trainer's checkpoint holds the optimizer state",
    "resume": "resume with trainer.train(resume_from_checkpoint=True)",
    "rank": "ranks come from TrainingArguments",
    "local_rank": "ranks come from TrainingArguments",
    "world_size": "ranks come from TrainingArguments",
}
"""Options of ``attach()`` this callback passes itself, or that it would leave unused."""


class WatchdogTrainerCallback(TrainerCallback):
    """Attach to the gpu-watchdog daemon for the duration of ``trainer.train()``."""

    def __init__(self, wd: Watchdog | None = None, **attach_options: Any) -> None:
        """Args:
        wd: An existing handle; else one is attached when training begins.
        **attach_options: Passed to ``watchdog.attach`` (job, socket_path, ...).

        Raises:
            TypeError: an option this callback sets itself, one ``attach()`` does
                not take, a ``wd`` that is not a handle, or a value of the wrong type.
            ValueError: a value out of range, or attach options along with ``wd``.
        """
        _options.check_handle("WatchdogTrainerCallback", wd, attach_options)
        _options.check_attach_options("WatchdogTrainerCallback", attach_options, _RESERVED)
        self.wd = wd
        self._own = wd is None
        self._options = attach_options
        self._control: Any = None
        self._save: Deferred | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Attach, with the Trainer's ranks."""
        if self.wd is None:
            self.wd = attach(
                model=kwargs.get("model"),
                checkpoint=self._request_save,
                rank=args.process_index,
                local_rank=max(args.local_process_index, 0),
                world_size=args.world_size,
                checkpoint_dir=args.output_dir,
                **self._options,
            )
        if self.wd is not None:
            self.wd.step_count = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The safe point: after the optimizer step; a checkpoint command sets should_save."""
        if self.wd is not None:
            self._control = control
            self.wd.step(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer has written ``checkpoint-<step>``: report the pending command."""
        save, self._save = self._save, None
        if save is not None:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            save.resolve({"path": path, "step": state.global_step})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Report a save that never happened, then detach (only a handle this callback made)."""
        if self._save is not None:
            self._save.fail("training ended before the Trainer saved")
            self._save = None
        if self._own and self.wd is not None:
            self.wd.close()
            self.wd = None

    def _request_save(self, step: int) -> Deferred:
        if self._control is None:
            raise RuntimeError("no training step yet: nothing to save")
        self._control.should_save = True
        self._save = Deferred()
        return self._save
