"""A tiny DDP training run that proves a cluster works: launch it with torchrun on every node.

Uses nccl when CUDA is available and gloo otherwise, trains a small model for a few steps on
seeded random data, checks an all-reduce across every rank, and prints one result line per rank:

    ddp_smoke rank=0 local_rank=0 world=4 host=node1 allreduce=OK sum=6 loss=0.9342
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    parser.add_argument("--sleep", type=float, default=0.0,
                        help="seconds to sleep after each step, to keep a job alive")
    parser.add_argument("--fail-rank", type=int, default=None,
                        help="this global rank exits with code 3 after the first step")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.sleep < 0:
        parser.error("--sleep must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend=backend)  # rank, world size and master come from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # same initial weights everywhere (DDP would broadcast them anyway)
    model = DistributedDataParallel(
        torch.nn.Linear(16, 1).to(device), device_ids=[local_rank] if backend == "nccl" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard of the data
    loss = torch.zeros(())
    for step in range(args.steps):
        inputs = torch.randn(32, 16, generator=data).to(device)
        targets = inputs.sum(dim=1, keepdim=True) * 0.5
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()  # DDP all-reduces the gradients here
        optimizer.step()
        if step == 0 and rank == args.fail_rank:
            print(f"ddp_smoke: rank {rank} fails on purpose (--fail-rank)", file=sys.stderr,
                  flush=True)
            # Leave at once: a normal interpreter exit with gloo's threads still talking to
            # the other ranks can abort (SIGABRT) and hide the exit code a test looks for.
            os._exit(3)
        time.sleep(args.sleep)

    total = torch.tensor([float(rank)], device=device)
    dist.all_reduce(total)
    expected = world * (world - 1) // 2
    if int(total.item()) != expected:
        raise RuntimeError(f"all-reduce of the ranks gave {total.item():g} on rank {rank}, "
                           f"expected {expected} for world size {world}")
    # One write per line: the ranks share torchrun's stdout and print() may split a line in two.
    sys.stdout.write(f"ddp_smoke rank={rank} local_rank={local_rank} world={world} "
                     f"host={socket.gethostname()} allreduce=OK sum={expected} "
                     f"loss={loss.item():.4f}\n")
    sys.stdout.flush()
    # Release DDP's reducer, and let every rank get here, before the group goes: tearing gloo down
    # under a live reducer or a peer still mid-collective sometimes aborts the process at exit.
    del model, optimizer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
