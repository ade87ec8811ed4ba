"""Detached runs across real lab hosts: real sshd, real torchrun with gloo, and no controller
once started: the controller is killed, a worker dies, a link is cut, a supervisor is killed."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.lab import ssh_answers
from provision.train.config import RUN_ID_VAR

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "examples" / "ddp_smoke.py"
# Coordination ports (rendezvous_port + 1) of the two runs these tests start side by side.
PORTS = {"firewall_extra_ports": ["29501", "29601"]}
STOP_BOUND = 30.0          # without a controller, every node stops within this


@pytest.fixture(scope="module")
def python(lab) -> str:
    """A training environment the hosts can run: a real venv in the lab directory (which every
    host sees) whose site-packages point at this controller venv's, where torch is; a bare
    symlink to a venv's python would not see them. Plus the lock marker the conda role writes."""
    env = lab.dir / "detached-env"
    subprocess.run([_base_python(), "-m", "venv", "--clear", "--without-pip", str(env)],
                   check=True)
    site = next(env.glob("lib/python*/site-packages"))
    (site / "controller-venv.pth").write_text(
        next(Path(sys.prefix).glob("lib/python*/site-packages")).as_posix() + "\n")
    (env / ".provision-lock-sha256").write_text("lock-detached\n")
    yield str(env / "bin" / "python")
    for host in lab.hosts:
        lab.sh(host.name, "rm -rf /root/.provision /tmp/provision-runs", check=False)


def _base_python() -> str:
    """The interpreter this venv was made from: a venv of a venv's python is not a venv."""
    return str(Path(sys.base_prefix) / "bin" / Path(sys.executable).name)


def training_hosts(lab) -> list[str]:
    return [h.name for h in lab.hosts[:lab.training]]


def job_processes(lab, host: str, run_id: str) -> list[str]:
    """PIDs in a host whose environment carries the run's id."""
    script = (f"for d in /proc/[0-9]*; do grep -qz -- '{RUN_ID_VAR}={run_id}' $d/environ "
              "2>/dev/null && echo ${d#/proc/}; done; true")
    return lab.sh(host, script).stdout.split()


def supervisor_pid(lab, host: str, run_id: str) -> str | None:
    """The run's supervisor on a host, while it runs."""
    d = f"/root/.provision/runs/{run_id}/{host}"
    done = lab.sh(host, f"p=$(cat {d}/supervisor.pid) && grep -qaF {d}/supervisor.py "
                        "/proc/$p/cmdline && echo $p", check=False)
    return done.stdout.strip() or None


def workers(lab, host: str, run_id: str, name: str = "ddp_smoke") -> list[str]:
    found = []
    for pid in job_processes(lab, host, run_id):
        argv = lab.sh(host, f"tr '\\0' ' ' < /proc/{pid}/cmdline", check=False).stdout
        if name in argv and "torch.distributed.run" not in argv:
            found.append(pid)
    return found


def wait_until(predicate, timeout: float, what: str) -> float:
    """Seconds until `predicate()` holds."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.3)
    return time.monotonic() - began


def everything_gone(lab, hosts: list[str], run_id: str) -> bool:
    return not any(job_processes(lab, h, run_id) or supervisor_pid(lab, h, run_id)
                   for h in hosts)


def detach(cli, inventory: Path, python: str, script: Path, *args: str) -> str:
    done = cli("train", "--detach", "-i", inventory, "--python", python, script, *args,
               timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.strip()
    assert re.fullmatch(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}", run_id), done.stdout
    assert f"provision attach {run_id}" in done.stderr
    return run_id


def runs_line(cli, inventory: Path, run_id: str) -> str:
    done = cli("runs", "-i", inventory, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = [l for l in done.stdout.splitlines() if l.startswith(run_id)]
    return line


def wait_for_workers(lab, hosts: list[str], run_id: str, name: str = "ddp_smoke") -> None:
    wait_until(lambda: all(workers(lab, h, run_id, name) for h in hosts), 90,
               "every node's workers started")


def test_detach_refuses_a_port_the_firewall_does_not_open(lab, make_inventory, python, cli):
    done = cli("train", "--detach", "-i", make_inventory(), "--python", python, SMOKE,
               timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'add "29501" to firewall_extra_ports' in done.stderr and not done.stdout
    for host in training_hosts(lab):
        assert lab.sh(host, "ls /root/.provision/runs 2>/dev/null", check=False).stdout == ""


def test_a_detached_run_outlives_its_controller_and_is_recorded_on_the_nodes(
        lab, make_inventory, python, cli):
    inventory = make_inventory(vars=PORTS)
    hosts = training_hosts(lab)
    controller = subprocess.Popen(
        [sys.executable, "-m", "provision", "train", "--detach", "-i", str(inventory),
         "--python", python, str(SMOKE), "--steps", "15", "--sleep", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = controller.stdout.readline().strip()
    controller.kill()                           # kill -9, connections dropped mid-goodbye
    controller.communicate()
    assert run_id, "the controller printed no run id"
    wait_until(lambda: "succeeded" in runs_line(cli, inventory, run_id).split(), 120,
               "the run succeeded")
    line = runs_line(cli, inventory, run_id)     # a new controller process reads the nodes
    assert line.split()[1:3] == ["succeeded", "3"], line
    logs = cli("logs", run_id, "-i", inventory, timeout=60)
    assert logs.returncode == 0, logs.stderr
    results = re.findall(r"^(\S+)\[(\d)\] +\| ddp_smoke rank=(\d) .*allreduce=OK", logs.stdout,
                         re.M)
    assert sorted((h, int(r)) for h, r, _ in results) == [(h, i) for i, h in enumerate(hosts)]
    digest = hashlib.sha256(inventory.read_bytes()).hexdigest()
    for rank, host in enumerate(hosts):
        record = json.loads(lab.sh(host, f"cat /root/.provision/runs/{run_id}/{host}/"
                                         "record.json").stdout)
        assert record["inventory_sha256"] == digest and "--detach" in record["command"]
        assert record["rank"] == rank and record["state"] == "succeeded"
        assert [(n["host"], n["rank"], n["exit_code"]) for n in record["nodes"]] == \
            [(h, i, 0) for i, h in enumerate(hosts)]
        assert record["ended"] > record["started"]
        assert job_processes(lab, host, run_id) == []


def test_a_killed_worker_stops_every_node_and_runs_names_it(lab, make_inventory, python,
                                                            cli):
    inventory = make_inventory(vars=PORTS)
    hosts = training_hosts(lab)
    run_id = detach(cli, inventory, python, SMOKE, "--steps", "1000", "--sleep", "0.2")
    wait_for_workers(lab, hosts, run_id)
    victim = hosts[1]
    lab.sh(victim, f"kill -9 {' '.join(workers(lab, victim, run_id))}")
    took = wait_until(lambda: everything_gone(lab, hosts, run_id), STOP_BOUND,
                      "every node's job stopped")
    print(f"a worker killed to every node stopped, no controller: {took:.1f} s")
    line = runs_line(cli, inventory, run_id)
    assert line.split()[1] == "failed" and f"{victim} (node rank 1)" in line, line


def test_a_cut_link_stops_the_other_nodes(lab, make_inventory, python, cli):
    inventory = make_inventory(vars=PORTS)
    hosts = training_hosts(lab)
    run_id = detach(cli, inventory, python, SMOKE, "--steps", "1000", "--sleep", "0.2")
    wait_for_workers(lab, hosts, run_id)
    victim, others = hosts[2], hosts[:2]
    lab.sh(victim, "ip link set eth0 down")
    try:
        took = wait_until(lambda: everything_gone(lab, others, run_id), STOP_BOUND,
                          "the other nodes stopped")
        print(f"a link cut to the other nodes stopped: {took:.1f} s")
        # The cut-off node stops by itself too: it no longer hears the master.
        wait_until(lambda: everything_gone(lab, [victim], run_id), STOP_BOUND,
                   "the cut-off node stopped")
    finally:
        lab.sh(victim, "ip link set eth0 up")
    wait_until(lambda: ssh_answers(lab.host(victim).address, 1.0), 30, "the link back")
    line = runs_line(cli, inventory, run_id)
    assert line.split()[1] == "failed" and f"{victim} (node rank 2) lost" in line, line


def test_kill_9_of_a_supervisor_stops_its_workers_then_every_node(lab, make_inventory, python,
                                                                  cli):
    inventory = make_inventory(vars=PORTS)
    hosts = training_hosts(lab)
    run_id = detach(cli, inventory, python, SMOKE, "--steps", "1000", "--sleep", "0.2")
    wait_for_workers(lab, hosts, run_id)
    victim = hosts[1]
    lab.sh(victim, f"kill -9 {supervisor_pid(lab, victim, run_id)}")
    own = wait_until(lambda: not job_processes(lab, victim, run_id), STOP_BOUND,
                     "the killed supervisor's workers stopped")
    took = wait_until(lambda: everything_gone(lab, hosts, run_id), STOP_BOUND,
                      "every node stopped")
    print(f"kill -9 of a supervisor: its node clear in {own:.1f} s, every node in {took:.1f} s")
    line = runs_line(cli, inventory, run_id)
    assert line.split()[1] == "failed" and f"{victim} (node rank 1) lost" in line, line


TICKS = """\
import os, sys, time
rank = os.environ["RANK"]
for step in range(int(sys.argv[1])):
    print(f"tick rank={rank} step={step}", flush=True)
    time.sleep(0.3)
"""


def test_attach_detaches_on_ctrl_c_and_two_runs_are_independent(lab, make_inventory, python,
                                                                cli, tmp_path):
    hosts = training_hosts(lab)
    script = tmp_path / "ticks.py"
    script.write_text(TICKS)
    inventory = make_inventory(vars=PORTS)
    other_inventory = make_inventory(vars={**PORTS, "rendezvous_port": 29600}, name="other.yaml")
    long_run = detach(cli, inventory, python, script, "100000")
    short_run = detach(cli, other_inventory, python, script, "40")
    wait_for_workers(lab, hosts, long_run, "ticks.py")
    listed = cli("runs", "-i", inventory, timeout=60).stdout
    assert {l.split()[0]: l.split()[1] for l in listed.splitlines()[1:]
            if l.split()[0] in (long_run, short_run)} == {long_run: "running",
                                                           short_run: "running"}

    attach = subprocess.Popen([sys.executable, "-m", "provision", "attach", long_run, "-i",
                               str(inventory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    time.sleep(4)
    attach.send_signal(signal.SIGINT)
    out, err = attach.communicate(timeout=30)
    assert attach.returncode == 0, err
    assert re.search(rf"^{hosts[1]}\[1\] +\| tick rank=1 step=\d+", out, re.M), out
    assert f"provision stop {long_run}" in err
    time.sleep(1)
    assert all(workers(lab, h, long_run, "ticks.py") for h in hosts), "attach stopped the run"

    stopped = cli("stop", long_run, "-i", inventory, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "no process of the job is left" in stopped.stderr
    assert everything_gone(lab, hosts, long_run)

    followed = cli("attach", short_run, "-i", other_inventory, timeout=120)
    assert followed.returncode == 0, followed.stderr
    assert f"run {short_run} succeeded" in followed.stderr
    for rank, host in enumerate(hosts):
        assert f"tick rank={rank} step=39" in followed.stdout
    only = cli("logs", short_run, "-i", other_inventory, "--rank", "2", "--tail", "1",
               timeout=60)
    assert only.stdout.splitlines() == [f"{hosts[2]}[2] | tick rank=2 step=39"], only.stdout
    assert runs_line(cli, inventory, long_run).split()[1] == "stopped"
    assert runs_line(cli, inventory, short_run).split()[1] == "succeeded"
    assert everything_gone(lab, hosts, short_run)
