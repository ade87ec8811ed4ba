"""stop_script and supervised_script, run for real under the local `sh` against real
processes marked (or not) with PROVISION_RUN_ID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from provision.train.config import RUN_ID_VAR
from provision.train.processes import stop_script, supervised_script

# The scripts must never find the shell (or pytest) that runs them.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != RUN_ID_VAR}


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def sh(script: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], env=CLEAN_ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def spawn():
    """Start real processes; whatever a test leaves alive is killed afterwards."""
    started: list[subprocess.Popen] = []

    def spawn(*argv: str) -> subprocess.Popen:
        process = subprocess.Popen(list(argv), env=CLEAN_ENV, stdin=subprocess.DEVNULL)
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(5)


@pytest.fixture
def run_id():
    return f"t-{uuid.uuid4().hex[:12]}"


def test_stop_kills_the_job_and_spares_other_jobs_and_unrelated_processes(spawn, run_id,
                                                                          marked_pids):
    other_id = f"{run_id}-other"    # a longer id with ours as prefix: matching must be exact
    job = [spawn("env", f"{RUN_ID_VAR}={run_id}", "sleep", "60"),
           spawn("env", "A=1", f"{RUN_ID_VAR}={run_id}", "B=2", "sleep", "60")]
    other = spawn("env", f"{RUN_ID_VAR}={other_id}", "sleep", "60")
    unrelated = spawn("sleep", "60")
    # The marker in argv (not the environment) is not the job either.
    in_argv = spawn("sh", "-c", "sleep 60", f"{RUN_ID_VAR}={run_id}")
    assert wait_for(lambda: len(marked_pids(run_id)) == 2 and marked_pids(other_id))

    result = sh(stop_script(run_id, 2.0))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    for process in job:
        assert process.wait(2) == -signal.SIGTERM      # TERM was enough: no KILL needed
    assert marked_pids(run_id) == set()
    assert other.poll() is None and unrelated.poll() is None and in_argv.poll() is None
    assert marked_pids(other_id) == {other.pid}


def test_stop_kills_what_ignores_term_after_the_grace(spawn, run_id, marked_pids):
    stubborn = spawn("env", f"{RUN_ID_VAR}={run_id}", "sh", "-c", 'trap "" TERM; sleep 60; :')
    polite = spawn("env", f"{RUN_ID_VAR}={run_id}", "sleep", "60")
    # sh and its sleep (which inherits the ignored TERM) both carry the marker.
    assert wait_for(lambda: len(marked_pids(run_id)) == 3)
    grace = 0.6

    began = time.monotonic()
    result = sh(stop_script(run_id, grace))
    took = time.monotonic() - began

    assert result.stdout.strip() == "0"
    assert polite.wait(2) == -signal.SIGTERM
    assert stubborn.wait(2) == -signal.SIGKILL
    assert took >= grace                # it waited for the grace before the KILL
    assert took < grace + 5
    assert wait_for(lambda: not marked_pids(run_id), 2)


def test_stop_returns_at_once_when_the_job_is_gone(spawn, run_id, marked_pids):
    polite = spawn("env", f"{RUN_ID_VAR}={run_id}", "sleep", "60")
    assert wait_for(lambda: marked_pids(run_id))
    began = time.monotonic()
    assert sh(stop_script(run_id, 10.0)).stdout.strip() == "0"
    assert time.monotonic() - began < 5      # not the 10 s grace
    assert polite.wait(2) == -signal.SIGTERM
    # Nothing to stop: still 0 and quick.
    began = time.monotonic()
    assert sh(stop_script(run_id, 10.0)).stdout.strip() == "0"
    assert time.monotonic() - began < 5


def test_a_hostile_run_id_is_quoted(spawn, tmp_path, marked_pids):
    # Run ids are validated elsewhere; the script still quotes the marker.
    proof = tmp_path / "pwned"
    run_id = f"x'; touch {proof}; '"
    process = spawn("env", f"{RUN_ID_VAR}={run_id}", "sleep", "60")
    assert wait_for(lambda: marked_pids(run_id))
    assert sh(stop_script(run_id, 1.0)).stdout.strip() == "0"
    assert process.wait(2) == -signal.SIGTERM
    assert not proof.exists()


@pytest.fixture
def supervise(run_id):
    """Run a job under supervised_script (stdin held open, as the controller does); afterwards
    the supervising shell is killed if still there, and anything left of the job stopped."""
    started: list[subprocess.Popen] = []

    def supervise(job: str, grace: float = 0.5) -> subprocess.Popen:
        process = subprocess.Popen(["sh", "-c", supervised_script(job, run_id, grace)],
                                   env=CLEAN_ENV, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(process)
        return process

    yield supervise
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        if not process.stdin.closed:
            process.stdin.close()
    sh(stop_script(run_id, 0.1))


def test_supervised_job_is_stopped_when_the_controller_goes_away(supervise, run_id, marked_pids):
    process = supervise(f"env {RUN_ID_VAR}={run_id} sleep 60 & "
                        f"env {RUN_ID_VAR}={run_id} sleep 60")
    assert wait_for(lambda: len(marked_pids(run_id)) == 2)
    process.stdin.write(b"still here\n")      # lines on stdin are not EOF
    process.stdin.flush()
    time.sleep(0.3)
    assert process.poll() is None and len(marked_pids(run_id)) == 2

    process.stdin.close()                      # the controller (or its connection) is gone

    assert wait_for(lambda: not marked_pids(run_id), 5)
    assert process.wait(5) == 128 + signal.SIGTERM    # the job's last command was TERMed


@pytest.mark.parametrize("job, code", [
    # The whole job ignores TERM: KILLed after the grace.
    ("sh -c 'trap \"\" TERM; sleep 60; :'", 128 + signal.SIGKILL),
    # torchrun exits at the TERM while a worker that ignores it lives on: the supervising shell
    # sees its job end first, and must not cut the stopping short before the KILL.
    ("sh -c '(trap \"\" TERM; exec sleep 60) & exec sleep 60'", 128 + signal.SIGTERM),
], ids=["all-stubborn", "stubborn-child"])
def test_supervised_job_that_ignores_term_is_killed_after_the_grace(supervise, run_id, job, code,
                                                                    marked_pids):
    process = supervise(f"env {RUN_ID_VAR}={run_id} {job}", grace=0.5)
    assert wait_for(lambda: len(marked_pids(run_id)) == 2)
    process.stdin.close()
    assert wait_for(lambda: not marked_pids(run_id), 5)
    assert process.wait(5) == code


@pytest.mark.parametrize("code", [0, 7])
def test_supervised_job_exit_code_passes_through_while_stdin_stays_open(supervise, code):
    process = supervise(f"echo out; echo err >&2; exit {code}")
    # stdin is still open: the job's own end must not wait for the controller.
    assert process.wait(5) == code
    assert process.stdout.read() == b"out\n"
    assert process.stderr.read() == b"err\n"


def test_supervised_job_does_not_read_the_controllers_stdin(supervise):
    # The job gets /dev/null: only the watcher reads the held-open channel.
    process = supervise("cat; echo done $?")
    assert process.wait(5) == 0
    assert process.stdout.read() == b"done 0\n"
