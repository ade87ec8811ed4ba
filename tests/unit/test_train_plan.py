"""TrainConfig rules and per-node torchrun commands, from inventory hosts to the quoted sh line."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from provision.errors import TrainError
from provision.inventory import Host
from provision.train import (
    NodeCommand,
    TrainConfig,
    build_train_config,
    node_command,
    remote_script,
)

PYTHON = "/opt/conda/envs/train/bin/python"


def host(name: str, address: str, groups: tuple[str, ...] = ("gpu",), **vars: Any) -> Host:
    return Host(name=name, address=address, vars=vars, groups=groups)


CLUSTER = [
    host("n1", "10.0.0.11", gpus=8),
    host("login", "10.0.0.2", groups=("login",)),
    host("n2", "10.0.0.12", gpus=8),
    host("n3", "10.0.0.13", gpus=8),
]


def build(hosts: list[Host] = CLUSTER, **overrides: Any) -> TrainConfig:
    kwargs: dict[str, Any] = {"script": "/shared/train.py", "group": "gpu", "run_id": "run-1",
                              "python": PYTHON, "workdir": "/tmp/provision/runs/run-1"}
    kwargs.update(overrides)
    return build_train_config(hosts, **kwargs)


def test_nodes_are_the_group_in_inventory_order_and_each_rank_appears_once() -> None:
    config = build()
    commands = {node.name: node_command(config, node, "eth0") for node in config.nodes}
    assert [node.name for node in config.nodes] == ["n1", "n2", "n3"]
    ranks = {name: cmd.argv[4] for name, cmd in commands.items()}
    assert ranks == {"n1": "--node_rank=0", "n2": "--node_rank=1", "n3": "--node_rank=2"}
    assert {cmd.argv[3] for cmd in commands.values()} == {"--nnodes=3"}


def test_group_all_takes_every_host() -> None:
    assert [n.name for n in build(group=None).nodes] == ["n1", "login", "n2", "n3"]
    assert [n.name for n in build(group="all").nodes] == ["n1", "login", "n2", "n3"]


@pytest.mark.parametrize("master_var, expected", [(None, "n1"), ("n3", "n3")])
def test_master_is_the_first_node_unless_the_var_names_another(master_var: str | None,
                                                                expected: str) -> None:
    hosts = [host(h.name, h.address, h.groups, **h.vars, master=master_var) for h in CLUSTER]
    config = build(hosts)
    assert config.master.name == expected
    argv = node_command(config, config.nodes[1], "eth0").argv
    assert f"--master_addr={config.master.address}" in argv


@pytest.mark.parametrize("rendezvous_port, expected", [(None, 29500), (29555, 29555)])
def test_port_is_the_masters_rendezvous_port(rendezvous_port: int | None, expected: int) -> None:
    hosts = [host("a", "10.0.0.1", rendezvous_port=rendezvous_port), host("b", "10.0.0.2")]
    config = build(hosts)
    assert config.master_port == expected
    assert f"--master_port={expected}" in node_command(config, hosts[1], None).argv


@pytest.mark.parametrize("gpus, override, expected", [
    (8, None, 8),
    (0, None, 1),        # CPU-only host: still one worker
    (None, None, 1),     # gpus not set
    (8, 2, 2),           # --nproc-per-node wins
])
def test_processes_per_node(gpus: int | None, override: int | None, expected: int) -> None:
    config = build([host("a", "10.0.0.1", gpus=gpus)], nproc_per_node=override)
    assert config.nproc_per_node == {"a": expected}
    assert f"--nproc_per_node={expected}" in node_command(config, config.nodes[0], None).argv


def test_processes_per_node_follow_each_hosts_gpus() -> None:
    config = build([host("big", "10.0.0.1", gpus=8), host("cpu", "10.0.0.2", gpus=0)])
    assert dict(config.nproc_per_node) == {"big": 8, "cpu": 1}


@pytest.mark.parametrize("rdzv, master_address, expected_tail", [
    ("static", "10.0.0.11",
     ["--master_addr=10.0.0.11", "--master_port=29500"]),
    ("c10d", "10.0.0.11",
     ["--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.11:29500", "--rdzv_id=run-1"]),
    ("c10d", "fd00::11",
     ["--rdzv_backend=c10d", "--rdzv_endpoint=[fd00::11]:29500", "--rdzv_id=run-1"]),
])
def test_full_argv_for_each_rendezvous(rdzv: str, master_address: str,
                                       expected_tail: list[str]) -> None:
    hosts = [host("m", master_address, gpus=2), host("w", "10.0.0.12", gpus=2)]
    config = build(hosts, rdzv=rdzv, script_args=["--steps", "5"])
    assert node_command(config, hosts[1], "eth0").argv == [
        PYTHON, "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1",
        "--nproc_per_node=2", *expected_tail, "--max_restarts=0",
        "/shared/train.py", "--steps", "5",
    ]


def test_env_precedence_later_wins() -> None:
    node = host("a", "10.0.0.1", nccl_socket_ifname="ib0",
                train_env={"A": "inventory", "B": "inventory", "C": "inventory", "N": 4})
    config = build([node], env_overrides=["C=cli", "EQ=x=y"], forward_env=["A", "C"],
                   controller_environ={"A": "forwarded", "C": "forwarded"})
    assert dict(config.env["a"]) == {
        "NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0",
        "A": "forwarded", "B": "inventory", "C": "cli", "N": "4", "EQ": "x=y",
    }


def test_forward_env_takes_only_matching_valid_names() -> None:
    environ = {"NCCL_DEBUG": "INFO", "TORCH_SHOW_CPP_STACKTRACES": "1", "HOME": "/root",
               "NCCL": "no underscore", "BASH_FUNC_x%%": "() { :; }", "AWS_SECRET_ACCESS_KEY": "s"}
    config = build([host("a", "10.0.0.1")], forward_env=["NCCL_*", "TORCH_*"],
                   controller_environ=environ)
    assert dict(config.env["a"]) == {"NCCL_DEBUG": "INFO", "TORCH_SHOW_CPP_STACKTRACES": "1"}


def test_node_env_adds_interface_run_id_and_unbuffered_output() -> None:
    config = build([host("a", "10.0.0.1")])
    assert node_command(config, config.nodes[0], "eth1").env == {
        "NCCL_SOCKET_IFNAME": "eth1", "GLOO_SOCKET_IFNAME": "eth1",
        "PYTHONUNBUFFERED": "1", "PROVISION_RUN_ID": "run-1",
    }
    assert node_command(config, config.nodes[0], None).env == {
        "PYTHONUNBUFFERED": "1", "PROVISION_RUN_ID": "run-1",
    }


def test_interface_set_by_the_inventory_beats_the_detected_one() -> None:
    config = build([host("a", "10.0.0.1", train_env={"GLOO_SOCKET_IFNAME": "bond0"})])
    env = node_command(config, config.nodes[0], "eth1").env
    assert (env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"]) == ("bond0", "eth1")


HOSTILE = ["; rm -rf /", "$(id)", "`id`", "two words", "it's", '"dq"', "line1\nline2",
           "--nnodes=99", "", "*", "~", "a\\b", "${HOME}", "ünï"]


def hostile_command() -> NodeCommand:
    node = host("a", "10.0.0.1", train_env={"X": "$(id); echo 'pwned'", "EMPTY": ""})
    config = build([node], script="/my scripts/train $(id).py", script_args=HOSTILE,
                   workdir="/tmp/run dir; id")
    return node_command(config, node, "eth0")


def test_remote_script_splits_back_into_exactly_the_command() -> None:
    cmd = hostile_command()
    words = shlex.split(remote_script(cmd))
    assert words == ["cd", "--", cmd.cwd, "&&", "exec", "env",
                     *[f"{k}={v}" for k, v in cmd.env.items()], *cmd.argv]


def test_remote_script_runs_exactly_the_command_in_a_real_shell(tmp_path: Path) -> None:
    # A stand-in for the env's python that reports what it was given, instead of launching torch.
    reporter = tmp_path / "python"
    reporter.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}))\n")
    reporter.chmod(0o755)
    workdir = tmp_path / "run dir; $(id)"
    workdir.mkdir()
    cmd = hostile_command()
    cmd = NodeCommand(argv=[str(reporter), *cmd.argv[1:]], env=cmd.env, cwd=str(workdir))

    result = subprocess.run(["sh", "-c", remote_script(cmd)], capture_output=True, text=True,
                            check=True, timeout=30, env={"PATH": os.environ["PATH"]})
    seen = json.loads(result.stdout)
    assert seen["argv"] == cmd.argv[1:]
    assert seen["cwd"] == str(workdir)
    assert {k: seen["env"].get(k) for k in cmd.env} == cmd.env


def test_config_is_read_only_after_validation() -> None:
    config = build([host("a", "10.0.0.1")])
    with pytest.raises(TypeError):
        config.env["a"]["X"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.nproc_per_node["a"] = 4  # type: ignore[index]


@pytest.mark.parametrize("hosts, overrides, message", [
    (CLUSTER, {"group": "nope"}, "group 'nope' has no hosts"),
    ([], {"group": None}, "the inventory has no hosts"),
    ([host("a", "1.1.1.1"), host("a", "1.1.1.2")], {}, "more than once"),
    ([host("a", "1.1.1.1", master="login"), host("b", "1.1.1.2", master="login")], {},
     "'login', which is not a training node"),
    ([host("a", "1.1.1.1", master="b"), host("b", "1.1.1.2")], {}, "disagree on var master"),
    ([host("a", "1.1.1.1", rendezvous_port=70000)], {}, "rendezvous_port must be a port"),
    ([host("a", "1.1.1.1", gpus=-1)], {}, "gpus must be at least 0"),
    ([host("a", "1.1.1.1", train_env={"BAD-NAME": "x"})], {}, "train_env key 'BAD-NAME'"),
    ([host("a", "1.1.1.1", train_env={"PROVISION_RUN_ID": "x"})], {}, "set by provision itself"),
    ([host("a", "1.1.1.1")], {"nproc_per_node": 0}, "--nproc-per-node must be an integer >= 1"),
    ([host("a", "1.1.1.1")], {"env_overrides": ["NOVALUE"]}, "--env expects NAME=VALUE"),
    ([host("a", "1.1.1.1")], {"env_overrides": ["1X=2"]}, "--env expects NAME=VALUE"),
    ([host("a", "1.1.1.1")], {"forward_env": ["NCCL_*;id"], "controller_environ": {}},
     "--forward-env expects a variable name glob"),
    ([host("a", "1.1.1.1")], {"forward_env": ["NCCL_*"]}, "without the controller environment"),
    ([host("a", "1.1.1.1")], {"rdzv": "etcd"}, "rendezvous must be one of static, c10d"),
    ([host("a", "1.1.1.1")], {"run_id": "../x"}, "run id must be"),
    ([host("a", "1.1.1.1")], {"run_id": "a b"}, "run id must be"),
    ([host("a", "1.1.1.1")], {"python": "python3"}, "python must be an absolute path"),
    ([host("a", "1.1.1.1")], {"python": "/opt/a=b/python"}, "must not contain '='"),
    ([host("a", "1.1.1.1")], {"script": ""}, "script must be a non-empty path"),
    ([host("a", "1.1.1.1")], {"script": "/x\n/y.py"}, "script must not contain newlines"),
    ([host("a", "1.1.1.1")], {"script_args": ["a\0b"]}, "without NUL bytes"),
])
def test_bad_input_is_refused_with_a_clear_message(hosts: list[Host], overrides: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(TrainError, match=re.escape(message)):
        build(hosts, **overrides)


def test_config_refuses_a_master_outside_the_nodes() -> None:
    a, b = host("a", "1.1.1.1"), host("b", "1.1.1.2")
    with pytest.raises(TrainError, match="master b is not one of the training nodes"):
        TrainConfig(script="/t.py", script_args=(), nodes=(a,), master=b, master_port=29500,
                    nproc_per_node={"a": 1}, rdzv="static", run_id="r", python=PYTHON,
                    workdir="/w", env={"a": {}})


def test_node_command_refuses_a_host_that_is_not_a_node() -> None:
    config = build([host("a", "1.1.1.1")])
    with pytest.raises(TrainError, match="not a node of training run run-1"):
        node_command(config, host("stranger", "1.1.1.9"), None)
