"""TrainConfig, a validated launch config in torchrun's vocabulary, and the rules that build it."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from provision.errors import TrainError
from provision.inventory import Host
from provision.settings import CORE_SETTINGS, ENV_NAME_RE, check_value

Rendezvous = Literal["static", "c10d"]
RENDEZVOUS_BACKENDS: tuple[str, ...] = get_args(Rendezvous)
DEFAULT_RENDEZVOUS_PORT = 29500
# Set by provision on every node to find this job's processes again; never taken from the user.
RUN_ID_VAR = "PROVISION_RUN_ID"
# A run id names directories and goes into process environments: keep it to plain characters.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class TrainConfig:
    script: str                                 # path of the training script on the nodes
    script_args: tuple[str, ...]
    nodes: tuple[Host, ...]                     # node rank order
    master: Host
    master_port: int
    nproc_per_node: Mapping[str, int]           # node name -> worker processes on it
    rdzv: Rendezvous
    run_id: str
    python: str                                 # the env's python on the nodes
    workdir: str                                # per-run directory on the nodes
    env: Mapping[str, Mapping[str, str]]        # node name -> environment of its torchrun
    max_restarts: int = 0

    def __post_init__(self) -> None:
        problem = _config_problem(self)
        if problem:
            raise TrainError(problem)
        # Read-only copies, so a config cannot change after it was validated.
        object.__setattr__(self, "nproc_per_node", MappingProxyType(dict(self.nproc_per_node)))
        object.__setattr__(self, "env", MappingProxyType(
            {name: MappingProxyType(dict(env)) for name, env in self.env.items()}))

    def node_rank(self, node: Host) -> int:
        for rank, candidate in enumerate(self.nodes):
            if candidate.name == node.name:
                return rank
        raise TrainError(f"{node.name} is not a node of training run {self.run_id}")


def _path_problem(what: str, value: Any, *, absolute: bool = False) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{what} must be a non-empty path, got {value!r}"
    if any(c in value for c in "\0\n\r"):
        return f"{what} must not contain newlines or NUL bytes: {value!r}"
    if absolute and not value.startswith("/"):
        return f"{what} must be an absolute path, got {value!r}"
    return None


def _env_problem(owner: str, env: Mapping[str, Any]) -> str | None:
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            return (f"{owner}: {name!r} is not a valid environment variable name "
                    "([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(value, str) or "\0" in value:
            return f"{owner}: the value of {name} must be a string without NUL bytes, got {value!r}"
    return None


def _config_problem(config: TrainConfig) -> str | None:
    names = [node.name for node in config.nodes]
    if not names:
        return "no training nodes"
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        return f"hosts listed more than once as training nodes: {', '.join(duplicates)}"
    if config.master.name not in names:
        return f"master {config.master.name} is not one of the training nodes ({', '.join(names)})"
    port = config.master_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return f"rendezvous port must be an integer 1-65535, got {port!r}"
    if set(config.nproc_per_node) != set(names):
        return "nproc_per_node must give a process count for exactly the training nodes"
    for name, count in config.nproc_per_node.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return f"{name}: processes per node must be an integer >= 1, got {count!r}"
    if config.rdzv not in RENDEZVOUS_BACKENDS:
        return f"rendezvous must be one of {', '.join(RENDEZVOUS_BACKENDS)}, got {config.rdzv!r}"
    if not isinstance(config.run_id, str) or not RUN_ID_RE.fullmatch(config.run_id):
        return (f"run id must be 1-64 letters, digits, '.', '_' or '-' starting with a letter "
                f"or digit, got {config.run_id!r}")
    problem = (_path_problem("script", config.script)
               or _path_problem("python", config.python, absolute=True)
               or _path_problem("workdir", config.workdir))
    if problem:
        return problem
    # `env NAME=VALUE... python` would read a python path with "=" as one more assignment.
    if "=" in config.python:
        return f"python path must not contain '=': {config.python!r}"
    for arg in config.script_args:
        if not isinstance(arg, str) or "\0" in arg:
            return f"script arguments must be strings without NUL bytes, got {arg!r}"
    if set(config.env) != set(names):
        return "env must give an environment for exactly the training nodes"
    for name, env in config.env.items():
        problem = _env_problem(name, env)
        if problem:
            return problem
    if isinstance(config.max_restarts, bool) or not isinstance(config.max_restarts, int) \
            or config.max_restarts < 0:
        return f"max_restarts must be an integer >= 0, got {config.max_restarts!r}"
    return None


def _checked_var(host: Host, name: str) -> Any:
    value = host.vars.get(name)
    if value is not None:
        problem = check_value(CORE_SETTINGS[name], value)
        if problem:
            raise TrainError(f"{host.name}: var {name} {problem}")
    return value


def _select_nodes(hosts: Sequence[Host], group: str | None) -> tuple[Host, ...]:
    nodes = tuple(h for h in hosts if group in (None, "all") or group in h.groups)
    if not nodes:
        where = "the inventory" if group in (None, "all") else f"group {group!r}"
        raise TrainError(f"no training hosts: {where} has no hosts (after --limit)")
    return nodes


def _select_master(nodes: tuple[Host, ...]) -> Host:
    wanted = {node.name: _checked_var(node, "master") for node in nodes}
    choices = set(wanted.values())
    if len(choices) > 1:
        detail = ", ".join(f"{name}: {value or '(unset)'}" for name, value in wanted.items())
        raise TrainError(f"the training nodes disagree on var master ({detail}); "
                         "set it once for the training group")
    (choice,) = choices
    if choice is None:
        return nodes[0]
    for node in nodes:
        if node.name == choice:
            return node
    raise TrainError(f"var master names {choice!r}, which is not a training node "
                     f"({', '.join(node.name for node in nodes)})")


def _processes_per_node(nodes: tuple[Host, ...], override: int | None) -> dict[str, int]:
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise TrainError(f"--nproc-per-node must be an integer >= 1, got {override!r}")
        return {node.name: override for node in nodes}
    # One worker per GPU; CPU-only hosts (gpus 0 or unset) still run one worker.
    return {node.name: max(_checked_var(node, "gpus") or 0, 1) for node in nodes}


def parse_env_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """NAME=VALUE strings (from `--env`) as a dict; the value may itself contain '='."""
    env: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not ENV_NAME_RE.fullmatch(name):
            raise TrainError(
                f"--env expects NAME=VALUE with a valid variable name, got {assignment!r}")
        env[name] = value
    return env


def forwarded_env(patterns: Sequence[str], controller_environ: Mapping[str, str]) -> dict[str, str]:
    """The controller's variables whose names match any of the glob `patterns` (e.g. NCCL_*)."""
    for pattern in patterns:
        if not pattern or not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", pattern):
            raise TrainError(
                f"--forward-env expects a variable name glob like NCCL_*, got {pattern!r}")
    # Names that are not variable names (exported shell functions, ...) cannot be set remotely.
    return {name: value for name, value in controller_environ.items()
            if ENV_NAME_RE.fullmatch(name) and any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def _node_env(node: Host, common: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    ifname = _checked_var(node, "nccl_socket_ifname")
    if ifname:
        env["NCCL_SOCKET_IFNAME"] = env["GLOO_SOCKET_IFNAME"] = ifname
    inventory_env = _checked_var(node, "train_env") or {}
    env.update({name: str(value) for name, value in inventory_env.items()})
    env.update(common)
    if RUN_ID_VAR in env:
        raise TrainError(f"{node.name}: {RUN_ID_VAR} is set by provision itself; do not set it")
    return env


def build_train_config(
    inventory_hosts: Sequence[Host],
    *,
    script: str,
    script_args: Sequence[str] = (),
    group: str | None = None,
    nproc_per_node: int | None = None,
    rdzv: str = "static",
    env_overrides: Sequence[str] = (),
    forward_env: Sequence[str] = (),
    controller_environ: Mapping[str, str] | None = None,
    run_id: str,
    python: str,
    workdir: str,
) -> TrainConfig:
    """Apply the training rules to the (already --limit'ed) inventory hosts, in inventory order.

    Nodes: the hosts of `group` (None or "all": every host). Master: the first node unless the
    var `master` names another. Port: the master's var `rendezvous_port`. Each node's env, later
    wins: var nccl_socket_ifname, var train_env, `forward_env` matches from `controller_environ`,
    `env_overrides` (NAME=VALUE; given explicitly, so they beat a glob's catch).
    """
    if forward_env and controller_environ is None:
        raise TrainError("forward_env patterns given without the controller environment")
    nodes = _select_nodes(inventory_hosts, group)
    master = _select_master(nodes)
    port = _checked_var(master, "rendezvous_port") or DEFAULT_RENDEZVOUS_PORT
    common = forwarded_env(forward_env, controller_environ or {})
    common.update(parse_env_assignments(env_overrides))
    return TrainConfig(
        script=script,
        script_args=tuple(script_args),
        nodes=nodes,
        master=master,
        master_port=port,
        nproc_per_node=_processes_per_node(nodes, nproc_per_node),
        rdzv=rdzv,  # type: ignore[arg-type]  # checked by TrainConfig
        run_id=run_id,
        python=python,
        workdir=workdir,
        env={node.name: _node_env(node, common) for node in nodes},
    )
