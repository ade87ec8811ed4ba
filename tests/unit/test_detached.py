"""Detached runs from the controller's side: the coordination port rule, the node spec, the
remote scripts (run here with sh, with HOME in a tmp dir, against a real one-node supervisor),
and merging the nodes' records into one view."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from typing import Any

import pytest

from provision.errors import TrainError
from provision.inventory import Host
from provision.train import build_train_config, node_command
from provision.train.config import RUN_ID_VAR
from provision.train.detached import (Timing, coordination_port, listing_script, log_script,
                                      node_spec, payload, run_glob, start_script,
                                      stop_node_script)
from provision.train.run_records import GONE, NodeRecord, group_runs, merge, parse_listing


def config_for(run_id: str = "run-1", python: str = "/env/bin/python", **vars: Any):
    hosts = [Host(name=f"n{i}", address=f"10.0.0.{11 + i}", vars=dict(vars)) for i in range(3)]
    return build_train_config(hosts, script="/shared/train.py", run_id=run_id, python=python,
                              workdir="/tmp/w")


@pytest.mark.parametrize("ports", [["29501"], ["29400-29600"], [29501], ["1", "29501-29502"]])
def test_the_supervisors_port_is_the_next_one_when_the_firewall_opens_it(ports):
    assert coordination_port(config_for(firewall_extra_ports=ports)) == 29501


@pytest.mark.parametrize("ports", [None, [], ["29500"], ["29502-29600"]])
def test_a_port_the_firewall_does_not_open_is_refused_with_the_fix(ports):
    with pytest.raises(TrainError) as caught:
        coordination_port(config_for(firewall_extra_ports=ports))
    assert 'add "29501" to firewall_extra_ports' in str(caught.value)
    assert "provision setup --tags firewall" in str(caught.value)


def test_a_malformed_port_list_is_an_error_not_a_traceback():
    with pytest.raises(TrainError, match="firewall_extra_ports"):
        coordination_port(config_for(firewall_extra_ports=["29501;rm"]))


def test_the_spec_carries_the_nodes_argv_and_marker_and_the_payload_is_private():
    config = config_for(firewall_extra_ports=["29501"])
    node = config.nodes[1]
    spec = node_spec(config, node, node_command(config, node, "eth0"), port=29501,
                     token="tok", grace=3, timing=Timing(), launch_command=["provision", "x"],
                     inventory_sha256="ab" * 32)
    assert spec["rank"] == 1 and spec["master_rank"] == 0
    assert spec["coordination"] == ["10.0.0.11", 29501]
    assert spec["env"][RUN_ID_VAR] == "run-1" and spec["drop_env"] == [RUN_ID_VAR]
    assert "--node_rank=1" in spec["argv"] and spec["env"]["GLOO_SOCKET_IFNAME"] == "eth0"
    assert f"{RUN_ID_VAR}=run-1" in spec["stop_script"]
    with tarfile.open(fileobj=io.BytesIO(payload(spec))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"supervisor.py", "spec.json"}
        assert all(m.mode == 0o600 for m in members.values())
        assert json.loads(tar.extractfile("spec.json").read()) == spec


@pytest.mark.parametrize("run", ["a;b", "*", "../x", "$(id)", "x y", ""])
def test_a_run_argument_is_a_run_id_or_nothing(run):
    with pytest.raises(TrainError):
        run_glob(run)


def sh(script: str, home, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, timeout=60,
                          env={**os.environ, "HOME": str(home)})


@pytest.fixture
def one_node_run(tmp_path, marked_pids):
    """start(job): a one-node detached run on this machine, started by the real start
    script; the run's id."""
    started = []

    def start(job: str) -> str:
        run_id = f"u{os.getpid()}-{time.monotonic_ns()}"
        config = build_train_config([Host(name="n0", address="127.0.0.1")], script="/x",
                                    run_id=run_id, python=sys.executable, workdir=str(tmp_path))
        node = config.nodes[0]
        command = node_command(config, node, None)
        spec = node_spec(config, node, command, port=0, token="t", grace=0.5,
                         timing=Timing(join_timeout=5), launch_command=["provision"],
                         inventory_sha256="0" * 64)
        spec["argv"], spec["coordination"] = ["sh", "-c", job], ["127.0.0.1", 0]
        done = sh(start_script(node, run_id, sys.executable), tmp_path, payload(spec))
        assert json.loads(done.stdout.decode().splitlines()[-1]).get("started"), done
        started.append(run_id)
        return run_id

    yield start
    for run_id in started:
        sh(stop_node_script(Host(name="n0", address="10.0.0.11"), run_id, 0.5, "the end"),
           tmp_path)
        assert not marked_pids(run_id)


def listing(home, run: str | None = None) -> list[NodeRecord]:
    done = sh(listing_script(Host(name="n0", address="x"), run_glob(run)), home)
    assert done.returncode == 0, done.stderr
    return parse_listing(done.stdout.decode())


def wait_state(home, run_id: str, timeout: float = 10) -> NodeRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (entry,) = listing(home, run_id)
        if not entry.alive:
            return entry
        time.sleep(0.1)
    raise AssertionError("the supervisor did not end")


def test_listing_logs_and_stop_on_a_real_node_directory(tmp_path, one_node_run, marked_pids):
    host = Host(name="n0", address="10.0.0.11")
    finished = one_node_run("echo hello; echo oops >&2")
    entry = wait_state(tmp_path, finished)
    assert entry.record["state"] == "succeeded" and entry.record["host"] == "n0"
    printed = sh(log_script(host, finished, follow=False, tail=None), tmp_path).stdout.decode()
    assert printed.splitlines() == ["hello", "[stderr] oops"]
    followed = sh(log_script(host, finished, follow=True, tail=1), tmp_path)
    assert followed.stdout.decode().splitlines() == ["[stderr] oops"]   # ended: no waiting

    running = one_node_run("echo started; sleep 60")
    assert {e.record["run_id"]: e.alive for e in listing(tmp_path)} == {finished: False,
                                                                         running: True}
    assert [e.record["run_id"] for e in listing(tmp_path, running[:-3])] == [running]
    why = "`provision stop` from me@there; $(id)"
    stopped = sh(stop_node_script(host, running, 0.5, why), tmp_path).stdout.decode().split()
    assert stopped == ["supervisor=1", "0"]
    assert not marked_pids(running)
    entry = wait_state(tmp_path, running)
    assert entry.record["state"] == "stopped" and entry.record["stop_reason"] == why
    assert f"[provision] stopping this node's job: {why}" in \
        sh(log_script(host, running, False, None), tmp_path).stdout.decode()
    again = sh(stop_node_script(host, running, 0.5, why), tmp_path).stdout.decode().split()
    assert again == ["supervisor=0", "0"]


def test_listing_of_a_home_without_runs_is_empty(tmp_path):
    assert listing(tmp_path) == []


# -- merging the nodes' records ---------------------------------------------------------------

def node(rank: int, **fields: Any) -> dict:
    base = {"host": f"n{rank}", "rank": rank, "exit_code": None, "lost": None, "error": None,
            "stopped_by_teardown": False, "survivors": None, "finished_at": None, "tail": []}
    return {**base, **fields}


def record(rank: int, nodes: list[dict], state: str = "succeeded", view: str = "own",
           cause: int | None = None, **fields: Any) -> dict:
    return {"run_id": "r1", "command": ["provision"], "inventory_sha256": "0" * 64,
            "script": "s", "master": "10.0.0.11:29500", "coordination": "10.0.0.11:29501",
            "started": 100.0 + rank, "ended": None if state == "running" else 200.0 + rank,
            "state": state, "interrupted": False, "stop_reason": None,
            "teardown_seconds": None, "root_cause": nodes[cause] if cause is not None else None,
            "nodes": nodes, "host": f"n{rank}", "rank": rank, "supervisor_pid": 1, "view": view,
            **fields}


def test_the_masters_final_record_is_the_view():
    done = [node(0, exit_code=0, finished_at=150), node(1, exit_code=0, finished_at=151)]
    view = merge([NodeRecord(record(0, done, view="master"), False),
                  NodeRecord(record(1, done, view="master"), False)])
    assert view.state == "succeeded" and view.result().exit_code == 0
    assert [n.exit_code for n in view.nodes] == [0, 0] and view.root_cause is None
    assert view.started == 100.0 and view.ended == 201.0 and view.hosts == ["n0", "n1"]


def test_a_failed_worker_is_the_root_cause_with_its_exit_code():
    tail = ["Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 0)",
            "  exitcode  : 3 (pid: 99)"]
    nodes = [node(0, exit_code=143, stopped_by_teardown=True, finished_at=160),
             node(1, exit_code=1, finished_at=155, tail=tail)]
    view = merge([NodeRecord(record(0, nodes, "failed", "master", cause=1), False)])
    assert view.state == "failed" and view.root_cause.host == "n1"
    assert view.root_cause.worker_failure() == (1, 3) and view.result().exit_code == 3


def test_a_running_record_whose_supervisor_is_gone_is_a_lost_node():
    nodes = [node(0), node(1)]
    view = merge([NodeRecord(record(0, nodes, "running"), True),
                  NodeRecord(record(1, nodes, "running"), False)])
    assert view.state == "running"           # the master still runs: it will decide
    assert view.nodes[1].lost == GONE
    view = merge([NodeRecord(record(0, nodes, "running"), False),
                  NodeRecord(record(1, nodes, "running"), False)])
    assert view.state == "failed" and view.root_cause.host == "n0"


def test_without_the_master_the_followers_blame_decides():
    lost = node(0, lost="no heartbeat from the master's supervisor", finished_at=150)
    own = [lost, node(1, exit_code=143, stopped_by_teardown=True, finished_at=151), node(2)]
    other = [lost, node(1), node(2, exit_code=143, stopped_by_teardown=True, finished_at=152)]
    view = merge([NodeRecord(record(1, own, "failed", cause=0), False),
                  NodeRecord(record(2, other, "failed", cause=0), False)])
    assert view.state == "failed" and view.root_cause.host == "n0"
    assert [n.exit_code for n in view.nodes] == [None, 143, 143]   # each node's own


def test_a_stopped_run_is_stopped_and_exits_130():
    nodes = [node(r, exit_code=143, stopped_by_teardown=True, survivors=0, finished_at=150)
             for r in range(2)]
    view = merge([NodeRecord(record(0, nodes, "stopped", "master", interrupted=True,
                                    stop_reason="stopped on n1 (signal 15)"), False)])
    assert view.state == "stopped" and view.stop_reason.startswith("stopped on n1")
    assert view.result().exit_code == 130


def test_runs_are_grouped_newest_first_and_bad_lines_skipped():
    nodes = [node(0, exit_code=0, finished_at=1)]
    old, new = record(0, nodes, view="master"), record(0, nodes, view="master")
    new.update(run_id="r2", started=500.0)
    text = f"1 {json.dumps(old)}\nnot json\n2 {{}}\n0 {json.dumps(new)}\n"
    assert [v.run_id for v in group_runs(parse_listing(text))] == ["r2", "r1"]


def test_a_node_adds_its_own_exit_code_to_what_the_master_saw_of_it():
    seen = [node(0, exit_code=143, stopped_by_teardown=True, finished_at=160),
            node(1, lost="no heartbeat from its supervisor for 10 s", finished_at=158)]
    own = [node(0), node(1, exit_code=1, finished_at=155, survivors=0)]
    view = merge([NodeRecord(record(0, seen, "failed", "master", cause=1), False),
                  NodeRecord(record(1, own, "failed", cause=0), False)])
    cause = view.root_cause
    assert cause.host == "n1" and cause.lost.startswith("no heartbeat")
    assert cause.exit_code == 1 and cause.survivors == 0


# -- the commands, against a host that does not answer -----------------------------------------

@pytest.fixture
def unreachable_inventory(tmp_path, isolated_home):
    path = tmp_path / "inventory.yaml"
    path.write_text("all:\n  hosts:\n    gone: {ansible_host: 127.0.0.1, ansible_port: 9}\n")
    return path


@pytest.mark.parametrize("args", [["runs"], ["logs", "r1"], ["stop", "r1"], ["attach", "r1"]])
def test_an_unreachable_host_is_named_without_a_traceback(unreachable_inventory, args):
    from click.testing import CliRunner

    from provision.cli import main
    result = CliRunner().invoke(main, [*args, "-i", str(unreachable_inventory),
                                       "--connect-timeout", "2"])
    assert "unreachable: gone: cannot connect to 127.0.0.1:9" in result.output
    assert "Traceback" not in result.output
    assert result.exit_code == (4 if args == ["runs"] else 2), result.output

