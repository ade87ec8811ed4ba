"""Faults injected by hand into real runs on the lab: a cut link, Ctrl-C and kill -9 of the
controller, two runs at once, a changed host key."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from provision.connection import ConnectOptions, HostConnection
from provision.inventory import load_inventory
from provision.lab import FIRST_HOST_OFFSET, network
from provision.session import HostSession
from provision.train import build_train_config, node_command
from provision.train.launch import Job

ROLES = Path(__file__).parent / "roles"
SLOW = ["--roles-dir", str(ROLES), "--role", "slow_probe"]
SLOW_DIR = "/opt/slow"
# Small, so that a lost link is noticed within seconds: no reply for 1 s x 3.
KEEPALIVE = {"ssh_keepalive_interval": 1, "ssh_keepalive_count_max": 3}
KEEPALIVE_BOUND = 3
SLACK = 10         # connecting, starting the CLI, the loaded 2-core machine


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def long_step_processes(lab, host: str) -> int:
    """Processes of the long step in a host (`sleep 3617` and the shells running it); the
    pattern's brackets keep pgrep's own shell out."""
    return int(lab.sh(host, "pgrep -f 'sleep [3]617' | wc -l").stdout)


def started(lab, hosts: list[str]) -> list[str]:
    return [h for h in hosts
            if lab.sh(h, f"test -e {SLOW_DIR}/started", check=False).returncode == 0]


def clean(lab) -> None:
    for host in lab.hosts:
        lab.sh(host.name, f"pkill -f 'sleep [3]617'; rm -rf {SLOW_DIR}; true")


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "provision", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def veth_of(lab, host) -> str:
    """The host's veth on the controller's side: down, and its link is cut."""
    index = int(host.address.rsplit(".", 1)[1]) - FIRST_HOST_OFFSET + 1
    return network.veth_name(lab.name, index)


class CutLink:
    """Cuts a host's link once `ready()` says so (from a thread); the link is back on exit."""

    def __init__(self, lab, host, ready):
        self.veth = veth_of(lab, host)
        self.ready = ready
        self.at: float | None = None
        self.thread = threading.Thread(target=self._cut, daemon=True)

    def _cut(self) -> None:
        wait_for(self.ready, 60, "the long command's start")
        subprocess.run(["ip", "link", "set", self.veth, "down"], check=True)
        self.at = time.monotonic()

    def __enter__(self) -> "CutLink":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(70)
        subprocess.run(["ip", "link", "set", self.veth, "up"], check=True)


def test_a_cut_link_is_unreachable_within_the_keepalive_bound(lab, make_inventory, cli):
    victim, other = lab.hosts[1], lab.hosts[2]
    inv = make_inventory(vars=KEEPALIVE, hosts=[victim.name, other.name])
    script = (f'if [ "$(hostname)" = {victim.name} ]; then touch /tmp/cut-started; '
              "sleep 3617; else sleep 2; fi")
    lab.sh(victim.name, "rm -f /tmp/cut-started")
    ready = lambda: lab.sh(victim.name, "test -e /tmp/cut-started", check=False).returncode == 0
    try:
        with CutLink(lab, victim, ready) as cut:
            # Without keepalives, TCP's retransmissions end this after a quarter of an hour.
            done = cli("exec", inv, "--json", "--", script, timeout=120)
            ended = time.monotonic()
    finally:
        lab.sh(victim.name, "pkill -f 'sleep [3]617'; rm -f /tmp/cut-started; true")
    report = {h["host"]: h for h in json.loads(done.stdout)["hosts"]}
    assert done.returncode == 4, done.stdout + done.stderr
    assert report[victim.name]["status"] == "unreachable"
    assert "no reply to SSH keepalives" in report[victim.name]["unreachable"]
    assert report[other.name]["status"] == "ok"
    assert ended - cut.at < KEEPALIVE_BOUND + SLACK


def test_train_a_node_whose_link_is_cut_is_the_root_cause_within_the_bound(lab, make_inventory,
                                                                          tmp_path):
    inventory = load_inventory(make_inventory(vars=KEEPALIVE))
    nodes = [inventory.hosts[h.name] for h in lab.hosts[:lab.training]]
    victim = lab.hosts[1]
    config = build_train_config(nodes, script="/bin/true", run_id=f"t-{uuid.uuid4().hex[:8]}",
                                python="/usr/bin/python3", workdir="/tmp")
    # The job is `sleep 3617` on every node: the link, not torch, is what this is about.
    commands = {n.name: dataclasses.replace(node_command(config, n, "eth0"),
                                            argv=["sleep", "3617"]) for n in nodes}
    sessions = {n.name: HostSession(HostConnection(n, ConnectOptions())) for n in nodes}
    job = Job(config, sessions, commands, tmp_path / "logs", lambda *line: None, grace=1.0)
    results = []
    runner = threading.Thread(target=lambda: results.append(job.run()), daemon=True)
    ready = lambda: all(long_step_processes(lab, n.name) for n in nodes)
    try:
        with CutLink(lab, victim, ready) as cut:
            runner.start()
            runner.join(60)
            ended = time.monotonic()
    finally:
        for session in sessions.values():
            session.connection.close()
        clean(lab)
    assert results, "the job never noticed the cut link"
    (result,) = results
    assert result.root_cause is not None and result.root_cause.host == victim.name
    assert "no reply to SSH keepalives" in result.root_cause.lost
    assert ended - cut.at < KEEPALIVE_BOUND + SLACK
    assert all(n.survivors == 0 for n in result.nodes if n.host != victim.name)


def test_ctrl_c_stops_every_host_with_a_recap_and_a_retry_file(lab, make_inventory):
    clean(lab)
    names = [h.name for h in lab.hosts]
    inv = make_inventory()
    run = start("setup", inv, *SLOW, "--forks", "2")
    try:
        wait_for(lambda: len(started(lab, names)) == 2, 60, "the long step's start")
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, out + err
    assert "RECAP" in out and "Traceback" not in out + err
    assert out.count("interrupted=1") == len(names)
    assert err.count("during [slow_probe] long step") == 2
    assert err.count("before it started") == 2
    assert Path(str(inv) + ".retry").read_text().split() == names
    # The commands were stopped on the hosts, and nothing claims to be done.
    wait_for(lambda: not any(long_step_processes(lab, h) for h in names), 15,
             "every remote process gone")
    assert not [h for h in names
                if lab.sh(h, f"test -e {SLOW_DIR}/done", check=False).returncode == 0]
    clean(lab)


def test_kill_9_of_the_controller_leaves_no_remote_process_nor_lock(lab, make_inventory, cli):
    clean(lab)
    names = [h.name for h in lab.hosts]
    inv = make_inventory()
    run = start("setup", inv, *SLOW)
    try:
        wait_for(lambda: len(started(lab, names)) == len(names), 60, "the long step's start")
        run.kill()
        run.communicate(timeout=30)
        wait_for(lambda: not any(long_step_processes(lab, h) for h in names), 15,
                 "every remote process gone")
        # Nor did the dead controller's lock survive it: a run that will not wait gets in.
        again = cli("setup", make_inventory(vars={"slow_seconds": 0}, name="again.yaml"),
                    *SLOW, "--no-wait", timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        if run.poll() is None:
            run.kill()
        clean(lab)


def test_two_runs_on_a_host_are_serialised(lab, make_inventory, cli):
    clean(lab)
    host = lab.hosts[0].name
    inv = make_inventory(vars={"slow_seconds": 3}, hosts=[host])
    first = start("setup", inv, *SLOW)
    try:
        wait_for(lambda: started(lab, [host]), 60, "the first run's start")
        second = cli("setup", inv, *SLOW, timeout=120)
        first_out, first_err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_out + first_err
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{host}: waiting for the run lock, held by controller " in second.stderr
    assert f" pid {first.pid} since " in second.stderr
    # The step ran once: the second run found it done, instead of running it beside the first.
    assert lab.sh(host, f"cat {SLOW_DIR}/runs").stdout == "run\n"
    assert f"OK {host} [slow_probe] long step" in second.stdout
    clean(lab)


def test_no_wait_fails_fast_naming_the_run_that_holds_the_lock(lab, make_inventory, cli):
    clean(lab)
    host = lab.hosts[0].name
    inv = make_inventory(hosts=[host])
    first = start("setup", inv, *SLOW)
    try:
        wait_for(lambda: started(lab, [host]), 60, "the first run's start")
        second = cli("setup", inv, *SLOW, "--no-wait", "--json", timeout=60)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert second.returncode == 3, second.stdout + second.stderr
    (report,) = json.loads(second.stdout)["hosts"]
    assert report["status"] == "failed"
    message = report["tasks"][-1]["message"]
    assert "another run holds the host's lock" in message and f" pid {first.pid} " in message
    assert lab.sh(host, f"cat {SLOW_DIR}/runs").stdout == "run\n"
    clean(lab)


def test_a_changed_host_key_is_refused_naming_the_host(lab, make_inventory, cli, tmp_path):
    host = lab.hosts[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
                   check=True)
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.address} {kind} {key}\n")      # not the key the host has
    inv = make_inventory(vars={"ssh_known_hosts": str(known)}, hosts=[host.name])
    done = cli("exec", inv, "--", "true")
    assert done.returncode == 4
    assert f"UNREACHABLE {host.name} ({host.address}): HOST KEY CHANGED" in done.stderr
