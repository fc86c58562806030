"""The demo's training job: a small PyTorch model on CPU, with a planted host-memory leak.

Run by ``gpu-watchdog demo`` (which plays the launcher and restarts it after
exit 75), and by the acceptance tests. It resumes from the newest checkpoint,
trains ``--steps`` steps and saves the final weights to ``--out``.

Deterministic across a checkpoint and resume: a fixed seed for the initial
weights, each step's batch generated from the step index alone (no stateful
generator to save), no dropout, one thread. The default checkpoint (model,
optimizer, step) is therefore all that a resumed run needs to finish with the
same weights, bit for bit, as a run that never stopped.

The leak (``--leak-bytes-per-step``) is a classic one: every step also computes
a "validation" loss on a held-out batch, forgets ``torch.no_grad()``, and keeps
the loss tensor in a list for a smoothed curve. Each kept loss holds its
autograd graph, and the graph holds that batch's activations, so host memory
grows every step. It does not touch the training gradients, so the weights are
the same with or without it. After a restart the list starts empty again: the
restart frees what the leak held, and the run finishes before it matters.

Under torchrun (``WORLD_SIZE`` > 1) it joins a gloo group through
``watchdog.client.distributed.init_process_group`` (restart-safe store keys),
wraps the model in DistributedDataParallel, gives each rank its own batches,
and leaks only on ``--leak-rank`` if given; rank 0 writes ``--out``. The GPU
smoke test runs it with ``--device cuda:N``.

It prints one JSON object per line on stdout (``{"event": ...}``) for the demo.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

IN_FEATURES = 64
HIDDEN = 256
BATCH = 64
SEED = 0
# Host memory the leak keeps per held-out sample: the activations autograd saves (the
# input, the ReLU outputs, the output, the target) plus allocator overhead, measured on CPU.
LEAK_BYTES_PER_SAMPLE = 4200


def emit(event: str, **fields: Any) -> None:
    """Print one event for the demo's display."""
    print(json.dumps({"event": event, **fields}), flush=True)


def build(torch: Any, device: Any = "cpu") -> tuple[Any, Any]:
    """The model (on ``device``) and its optimizer, initialised from the fixed seed."""
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 1),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer


def batch(
    torch: Any, step: int, size: int, stream: int = 0, device: Any = "cpu"
) -> tuple[Any, Any]:
    """The batch of ``step``: generated from the step index alone, so resuming needs no state."""
    generator = torch.Generator().manual_seed(1_000_003 * stream + step)
    x = torch.randn(size, IN_FEATURES, generator=generator)
    y = torch.sin(x[:, :8].sum(dim=1, keepdim=True)) + 0.1 * x[:, 8:9]
    return x.to(device), y.to(device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="The gpu-watchdog demo's training job.")
    parser.add_argument("--steps", type=int, default=1600, help="train until this step")
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="final weights (torch.save)")
    parser.add_argument("--leak-bytes-per-step", type=int, default=0, help="0: no leak")
    parser.add_argument("--step-time", type=float, default=0.0, help="pace: seconds per step")
    parser.add_argument("--socket", help="the daemon's control socket; none: run unwatched")
    parser.add_argument("--job", default="demo-train")
    parser.add_argument("--report-every", type=int, default=20, help="steps between events")
    parser.add_argument(
        "--leak-rank", type=int, help="under torchrun: only this rank leaks (default: every rank)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda:N (the GPU smoke test)")
    parser.add_argument(
        "--cache-bytes",
        type=int,
        default=0,
        help="allocate and free this much at start, so the CUDA cache holds it (empty_cache test)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, resuming from the newest checkpoint; 0 when done, 75 after a restart command."""
    args = parse_args(argv)
    import torch

    import watchdog

    torch.set_num_threads(1)
    device = torch.device(args.device)
    rank, world_size = distributed(torch)
    plain, optimizer = build(torch, device)
    model = torch.nn.parallel.DistributedDataParallel(plain) if world_size > 1 else plain
    if args.cache_bytes and device.type == "cuda":
        cached = torch.empty(args.cache_bytes, dtype=torch.uint8, device=device)
        del cached  # freed, but the caching allocator keeps it reserved
    wd = watchdog.attach(
        model,
        optimizer,
        job=args.job,
        socket_path=args.socket or os.devnull,
        checkpoint_dir=args.checkpoint_dir,
        device=str(device) if device.type == "cuda" else None,
        heartbeat_s=0.5,
        connect=args.socket is not None,
    )
    resumed = wd.resume()
    leaks = args.leak_bytes_per_step > 0 and args.leak_rank in (None, rank)
    emit("start", pid=os.getpid(), rank=rank, resumed_from=resumed, leak=leaks)
    last_loss = train(torch, args, wd, model, plain, optimizer, rank, leaks)
    if rank == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.cpu() for name, tensor in plain.state_dict().items()}
        torch.save({"step": wd.step_count, "model": weights}, args.out)
    emit("done", rank=rank, step=wd.step_count, loss=last_loss, out=str(args.out))
    wd.close()
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


def train(
    torch: Any,
    args: argparse.Namespace,
    wd: Any,
    model: Any,
    plain: Any,
    optimizer: Any,
    rank: int,
    leaks: bool,
) -> float | None:
    """The training loop, with the leak when ``leaks``; return the last loss.

    ``plain`` is the model without its DistributedDataParallel wrapper: the
    leaking "validation" forward runs on it, as evaluation code usually does.
    """
    from watchdog.client import RestartRequested

    device = torch.device(args.device)
    leak_batch = math.ceil(args.leak_bytes_per_step / LEAK_BYTES_PER_SAMPLE) if leaks else 0
    kept: list[Any] = []  # the leak: validation losses kept with their graphs
    loss_fn = torch.nn.functional.mse_loss
    next_at = time.monotonic()
    last_loss = None
    try:
        while wd.step_count < args.steps:
            step = wd.step_count
            x, y = batch(torch, step, BATCH, stream=rank, device=device)
            optimizer.zero_grad(set_to_none=True)
            loss: Any = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            last_loss = float(loss.item())
            if leak_batch:
                vx, vy = batch(torch, step, leak_batch, stream=1000 + rank, device=device)
                kept.append(loss_fn(plain(vx), vy))  # the bug: no torch.no_grad(), no .item()
            wd.step()
            if wd.step_count % args.report_every == 0:
                emit(
                    "step", rank=rank, step=wd.step_count, loss=round(last_loss, 6), kept=len(kept)
                )
            if args.step_time:
                next_at += args.step_time
                time.sleep(max(0.0, next_at - time.monotonic()))
    except RestartRequested as exc:
        newest = sorted(args.checkpoint_dir.glob("ckpt-*.pt"))
        emit(
            "restart",
            rank=rank,
            step=wd.step_count,
            code=exc.code,
            checkpoint=str(newest[-1]) if newest else None,
        )
        raise
    return last_loss


def distributed(torch: Any) -> tuple[int, int]:
    """Join the process group when launched by torchrun (gloo); return (rank, world size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    from watchdog.client.distributed import init_process_group

    init_process_group("gloo")  # a fresh store prefix per torchrun restart
    return int(torch.distributed.get_rank()), world_size


if __name__ == "__main__":
    sys.exit(main())
