"""HostResult.status, counts, as_dict and the exit code of a run."""

from __future__ import annotations

import pytest

from provision.plan import (EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, HostResult, Status,
                            TaskResult, exit_code)


def host(name, *statuses, unreachable=None):
    return HostResult(name, [TaskResult(name, "r", f"t{i}", s, f"m{i}")
                             for i, s in enumerate(statuses)], unreachable)


@pytest.mark.parametrize("statuses,expected", [
    ((), Status.SKIPPED),
    ((Status.SKIPPED,), Status.SKIPPED),
    ((Status.OK, Status.SKIPPED), Status.OK),
    ((Status.OK, Status.CHANGED, Status.SKIPPED), Status.CHANGED),
    ((Status.CHANGED, Status.FAILED, Status.OK), Status.FAILED),
    ((Status.FAILED,), Status.FAILED),
])
def test_host_status_is_the_worst_task(statuses, expected):
    assert host("h", *statuses).status is expected


def test_unreachable_wins_over_everything():
    assert host("h", Status.FAILED, unreachable="connection refused").status is Status.UNREACHABLE


def test_counts():
    result = host("h", Status.OK, Status.OK, Status.CHANGED, Status.SKIPPED)
    assert [result.count(s) for s in Status] == [2, 1, 0, 1, 0, 0]
    assert host("u", unreachable="timed out").count(Status.UNREACHABLE) == 1


def test_as_dict():
    result = host("h", Status.CHANGED)
    result.round_trips = 3
    result.tasks[0] = TaskResult("h", "ntp", "conf", Status.CHANGED, "update", diff="+x",
                                 output=None)
    assert result.as_dict() == {
        "host": "h", "status": "changed", "unreachable": None, "interrupted": None,
        "round_trips": 3,
        "counts": {"ok": 0, "changed": 1, "failed": 0, "skipped": 0, "unreachable": 0,
                   "interrupted": 0},
        "tasks": [{"role": "ntp", "task": "conf", "status": "changed", "message": "update",
                   "diff": "+x", "output": None}],
    }


@pytest.mark.parametrize("hosts,code", [
    ([], EXIT_OK),
    ([host("a", Status.OK), host("b", Status.CHANGED), host("c")], EXIT_OK),
    ([host("a", Status.OK), host("b", unreachable="down")], EXIT_UNREACHABLE),
    ([host("a", Status.FAILED), host("b", unreachable="down")], EXIT_FAILED),
    ([host("a", Status.OK, Status.FAILED)], EXIT_FAILED),
])
def test_exit_code(hosts, code):
    assert exit_code(hosts) == code


def test_exit_code_values_are_the_documented_ones():
    assert (EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE) == (0, 3, 4)
