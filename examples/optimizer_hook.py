"""The optimizer post-step hook: no wd.step() in the loop at all.

python examples/optimizer_hook.py --steps 200
"""

from __future__ import annotations

import argparse

import torch

from watchdog.integrations.pytorch import watch_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint-dir", default="checkpoints/hook")
    args = parser.parse_args()

    model = torch.nn.Linear(16, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wd = watch_optimizer(optimizer, model, checkpoint_dir=args.checkpoint_dir)
    wd.resume()
    while wd.step_count < args.steps:
        x = torch.randn(32, 16)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()  # the hook calls wd.step()
    print(f"finished at step {wd.step_count}")
    wd.close()


if __name__ == "__main__":
    main()
