"""Plain PyTorch: count a step on every ``optimizer.step()`` through a post-step hook."""

from __future__ import annotations

from typing import Any

from watchdog.client import Watchdog, attach
from watchdog.integrations import _options


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

    Raises:
        TypeError: ``optimizer`` is not an optimizer, ``wd`` is not a handle, or an
            option ``attach()`` does not take (all checked before attaching).
        ValueError: ``model`` or attach options along with ``wd``: that handle is
            attached already, so they would be ignored.
    """
    # Checked first: attaching and then failing would leave a registered handle behind.
    if not callable(getattr(optimizer, "register_step_post_hook", None)):
        swapped = callable(getattr(model, "register_step_post_hook", None))
        hint = "; the optimizer comes first: watch_optimizer(optimizer, model)" if swapped else ""
        raise TypeError(
            "watch_optimizer: optimizer must be a torch.optim.Optimizer (torch 2.0 or later), "
            f"got {type(optimizer).__name__}{hint}"
        )
    given = {**options, **({"model": model} if model is not None else {})}
    _options.check_handle("watch_optimizer", wd, given)
    _options.check_attach_options("watch_optimizer", options, {})
    handle = wd if wd is not None else attach(model, optimizer, **options)
    step = handle.step

    def after_step(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        step()

    optimizer.register_step_post_hook(after_step)
    return handle
