"""prelaunch: the RemoteClock and Executable facts (their commands run for real under the local
sh), and check_nodes' per-node problems, clock-skew and lock-hash comparisons, fed by fake
sessions whose gather() answers with canned fact values."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from provision.facts.base import batch_script, split_batch_output
from provision.facts.conda import EnvVersions, PythonVersions
from provision.facts.files import PathInfo, PathState
from provision.facts.net import PortFree, RouteInterface
from provision.inventory import Host
from provision.train.config import build_train_config
from provision.train.prelaunch import (LOCK_MARKER, Executable, RemoteClock, check_nodes,
                                       env_prefix)

PYTHON = "/opt/miniconda3/envs/train/bin/python"
MARKER = f"/opt/miniconda3/envs/train/{LOCK_MARKER}"


def run_facts(*facts):
    """Gather facts from this machine through the real batch script, under sh."""
    script, marker = batch_script(list(facts))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    return [f.parse(out, rc) for f, (out, rc) in
            zip(facts, split_batch_output(done.stdout, marker, len(facts)))]


# --- the facts --------------------------------------------------------------------------------

def test_remote_clock_reads_this_machines_clock():
    before = time.time_ns()
    (value,) = run_facts(RemoteClock())
    after = time.time_ns()
    assert before - 10**7 <= value <= after + 10**7


@pytest.mark.parametrize("stdout", ["1767225600.123456789\n", "1767225600.123456789"])
def test_remote_clock_parse(stdout):
    assert RemoteClock().parse(stdout, 0) == 1767225600_123456789


def test_remote_clock_rejects_garbage():
    # busybox date without %N prints the literal "N": a parse error, not a wrong clock.
    with pytest.raises(ValueError):
        RemoteClock().parse("1767225600.N\n", 0)


def test_executable(tmp_path):
    runnable = tmp_path / "py thon $(x)"
    runnable.write_text("#!/bin/sh\n")
    runnable.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o644)
    # root passes -x for any file with some x bit; a file with none fails even for root.
    assert run_facts(Executable(str(runnable)), Executable(str(plain)),
                     Executable(str(tmp_path / "missing"))) == [True, False, False]


def test_env_prefix():
    assert env_prefix(PYTHON) == "/opt/miniconda3/envs/train"


# --- check_nodes with canned facts ------------------------------------------------------------

class FakeSession:
    """Stands in for runner.HostSession: gather() answers from canned values, and the port
    probe (connection.start / run) must not happen in these tests."""

    def __init__(self, host: Host, *, skew: float = 0.0, route: str | None = "eth0",
                 python_ok: bool = True, lock: str | None = "a" * 64, port_free: bool = True,
                 script_there: bool = True, versions: EnvVersions | None = None):
        self.host = host
        self.versions = versions
        self.skew, self.route, self.python_ok = skew, route, python_ok
        self.lock, self.port_free, self.script_there = lock, port_free, script_there
        self.asked: list = []
        self.connection = SimpleNamespace(host=host, start=self._no_probe)

    def _no_probe(self, *args, **kwargs):
        raise AssertionError(f"{self.host.name}: the port probe ran")

    def run(self, *args, **kwargs):
        raise AssertionError(f"{self.host.name}: the port probe ran")

    def answer(self, fact):
        if isinstance(fact, RemoteClock):
            return time.time_ns() + int(self.skew * 1e9)
        if isinstance(fact, RouteInterface):
            return self.route
        if isinstance(fact, Executable):
            return self.python_ok
        if isinstance(fact, PortFree):
            return self.port_free
        if isinstance(fact, PythonVersions) and self.versions is not None:
            return self.versions
        if isinstance(fact, PathState) and fact.path == MARKER:
            if self.lock is None:
                return None
            content = (self.lock + "\n").encode()
            return PathInfo("file", "644", "root", "root", len(content), "0" * 64, content)
        if isinstance(fact, PathState):
            return PathInfo("file", "644", "root", "root", 1) if self.script_there else None
        raise AssertionError(f"unexpected fact {fact}")

    def gather(self, facts):
        self.asked.extend(facts)
        return {fact: self.answer(fact) for fact in facts}


HOSTS = [Host("node1", "10.9.0.1"), Host("node2", "10.9.0.2"), Host("node3", "10.9.0.3")]


def config_for(hosts, script="/shared/train.py"):
    return build_train_config(hosts, script=script, run_id="r1", python=PYTHON,
                              workdir="/runs/r1")


def check(sessions, script_in_place=False, hosts=HOSTS, max_skew_ms=500.0, **kwargs):
    by_name = {s.host.name: s for s in sessions}
    return check_nodes(by_name, config_for(hosts), script_in_place, max_skew_ms, **kwargs)


def test_single_healthy_node_has_no_problems_and_no_probe():
    session = FakeSession(HOSTS[0])
    reports = check([session], hosts=HOSTS[:1])
    report = reports["node1"]
    assert report.problems == []
    assert report.ifname == "eth0"
    assert report.lock_hash == "a" * 64
    assert abs(report.clock.offset_ms) < 50
    assert 0 <= report.clock.uncertainty_ms < 50
    assert PortFree(29500) in session.asked          # the master's rendezvous port is checked


def test_facts_asked_per_node():
    sessions = [FakeSession(h, python_ok=False) for h in HOSTS]
    check(sessions, script_in_place=True)
    for session in sessions:
        assert (PortFree(29500) in session.asked) == (session.host.name == "node1")
        assert PathState("/shared/train.py") in session.asked
        assert PathState(MARKER, True) in session.asked
        assert RouteInterface("10.9.0.1") in session.asked
        assert Executable(PYTHON) in session.asked
    sessions = [FakeSession(h, python_ok=False) for h in HOSTS]
    check(sessions, script_in_place=False)
    assert not any(isinstance(f, PathState) and f.path == "/shared/train.py"
                   for s in sessions for f in s.asked)


def test_each_node_problem_names_the_fix():
    sessions = [FakeSession(HOSTS[0], port_free=False),
                FakeSession(HOSTS[1], route=None, python_ok=False),
                FakeSession(HOSTS[2], lock=None, script_there=False)]
    reports = check(sessions, script_in_place=True)

    assert len(reports["node1"].problems) == 1
    assert "rendezvous port 29500 is already in use on the master" in reports["node1"].problems[0]
    assert reports["node2"].problems == [
        "no route to the master node1 (10.9.0.1): check the network or set master",
        f"{PYTHON} does not exist: run `provision setup` (conda role) or pass --python"]
    assert reports["node2"].ifname is None
    assert [p.split(":")[0] for p in reports["node3"].problems] == [
        f"the training environment has no lock marker ({MARKER})",
        "/shared/train.py is not on this node's shared mount"]
    assert reports["node3"].lock_hash is None


def test_equal_lock_hashes_pass_and_different_ones_fail_on_every_node():
    same = check([FakeSession(h, python_ok=h.name != "node3") for h in HOSTS])
    assert not any("environments differ" in p for r in same.values() for p in r.problems)

    locks = {"node1": "a" * 64, "node2": "a" * 64, "node3": "b" * 64}
    reports = check([FakeSession(h, lock=locks[h.name]) for h in HOSTS])
    for name, report in reports.items():
        assert report.lock_hash == locks[name]
        assert report.problems == [
            f"training environments differ between nodes (lock {locks[name]}): run "
            "`provision setup --tags conda` so every node has the same lock"]


TORCH = EnvVersions(None, "3.11.9", "2.13.0", "12.4", "2.21.5", True)


def test_with_python_and_no_lock_the_versions_are_compared_instead():
    """--python names an environment setup may not have built: no lock marker to demand
    (issue 10); what it runs is compared across the nodes instead."""
    sessions = [FakeSession(HOSTS[0], lock=None, versions=TORCH)]
    reports = check(sessions, hosts=HOSTS[:1], built_env=False)
    assert reports["node1"].problems == [] and reports["node1"].versions == TORCH
    assert PythonVersions(PYTHON) in sessions[0].asked
    older = EnvVersions(None, "3.11.9", "2.12.0", "12.4", "2.21.5", True)
    reports = check([FakeSession(h, lock=None, versions=older if h.name == "node2" else TORCH)
                     for h in HOSTS], built_env=False)
    for report in reports.values():
        assert report.problems == ["the nodes' Pythons differ in torch: node1=2.13.0, "
                                   "node2=2.12.0, node3=2.13.0"]


def test_with_python_a_node_without_it_is_not_asked_what_it_runs():
    session = FakeSession(HOSTS[0], lock=None, python_ok=False, versions=TORCH)
    reports = check([session], hosts=HOSTS[:1], built_env=False)
    assert reports["node1"].problems == [
        f"{PYTHON} does not exist: run `provision setup` (conda role) or pass --python"]
    assert not any(isinstance(f, PythonVersions) for f in session.asked)


def test_with_python_and_a_lock_on_every_node_the_locks_are_compared():
    locks = {"node1": "a" * 64, "node2": "b" * 64}
    sessions = [FakeSession(h, lock=locks[h.name]) for h in HOSTS[:2]]
    reports = check(sessions, hosts=HOSTS[:2], built_env=False)
    assert all("environments differ" in r.problems[0] for r in reports.values())
    assert not any(isinstance(f, PythonVersions) for s in sessions for f in s.asked)
    assert all(r.versions is None for r in reports.values())


def test_the_versions_fact_asks_the_python_itself():
    done = subprocess.run(["sh", "-c", PythonVersions(sys.executable).command()],
                          capture_output=True, text=True, check=False)
    versions = PythonVersions(sys.executable).parse(done.stdout, done.returncode)
    assert versions.error is None and versions.torch.startswith("2.")
    assert versions.python == platform.python_version()
    gone = PythonVersions("/nonexistent/bin/python")
    done = subprocess.run(["sh", "-c", gone.command()], capture_output=True, text=True,
                          check=False)
    assert gone.parse(done.stdout, done.returncode).error == \
        "/nonexistent/bin/python did not run (exit code 127)"


def test_with_python_an_env_without_torch_is_named():
    broken = EnvVersions(None, "3.11.9", error="cannot import torch: No module named 'torch'")
    reports = check([FakeSession(HOSTS[0], lock=None, versions=broken)], hosts=HOSTS[:1],
                    built_env=False)
    assert reports["node1"].problems == [f"{PYTHON}: cannot import torch: No module named 'torch'"]


def test_a_missing_lock_is_not_also_a_difference():
    reports = check([FakeSession(HOSTS[0]), FakeSession(HOSTS[1], lock=None)], hosts=HOSTS[:2])
    assert reports["node1"].problems == []
    assert len(reports["node2"].problems) == 1 and "no lock marker" in reports["node2"].problems[0]


def skew_problems(reports) -> dict[str, tuple[int, int]]:
    """node -> (its offset from the controller, from the median node), in ms, per its problem."""
    found = {}
    for name, report in reports.items():
        for problem in report.problems:
            if match := re.match(r"clock ([+-]\d+) ms from the controller, ([+-]\d+) ms from the "
                                 r"median node's \((node\d)\); nodes differ by (\d+) ms "
                                 r"\(limit 500 ms\): run `provision setup --tags ntp`$", problem):
                found[name] = (int(match[1]), int(match[2]))
                assert match[3] == "node1"
                assert abs(int(match[4]) - 800) <= 20
    return found


def test_clock_skew_over_the_limit_is_a_problem_on_the_nodes_off_the_median():
    skews = {"node1": 0.0, "node2": 0.5, "node3": -0.3}    # spread 800 ms, node1 the median
    reports = check([FakeSession(h, skew=skews[h.name]) for h in HOSTS])
    offsets = skew_problems(reports)
    assert set(offsets) == {"node2", "node3"}
    for name, (from_controller, from_median) in offsets.items():
        assert abs(from_controller - skews[name] * 1000) <= 20
        assert abs(from_median - skews[name] * 1000) <= 20
        assert reports[name].clock.offset_ms == pytest.approx(skews[name] * 1000, abs=20)
    assert reports["node1"].problems == []


def test_clock_skew_within_the_limit_is_fine():
    # Each node's own offset may be large: only the spread between nodes matters. (node3's
    # missing python keeps the port probe from running.)
    skews = {"node1": 5.0, "node2": 5.3, "node3": 5.1}
    reports = check([FakeSession(h, skew=skews[h.name], python_ok=h.name != "node3")
                     for h in HOSTS])
    assert skew_problems(reports) == {}
    assert reports["node1"].problems == [] and reports["node2"].problems == []


def test_the_skew_limit_is_a_parameter():
    skews = {"node1": 0.0, "node2": 0.3}
    sessions = [FakeSession(h, skew=skews[h.name], python_ok=False) for h in HOSTS[:2]]
    reports = check(sessions, hosts=HOSTS[:2], max_skew_ms=100)
    assert all(any("nodes differ by 3" in p and "limit 100 ms" in p for p in r.problems)
               for r in reports.values())


def test_a_slow_round_trip_widens_the_allowed_skew():
    # node1 reads its clock at once, then takes 0.3 s to answer: its offset is measured against
    # the middle of the round trip, so it looks 0.55 s off, with 0.15 s of uncertainty; the
    # spread (550 ms, over the 500 ms limit) minus that uncertainty is within the limit.
    class Slow(FakeSession):
        def gather(self, facts):
            values = super().gather(facts)
            time.sleep(0.3)
            return values
    sessions = [Slow(HOSTS[0], skew=-0.4, python_ok=False), FakeSession(HOSTS[1], python_ok=False)]
    reports = check(sessions, hosts=HOSTS[:2])
    assert reports["node1"].clock.offset_ms < -500
    assert reports["node2"].clock.offset_ms - reports["node1"].clock.offset_ms > 500
    assert reports["node1"].clock.uncertainty_ms >= 150
    assert skew_problems(reports) == {}


def test_problems_stop_the_port_probe_and_none_start_it():
    # With problems, FakeSession's start/run would raise if the probe ran.
    check([FakeSession(h, lock=None) for h in HOSTS])
    # Without problems on several nodes the probe runs: it starts the listener on the master.
    with pytest.raises(AssertionError, match="node1: the port probe ran"):
        check([FakeSession(h) for h in HOSTS])
