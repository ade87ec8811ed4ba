"""The service op beyond systemd: restart, and hosts without systemd managed through a pidfile.

The scripts it plans for hosts without systemd are run for real here, against a real daemon (a
`sleep` that a start command daemonizes), under a pidfile path made to break bad quoting.
(The systemd cases without restart are data-driven, in cases/operations/service.yaml.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from provision.facts.system import Os, OsInfo, PidfileProcess, ServiceState
from provision.inventory import Host
from provision.operations import REGISTRY, Change, Command, Failure, HostContext, NoChange
from provision.operations import system as system_ops

CTX = HostContext(Host(name="n1", address="10.0.0.1"))
PIDFILE = "/run/chrony/chronyd.pid"
START = ["chronyd", "-f", "/etc/chrony/chrony.conf", "-x"]


def os_info(systemd: bool) -> OsInfo:
    return OsInfo("debian", (), "12", "x86_64", "apt", systemd)


def plan(args: dict, systemd: bool, enabled_active=(False, False), pid: int | None = None):
    op = REGISTRY["service"]
    values = {Os(): os_info(systemd), ServiceState(args["unit"]): enabled_active,
              PidfileProcess(args.get("pidfile", "")): pid}
    wanted = op.facts(args)
    assert set(wanted) <= set(values)
    return op.plan(args, {f: values[f] for f in wanted}, CTX)


def test_pidfile_is_read_only_when_given():
    assert REGISTRY["service"].facts({"unit": "chrony"}) == [Os(), ServiceState("chrony")]
    assert REGISTRY["service"].facts({"unit": "chrony", "pidfile": PIDFILE})[-1] == \
        PidfileProcess(PIDFILE)


def test_systemd_restart():
    outcome = plan({"unit": "chrony", "restarted": True}, True, (True, True))
    assert outcome == Change("restart chrony", (Command(["systemctl", "restart", "chrony"]),))
    outcome = plan({"unit": "chrony", "restarted": True}, True, (False, False))
    assert outcome == Change("enable and restart chrony",
                             (Command(["systemctl", "enable", "chrony"]),
                              Command(["systemctl", "restart", "chrony"])))


def test_systemd_ignores_pidfile_and_start():
    outcome = plan({"unit": "chrony", "pidfile": PIDFILE, "start": START}, True, (True, False))
    assert outcome == Change("start chrony", (Command(["systemctl", "start", "chrony"]),))


def test_no_systemd_without_pidfile_fails_with_the_way_out():
    outcome = plan({"unit": "chrony", "start": START}, False)
    assert isinstance(outcome, Failure)
    assert outcome.reason == ("cannot manage chrony: systemd is not running on this host (give "
                              "the service op `pidfile` and `start` to manage it without systemd)")


def test_no_systemd_running():
    outcome = plan({"unit": "chrony", "pidfile": PIDFILE, "start": START}, False, pid=42)
    assert outcome == NoChange("chrony runs (pid 42); without systemd it is not started at boot")
    outcome = plan({"unit": "chrony", "pidfile": PIDFILE, "start": START, "started": False},
                   False)
    assert outcome == NoChange("chrony is not running, and not wanted running")


def test_no_systemd_start_and_restart():
    outcome = plan({"unit": "chrony", "pidfile": PIDFILE, "start": START}, False)
    assert outcome.description == "start chrony"
    assert "kill" not in outcome.commands[0].run
    assert "chronyd -f /etc/chrony/chrony.conf -x </dev/null" in outcome.commands[0].run
    outcome = plan({"unit": "chrony", "pidfile": PIDFILE, "start": START, "restarted": True},
                   False, pid=42)
    assert outcome.description == "restart chrony (pid 42)"
    assert 'kill -TERM "$pid"' in outcome.commands[0].run
    outcome = plan({"unit": "chrony", "pidfile": PIDFILE, "start": START, "restarted": True},
                   False)
    assert outcome.description == "start chrony"


# -- the scripts, for real ---------------------------------------------------------------------

def gather(fact):
    done = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True,
                          timeout=10)
    return fact.parse(done.stdout, done.returncode)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def daemon(tmp_path):
    """A pidfile path that breaks bad quoting, a start argv that daemonizes a `sleep` writing
    it (optionally one that ignores SIGTERM), and cleanup of every process it started."""
    pidfile = tmp_path / "run dir $(touch pwned) 'x'" / "d.pid"
    pidfile.parent.mkdir()
    started: list[int] = []

    def start_argv(ignore_term: bool = False, write_pidfile: bool = True) -> list[str]:
        body = ("trap '' TERM; " if ignore_term else "") + "exec sleep 600"
        # Without the pidfile the PID goes elsewhere: cleanup still finds the process.
        write = 'echo $! > "$1"' if write_pidfile else 'echo $! > "$1.elsewhere"'
        return ["sh", "-c", f"sh -c {body!r} </dev/null >/dev/null 2>&1 & {write}", "sh",
                str(pidfile)]

    def run(args: dict) -> tuple[object, subprocess.CompletedProcess | None]:
        args = {"unit": "probe", "pidfile": str(pidfile), **args}
        op = REGISTRY["service"]
        facts = {f: (os_info(False) if isinstance(f, Os) else gather(f)) for f in op.facts(args)}
        outcome = op.plan(args, facts, CTX)
        done = None
        if isinstance(outcome, Change):
            [command] = outcome.commands
            done = subprocess.run(["sh", "-c", command.run], capture_output=True, text=True,
                                  cwd=tmp_path, timeout=30)
        pid = gather(PidfileProcess(str(pidfile)))
        if pid:
            started.append(pid)
        return outcome, done

    yield pidfile, start_argv, run
    elsewhere = Path(f"{pidfile}.elsewhere")
    if elsewhere.exists():
        started.append(int(elsewhere.read_text()))
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "pwned").exists(), "an injected command ran"


def test_start_restart_for_real(daemon):
    pidfile, start_argv, run = daemon
    outcome, done = run({"start": start_argv()})
    assert outcome.description == "start probe" and done.returncode == 0, done.stderr
    first = int(pidfile.read_text())
    assert alive(first)
    outcome, done = run({"start": start_argv()})
    assert isinstance(outcome, NoChange) and done is None
    outcome, done = run({"start": start_argv(), "restarted": True})
    assert outcome.description == f"restart probe (pid {first})"
    assert done.returncode == 0, done.stderr
    second = int(pidfile.read_text())
    assert second != first and alive(second) and not alive(first)


def test_stale_pidfile_counts_as_stopped(daemon):
    pidfile, start_argv, run = daemon
    pidfile.write_text("999999999\n")
    outcome, done = run({"start": start_argv()})
    assert outcome.description == "start probe" and done.returncode == 0, done.stderr


def test_start_that_writes_no_pidfile_fails_clearly(daemon, monkeypatch):
    monkeypatch.setattr(system_ops, "START_WAIT_S", 1)
    pidfile, start_argv, run = daemon
    _, done = run({"start": start_argv(write_pidfile=False)})
    assert done.returncode == 1
    assert "names no running process after 1 s" in done.stderr
    assert str(pidfile) in done.stderr


def test_start_command_failure_shows_its_output(daemon):
    _, _, run = daemon
    _, done = run({"start": ["sh", "-c", "echo no config here >&2; exit 3"]})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "starting probe failed: sh -c 'echo no config here >&2; exit 3'", "no config here"]


def test_process_that_ignores_term_fails_the_restart(daemon, monkeypatch):
    monkeypatch.setattr(system_ops, "STOP_WAIT_S", 1)
    pidfile, start_argv, run = daemon
    run({"start": start_argv(ignore_term=True)})
    stubborn = int(pidfile.read_text())
    time.sleep(0.2)              # let the daemon's shell set its trap before the TERM
    _, done = run({"start": start_argv(), "restarted": True})
    assert done.returncode == 1
    assert done.stderr.strip() == f"probe did not exit within 1 s of SIGTERM: pid {stubborn}"
    assert alive(stubborn)
