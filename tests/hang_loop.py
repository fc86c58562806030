"""A 2-rank gloo job that hangs on purpose, attached to the watchdog, for the hung-job tests.

Usage: python tests/hang_loop.py SOCKET STEPS MODE   (RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in the environment, as torchrun or the test sets them)

Both ranks train a tiny DDP model with one all_reduce per step. In the first
generation (TORCHELASTIC_RESTART_COUNT unset or 0), after HANG_AT steps rank 1
sleeps where it should join the next all_reduce, and rank 0 blocks inside it:
the hung collective of a real job. MODE:

* ``hang``: nothing more; later generations (torchrun restarts) train STEPS
  steps and print "done <rank> <step>".
* ``survive``: rank 0 catches the error gloo raises when its peer dies (gloo
  notices a closed connection; NCCL would keep waiting until its timeout) and
  then waits as an NCCL rank would: still registered, never stepping.

Prints "hanging <rank> <pid>" just before the hang.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist

import watchdog
from watchdog.client.distributed import init_process_group

HANG_AT = 20


def main() -> None:
    socket_path, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    init_process_group("gloo")  # restart-safe: each torchrun generation gets its own keys
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wd = watchdog.attach(model, optimizer, socket_path=socket_path, job="hang-job")
    first = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
    while wd.step_count < (HANG_AT if first else steps):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        wd.step()
        time.sleep(0.02)
    if not first:
        print(f"done {rank} {wd.step_count}", flush=True)
        dist.destroy_process_group()
        return
    print(f"hanging {rank} {os.getpid()}", flush=True)
    if rank == 1:
        time.sleep(3600)  # never joins the collective below
    tensor = torch.ones(1)
    try:
        dist.all_reduce(tensor)  # blocks: rank 1 never comes
    except RuntimeError as exc:
        if mode != "survive":
            raise
        print(f"collective failed {rank}: {str(exc)[:80]}", flush=True)
        time.sleep(3600)


if __name__ == "__main__":
    main()
