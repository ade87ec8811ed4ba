"""Each node's torchrun command, as a pure function of the TrainConfig, and its quoted sh form."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from provision.inventory import Host
from provision.train.config import RUN_ID_VAR, TrainConfig

INTERFACE_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")


@dataclass(frozen=True)
class NodeCommand:
    argv: list[str]
    env: dict[str, str]     # set on top of the login environment
    cwd: str


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def node_command(config: TrainConfig, node: Host, ifname: str | None) -> NodeCommand:
    """The torchrun command for `node`; `ifname` is the interface it reaches the master on."""
    rank = config.node_rank(node)
    argv = [
        config.python, "-m", "torch.distributed.run",
        f"--nnodes={len(config.nodes)}",
        f"--node_rank={rank}",
        f"--nproc_per_node={config.nproc_per_node[node.name]}",
    ]
    if config.rdzv == "static":
        # torchrun's default rendezvous backend is static, which uses master_addr/master_port.
        argv += [f"--master_addr={config.master.address}", f"--master_port={config.master_port}"]
    else:
        argv += ["--rdzv_backend=c10d",
                 f"--rdzv_endpoint={_endpoint(config.master.address, config.master_port)}",
                 f"--rdzv_id={config.run_id}"]
    argv += [f"--max_restarts={config.max_restarts}", config.script, *config.script_args]

    env = dict(config.env[node.name])
    if ifname:
        # Without these, gloo (and NCCL's bootstrap) can bind to the interface the host name
        # resolves to, often loopback: the other nodes never connect and rendezvous hangs.
        for name in INTERFACE_VARS:
            env.setdefault(name, ifname)
    env.setdefault("PYTHONUNBUFFERED", "1")  # stream output live rather than in 8 KiB blocks
    env[RUN_ID_VAR] = config.run_id          # marks every process of this job, for teardown
    return NodeCommand(argv=argv, env=env, cwd=config.workdir)


def remote_script(command: NodeCommand) -> str:
    """One sh line that runs `command` in its directory, every value quoted."""
    assignments = [f"{name}={value}" for name, value in command.env.items()]
    run = shlex.join(["env", *assignments, *command.argv])
    return f"cd -- {shlex.quote(command.cwd)} && exec {run}"
