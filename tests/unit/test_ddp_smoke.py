"""examples/ddp_smoke.py under a real single-node torchrun with two gloo workers (~5 s a run)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "ddp_smoke.py"
RESULT_LINE = re.compile(
    r"^ddp_smoke rank=(\d+) local_rank=(\d+) world=(\d+) host=\S+ allreduce=OK sum=(\d+) "
    r"loss=\d+\.\d{4}$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*script_args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--max_restarts=0",
            str(SCRIPT), *script_args]
    # gloo binds to the interface the host name resolves to unless told; pin it to loopback.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.mark.timeout(90)
def test_every_rank_reports_a_correct_allreduce() -> None:
    result = torchrun("--steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    matches = [RESULT_LINE.match(line) for line in lines]
    assert all(matches), lines
    fields = sorted(m.groups() for m in matches if m)
    assert fields == [("0", "0", "2", "1"), ("1", "1", "2", "1")]


@pytest.mark.timeout(90)
def test_a_failing_rank_fails_the_job_with_its_exit_code() -> None:
    result = torchrun("--steps", "50", "--fail-rank", "1")
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr
    # torchrun's failure summary lists rank 1 with its exit code (as the root cause, or beside
    # rank 0 when rank 0's collective broke at the same moment).
    assert re.search(r"rank\s+: 1 .*\n\s+exitcode\s+: 3 ", result.stderr), result.stderr[-3000:]
    assert "allreduce=OK" not in result.stdout
