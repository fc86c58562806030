"""Process groups that survive torchrun restarts.

torchrun keeps one TCPStore for the whole run and restarts workers into it.
``init_process_group("env://")`` puts every generation's keys under the same
prefix (``default_pg``), so after a restart the new workers can read the
previous generation's rendezvous data: with gloo on torch 2.13 that shows up as
"Gloo connectFullMesh failed ... Connection refused" (the dead workers'
addresses). Prefixing the store with the restart count gives each generation
its own keys. docs/integrations.md has the whole restart recipe.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any


def restart_prefix(env: Any = None) -> str:
    """``restart<N>`` from TORCHELASTIC_RESTART_COUNT (``restart0`` outside torchrun)."""
    env = os.environ if env is None else env
    count = str(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return f"restart{count if count.isdigit() else 0}"


def restart_safe_store(timeout: timedelta | None = None) -> tuple[Any, int, int]:
    """The launcher's store (``env://``) wrapped in ``PrefixStore("restart<N>")``.

    Returns:
        ``(store, rank, world_size)`` for ``dist.init_process_group(store=...)``.
    """
    import torch.distributed as dist

    # torch.distributed re-exports these without listing them in __all__
    rendezvous = dist.rendezvous  # type: ignore[attr-defined]
    prefix_store = dist.PrefixStore  # type: ignore[attr-defined]
    store, rank, world_size = next(rendezvous("env://", timeout=timeout or timedelta(minutes=10)))
    return prefix_store(restart_prefix(), store), rank, world_size


def init_process_group(
    backend: str | None = None, timeout: timedelta | None = None, **kwargs: Any
) -> None:
    """``torch.distributed.init_process_group`` on a restart-safe store.

    Use it in place of ``dist.init_process_group(backend)`` in a script run by
    ``torchrun --max-restarts=N``; extra keyword arguments pass through.
    """
    import torch.distributed as dist

    store, rank, world_size = restart_safe_store(timeout)
    options: dict[str, Any] = {"store": store, "rank": rank, "world_size": world_size}
    if timeout is not None:
        options["timeout"] = timeout
    dist.init_process_group(backend, **options, **kwargs)
