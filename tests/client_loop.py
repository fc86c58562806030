"""A CPU PyTorch training loop attached to the watchdog, for tests with real processes.

Usage: python tests/client_loop.py SOCKET CHECKPOINT_DIR STEPS [STEP_SLEEP_S]
Resumes from the newest checkpoint, trains, prints "step N" every 50 steps and
"done N" at the end. Exits 0, or 75 after a checkpoint_and_restart command.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

import watchdog


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    socket_path, checkpoint_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.002
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wd = watchdog.attach(
        model,
        optimizer,
        socket_path=socket_path,
        checkpoint_dir=checkpoint_dir,
        job="test-job",
        heartbeat_s=0.2,
    )
    start = wd.resume() or 0
    print(f"resumed {start}", flush=True)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    while wd.step_count < steps:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        wd.step()
        if wd.step_count % 50 == 0:
            print(f"step {wd.step_count}", flush=True)
        time.sleep(pause)
    print(f"done {wd.step_count}", flush=True)
    wd.close()


if __name__ == "__main__":
    main()
