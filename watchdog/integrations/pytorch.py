"""Plain PyTorch: count a step on every ``optimizer.step()`` through a post-step hook."""

from __future__ import annotations

from typing import Any

from watchdog.client import Watchdog, attach


def watch_optimizer(
    optimizer: Any, model: Any = None, wd: Watchdog | None = None, **options: Any
) -> Watchdog:
    """Attach (unless ``wd`` is given) and call ``wd.step()`` after each optimizer step.

    Commands then run right after an optimizer step, a consistent point for a
    checkpoint. ``wd.close()`` turns the hook into a no-op. A step skipped by
    ``GradScaler`` (inf/NaN gradients) does not count.

    Args:
        optimizer: A ``torch.optim.Optimizer``.
        model: Saved and restored by the default checkpoint and ``wd.resume()``.
        wd: An existing handle; else ``watchdog.attach(model, optimizer, **options)``.
    """
    handle = wd if wd is not None else attach(model, optimizer, **options)
    step = handle.step

    def after_step(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        step()

    optimizer.register_step_post_hook(after_step)
    return handle
