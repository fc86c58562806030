"""A plain PyTorch loop attached to gpu-watchdog: resume, train, let the daemon step in.

    python examples/plain_pytorch.py --steps 200
    torchrun --nproc-per-node 2 --max-restarts 3 examples/plain_pytorch.py --steps 2000

Runs on CPU or GPU. Without a daemon it warns once and trains anyway. While it
runs, try `gpu-watchdog clients` and `gpu-watchdog send <pid> checkpoint`.
"""

from __future__ import annotations

import argparse
import os

import torch

import watchdog
from watchdog.client.distributed import init_process_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint-dir", default="checkpoints/plain")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        # restart-safe under torchrun --max-restarts (see docs/integrations.md)
        init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    model: torch.nn.Module = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    ).to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    wd = watchdog.attach(model, optimizer, checkpoint_dir=args.checkpoint_dir)
    start = wd.resume() or 0  # newest complete checkpoint, if any
    print(f"starting at step {start}")
    while wd.step_count < args.steps:
        x = torch.randn(64, 32, device=device)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        wd.step()  # the safe point: commands from the daemon run here
    print(f"finished at step {wd.step_count}")
    wd.close()


if __name__ == "__main__":
    main()
