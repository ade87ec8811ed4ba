"""The collective check: an all-reduce sweep across every node, launched the way `provision
train` launches a script (same torchrun argv, interface variables, supervision and teardown),
with provision/netcheck/allreduce.py as the script.

Bandwidths follow nccl-tests (doc/PERFORMANCE.md there): algbw = bytes / time, and
busbw = algbw x 2(n-1)/n for all-reduce, n being the number of ranks: what each rank's link
carries in a ring all-reduce, so busbw is comparable with a single link's speed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from provision.netcheck.allreduce import PREFIX
from provision.session import HostSession
from provision.train.argv import node_command
from provision.train.config import TrainConfig
from provision.train.launch import Job, JobResult

SCRIPT = Path(__file__).with_name("allreduce.py")
_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>[KMG]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """A message size such as 1K, 64M, 64MiB or 4096 (bytes; K, M and G are powers of 2)."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match["number"]) < 1:
        raise ValueError(f"not a size: {text!r} (examples: 1K, 64M, 4096)")
    return int(match["number"]) * _UNITS[match["unit"].upper()]


def size_label(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def bus_bandwidth(algbw: float, ranks: int) -> float:
    """nccl-tests' all-reduce bus bandwidth; 0 for a single rank, which sends nothing."""
    return algbw * 2 * (ranks - 1) / ranks


@dataclass(frozen=True)
class Sample:
    size: int            # bytes per rank
    seconds: float       # one all-reduce, on the slowest rank
    ranks: int

    @property
    def algbw(self) -> float:
        """Bytes per second."""
        return self.size / self.seconds

    @property
    def busbw(self) -> float:
        return bus_bandwidth(self.algbw, self.ranks)

    def as_dict(self) -> dict:
        return {"bytes": self.size, "seconds": self.seconds, "ranks": self.ranks,
                "algbw_bytes_per_s": self.algbw, "busbw_bytes_per_s": self.busbw}


@dataclass(frozen=True)
class CollectiveResult:
    samples: tuple[Sample, ...] = ()
    backend: str | None = None
    problem: str | None = None     # why the sweep failed (a finding)
    skipped: str | None = None     # why it did not run (the cause is reported elsewhere)
    interrupted: bool = False

    def as_dict(self) -> dict:
        return {"backend": self.backend, "problem": self.problem, "skipped": self.skipped,
                "interrupted": self.interrupted, "sizes": [s.as_dict() for s in self.samples]}


def parse_lines(lines: list[str]) -> tuple[list[Sample], str | None]:
    """The samples (and backend) in rank 0's result lines; other lines are ignored."""
    samples, backend = [], None
    for line in lines:
        if not line.startswith(PREFIX):
            continue
        try:
            data = json.loads(line[len(PREFIX):])
            sample = Sample(int(data["bytes"]), float(data["seconds"]), int(data["world"]))
        except (ValueError, KeyError, TypeError):
            continue
        if sample.seconds > 0 and sample.ranks > 0:
            samples.append(sample)
            backend = data.get("backend", backend)
    return samples, backend


def sweep_args(min_bytes: int, max_bytes: int, iters: int) -> list[str]:
    return [f"--min-bytes={min_bytes}", f"--max-bytes={max_bytes}", f"--iters={iters}",
            f"--warmup={max(1, iters // 4)}"]


def collective_job(config: TrainConfig, sessions: dict[str, HostSession],
                   ifnames: dict[str, str], log_dir: Path, grace: float = 3.0
                   ) -> tuple[Job, list[str]]:
    """The torchrun job of the sweep, and the list its rank-0 result lines will be put in."""
    commands = {n.name: node_command(config, n, ifnames.get(n.name)) for n in config.nodes}
    lines: list[str] = []

    def sink(host: str, rank: int, stream: str, line: str) -> None:
        if rank == 0 and stream == "stdout":
            lines.append(line)

    return Job(config, sessions, commands, log_dir, sink, grace), lines


def collective_result(result: JobResult, lines: list[str]) -> CollectiveResult:
    samples, backend = parse_lines(lines)
    problem = None
    if result.interrupted:
        return CollectiveResult(tuple(samples), backend, interrupted=True)
    if result.root_cause is not None:
        cause = result.root_cause
        what = cause.lost or cause.error or f"exit code {cause.exit_code}"
        tail = " | ".join(list(cause.tail)[-3:])
        problem = f"{cause.host} (node rank {cause.rank}): {what}" + (f": {tail}" if tail else "")
    elif not samples:
        problem = "the sweep printed no result"
    return CollectiveResult(tuple(samples), backend, problem)
