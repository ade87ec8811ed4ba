"""The host lock's script, run for real under this machine's sh and flock, on a lock file of
the test's own."""

from __future__ import annotations

import subprocess

import pytest

from provision.host_lock import (BUSY, EXIT_BUSY, LockRequest, holder_named, locked_script)

FENCE = "@@FENCE"


@pytest.fixture
def hold(tmp_path):
    """Start a run's lock command; every one still running is killed afterwards."""
    started: list[subprocess.Popen] = []

    def hold(holder: str, wait: bool = True) -> subprocess.Popen:
        request = LockRequest(holder, wait, lambda host, message: None)
        script = locked_script("echo fact-output", FENCE, request, str(tmp_path / "lock"))
        process = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait(5)


def read_until_fence(process: subprocess.Popen) -> list[str]:
    lines = []
    while not (line := process.stdout.readline()).startswith(FENCE):
        assert line, "the script ended before its fence"
        lines.append(line)
    return lines


def test_the_lock_is_held_after_the_facts_and_a_second_run_waits_for_it(hold):
    first = hold("controller a pid 1 since noon")
    assert "fact-output\n" in read_until_fence(first)
    second = hold("controller b pid 2 since one")
    assert second.stderr.readline() == f"{BUSY} controller a pid 1 since noon\n"
    assert second.poll() is None              # waiting, its facts not run yet

    first.kill()                              # the first run's channel closed
    first.wait(5)

    assert "fact-output\n" in read_until_fence(second)
    assert second.poll() is None              # and now it holds the lock


def test_without_waiting_a_held_lock_fails_at_once_naming_the_holder(hold):
    first = hold("controller a pid 1 since noon")
    read_until_fence(first)
    second = hold("controller b pid 2 since one", wait=False)
    assert second.wait(10) == EXIT_BUSY
    stderr = second.stderr.read()
    assert holder_named(stderr) == "controller a pid 1 since noon"
    assert "fact-output" not in second.stdout.read()


def test_the_holder_is_quoted(hold, tmp_path):
    proof = tmp_path / "pwned"
    first = hold(f"x'; touch {proof}; '$(touch {proof})")
    read_until_fence(first)
    assert not proof.exists()
    assert (tmp_path / "lock").read_text() == f"x'; touch {proof}; '$(touch {proof})\n"
