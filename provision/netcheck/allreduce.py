"""All-reduce timing sweep for `provision net`, run by torchrun on every node like a training
script (provision stages it and launches it through `provision train`'s launch code).

NCCL when CUDA is available, gloo otherwise. For each message size, from --min-bytes doubling up
to --max-bytes, rank 0 prints one line:

    provision-net-allreduce {"bytes": 1024, "seconds": 0.00012, "world": 4, "backend": "gloo"}

`seconds` is the mean time of one all-reduce on the slowest rank; the controller derives algbw
and busbw from it with nccl-tests' definitions.
"""

from __future__ import annotations

import argparse
import json
import os
import time

PREFIX = "provision-net-allreduce "


def main() -> None:
    # Imported here: the controller imports this module for PREFIX, and it needs no torch.
    import torch
    import torch.distributed as dist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-bytes", type=int, default=1024)
    parser.add_argument("--max-bytes", type=int, default=64 << 20)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    world = dist.get_world_size()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    size = args.min_bytes
    while size <= args.max_bytes:
        tensor = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
        for _ in range(args.warmup):
            dist.all_reduce(tensor)
        sync()
        dist.barrier()
        started = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(tensor)
        sync()
        elapsed = torch.tensor([(time.perf_counter() - started) / args.iters],
                               dtype=torch.float64, device=device)
        # The collective is as slow as its slowest rank.
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if dist.get_rank() == 0:
            print(PREFIX + json.dumps({"bytes": tensor.numel() * 4, "seconds": elapsed.item(),
                                       "world": world, "backend": dist.get_backend()}),
                  flush=True)
        size *= 2
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
