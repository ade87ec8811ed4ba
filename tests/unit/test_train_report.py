"""What `provision train` prints after a job: the root cause first, then one line per node."""

from __future__ import annotations

from provision.cli.train_cmd import report
from provision.train.launch import JobResult, NodeOutcome


def stopped(host: str, rank: int) -> NodeOutcome:
    return NodeOutcome(host, rank, exit_code=143, stopped_by_teardown=True, survivors=0)


def test_after_ctrl_c_each_node_says_it_was_stopped_by_ctrl_c(capsys):
    nodes = [stopped("gpu1", 0), stopped("gpu2", 1)]
    report(JobResult("r1", nodes, True, None, 0.0, 1.0, 0.8))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("interrupted: the job was stopped on every node")
    assert err[1:3] == ["gpu1 (node rank 0): stopped by Ctrl-C",
                        "gpu2 (node rank 1): stopped by Ctrl-C"]
    assert err[3].startswith("teardown took 0.8 s; no process of the job is left")


def test_after_a_failure_each_other_node_names_the_failed_one(capsys):
    failed = NodeOutcome("gpu3", 2, exit_code=1)
    failed.tail.append("RuntimeError: boom")
    nodes = [stopped("gpu1", 0), stopped("gpu2", 1), failed]
    report(JobResult("r1", nodes, False, failed, 0.0, 1.0, 1.2))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ROOT CAUSE: gpu3 (node rank 2) exited with code 1")
    assert err[1] == "    gpu3 | RuntimeError: boom"
    assert err[2:4] == ["gpu1 (node rank 0): stopped: node rank 2 on gpu3 failed",
                        "gpu2 (node rank 1): stopped: node rank 2 on gpu3 failed"]
