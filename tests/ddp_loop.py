"""A 2-rank gloo DDP loop run by torchrun, for the restart test.

Usage: torchrun --nproc-per-node 2 --max-restarts 1 tests/ddp_loop.py SOCKET CKPT_DIR STEPS MODE
MODE "helper" uses watchdog.client.distributed.init_process_group; "plain" uses
dist.init_process_group("gloo"). Generation 0 checkpoints at step 5 on every
rank and exits 75 (as checkpoint_and_restart does); generation 1 resumes and
finishes, printing "done <rank> <resumed step> <final step>" after
"gloo-workers <rank> <n>": the gloo worker threads that the exit hook of
watchdog.client.distributed finds by name (it waits for them to park at exit).
Each generation of each rank prints "job <rank> <generation> <job id>" first.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

import watchdog
from watchdog.client import RestartRequested
from watchdog.client.distributed import gloo_worker_states, init_process_group


def main() -> None:
    socket_path, checkpoint_dir, mode = sys.argv[1], sys.argv[2], sys.argv[4]
    steps = int(sys.argv[3])
    if mode == "helper":
        init_process_group("gloo")
    else:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wd = watchdog.attach(
        model, optimizer, socket_path=socket_path, checkpoint_dir=checkpoint_dir, restart_wait_s=30
    )
    resumed = wd.resume() or 0
    generation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    print(f"job {dist.get_rank()} {generation} {wd.job}", flush=True)
    while wd.step_count < steps:
        optimizer.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        wd.step()
        if generation == 0 and wd.step_count == 5:
            # what the daemon's checkpoint_and_restart does at a synchronised step
            wd._deferred.append(
                watchdog.client.handle.Command(0, "checkpoint_and_restart", {}, 0, 0.0)
            )
            wd._pending = True
            try:
                wd.step(wd.step_count)
            except RestartRequested as exc:
                sys.exit(exc.code)
    # counted after training: the workers name themselves only once they have started
    print(f"gloo-workers {dist.get_rank()} {len(gloo_worker_states() or [])}", flush=True)
    print(f"done {dist.get_rank()} {resumed} {wd.step_count}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
