"""Detached runs from the controller's side: start a supervisor per node, read the nodes'
records, follow their logs, stop a run. Nothing here waits on the job itself: once started, the
nodes' supervisors (provision/train/supervisor.py) run it with no controller at all.

On each node a run lives in ~/.provision/runs/<run id>/<host>/ (the SSH user's home, so it
survives a reboot and is the same directory for any controller using the same inventory; the
host name keeps nodes apart on a shared home): supervisor.py, spec.json (0600: it holds the
job's environment), record.json, output.log (+ output.log.1), supervisor.pid, supervisor.log.
Every command runs as the SSH user, like a foreground job, which owns all of it.
"""

from __future__ import annotations

import io
import json
import secrets
import shlex
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.errors import HostUnreachable, TrainError
from provision.inventory import Host
from provision.operations.firewall import parse_ports
from provision.session import HostSession
from provision.train.argv import NodeCommand
from provision.train.config import RUN_ID_RE, RUN_ID_VAR, TrainConfig
from provision.train.processes import stop_script
from provision.train.run_records import NodeRecord, parse_listing

RUNS_DIR = ".provision/runs"              # under the SSH user's home on every node
SUPERVISOR = Path(__file__).with_name("supervisor.py")
# The supervisors' port: the one after the rendezvous port, which must be one of the training
# ports the firewall role opens to the cluster only (firewall_extra_ports).
COORDINATION_PORT_OFFSET = 1
LOG_MAX_BYTES = 128 << 20                 # per node: output.log and output.log.1 together
STOP_WAIT = 20.0                          # beyond the grace period, for a supervisor to finish
# True while $pid is the supervisor of the run in $d: a pid alone may be reused after a reboot.
ALIVE_TEST = ("[ -n \"$pid\" ] && grep -qaF -- \"$d/supervisor.py\" /proc/\"$pid\"/cmdline "
              "2>/dev/null")


@dataclass(frozen=True)
class Timing:
    heartbeat: float = 1.0                # seconds between heartbeats, both ways
    deadline: float = 10.0                # silence after which a peer counts as lost
    join_timeout: float = 30.0            # for every follower to reach the master's supervisor


def coordination_port(config: TrainConfig) -> int:
    """The master's supervisor listens here (on the master's training address only)."""
    port = config.master_port + COORDINATION_PORT_OFFSET
    extra = config.master.vars.get("firewall_extra_ports") or []
    try:
        opened = parse_ports(list(extra))
    except (TypeError, ValueError) as exc:
        raise TrainError(f"{config.master.name}: var firewall_extra_ports: {exc}") from None
    if not any(first <= port <= last for first, last in opened):
        raise TrainError(
            f"detached runs coordinate on port {port} (rendezvous_port + "
            f"{COORDINATION_PORT_OFFSET}), which is not one of the training ports: add "
            f"\"{port}\" to firewall_extra_ports and run `provision setup --tags firewall`, "
            "so that only the cluster can reach it")
    return port


def node_dir(host: Host, run_id: str) -> str:
    """The run's directory on `host` as a sh word ($HOME expanded by the node's shell)."""
    return '"$HOME"/' + shlex.quote(f"{RUNS_DIR}/{run_id}/{host.name}")


def node_spec(config: TrainConfig, node: Host, command: NodeCommand, *, port: int, token: str,
              grace: float, timing: Timing, launch_command: list[str],
              inventory_sha256: str) -> dict:
    return {
        "run_id": config.run_id, "token": token, "host": node.name,
        "rank": config.node_rank(node), "master_rank": config.node_rank(config.master),
        "nodes": [{"host": n.name, "rank": config.node_rank(n)} for n in config.nodes],
        "coordination": [config.master.address, port],
        "argv": list(command.argv), "env": dict(command.env), "cwd": command.cwd,
        "stop_script": stop_script(config.run_id, grace),
        # The supervisor must never carry the job's marker: its own sweep would stop it.
        "drop_env": [RUN_ID_VAR],
        "heartbeat": timing.heartbeat, "deadline": timing.deadline,
        "join_timeout": timing.join_timeout, "log_max_bytes": LOG_MAX_BYTES,
        "command": launch_command, "inventory_sha256": inventory_sha256,
        "script": config.script, "master": f"{config.master.address}:{config.master_port}"}


def payload(spec: dict) -> bytes:
    """supervisor.py and spec.json as the tar.gz the start command unpacks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("supervisor.py", SUPERVISOR.read_bytes()),
                           ("spec.json", json.dumps(spec).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def start_script(host: Host, run_id: str, python: str) -> str:
    # -I -S: the supervisor needs the standard library only, and starts fast without site.
    return (f"umask 077 && d={node_dir(host, run_id)} && mkdir -p -- \"$d\" && "
            f"tar -xzf - -C \"$d\" && exec {shlex.quote(python)} -I -S \"$d/supervisor.py\" "
            "start \"$d\"")


def start_node(session: HostSession, spec: dict, python: str, timing: Timing) -> str | None:
    """Start the node's supervisor; None once it has started, else why it did not."""
    host = session.connection.host
    try:
        result = session.connection.run(start_script(host, spec["run_id"], python),
                                        stdin=payload(spec), timeout=timing.join_timeout + 30)
    except HostUnreachable as exc:
        return str(exc)
    session.round_trips += 1
    lines = result.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if isinstance(answer, dict) and answer.get("started"):
        return None
    if isinstance(answer, dict) and answer.get("error"):
        return str(answer["error"])
    return f"the supervisor did not start: {result.describe_failure()}"


def start_all(sessions: dict[str, HostSession], specs: dict[str, dict], python: str,
              timing: Timing) -> dict[str, str]:
    """Start every node's supervisor at once, whatever --forks says: followers wait for the
    master's; the problem of each node that did not start, by name."""
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        outcomes = dict(zip(specs, pool.map(
            lambda name: start_node(sessions[name], specs[name], python, timing), specs)))
    return {name: problem for name, problem in outcomes.items() if problem is not None}


def new_token() -> str:
    """Said by every follower when it joins: a stray connection cannot stop a run."""
    return secrets.token_hex(16)


def _alive_function(directory: str) -> str:
    return (f"d={directory}\n"
            "pid=$(cat \"$d/supervisor.pid\" 2>/dev/null)\n"
            f"alive() {{ {ALIVE_TEST}; }}\n")


def listing_script(host: Host, run_glob: str = "*") -> str:
    """Prints "<alive> <record json>" per run of `host` whose id matches `run_glob` (a run id
    or a run id prefix followed by '*')."""
    name = shlex.quote(host.name)
    return (f"cd \"$HOME\"/{RUNS_DIR} 2>/dev/null || exit 0\n"
            f"for r in {run_glob}; do\n"
            f"  [ -f \"$r\"/{name}/record.json ] || continue\n"
            f"  d=\"$PWD/$r\"/{name}; pid=$(cat \"$d/supervisor.pid\" 2>/dev/null); alive=0\n"
            f"  {ALIVE_TEST} && alive=1\n"
            "  printf '%s ' \"$alive\"; cat \"$d/record.json\"\n"
            "done\n")


def run_glob(run: str | None) -> str:
    """The listing's glob for a run id or unique prefix (None: every run)."""
    if run is None:
        return "*"
    if not RUN_ID_RE.fullmatch(run):
        raise TrainError(f"{run!r} is not a run id (see `provision runs`)")
    return shlex.quote(run) + "*"


def read_records(sessions: dict[str, HostSession], run: str | None, forks: int
                 ) -> tuple[list[NodeRecord], dict[str, str]]:
    """Every record of the hosts (of runs whose id starts with `run`), and the hosts that
    could not be read, with why."""
    pattern = run_glob(run)

    def one(name: str) -> list[NodeRecord] | str:
        session = sessions[name]
        try:
            result = session.connection.run(listing_script(session.connection.host, pattern),
                                            timeout=60)
        except HostUnreachable as exc:
            return str(exc)
        session.round_trips += 1
        if not result.ok:
            return f"{name}: cannot read its runs: {result.describe_failure()}"
        return parse_listing(result.stdout)

    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(sessions)))) as pool:
        answers = dict(zip(sessions, pool.map(one, sessions)))
    records = [r for a in answers.values() if not isinstance(a, str) for r in a]
    return records, {name: a for name, a in answers.items() if isinstance(a, str)}


def log_script(host: Host, run_id: str, follow: bool, tail: int | None) -> str:
    """The node's output lines as its log holds them ("[stderr] " marks stderr); following
    ends when the node's supervisor does."""
    lines = f"-n {int(tail)}" if tail is not None else "-n +1"
    every = "cat \"$d/output.log.1\" \"$d/output.log\" 2>/dev/null"
    show = f"{every} | tail {lines}" if tail is not None else every
    script = _alive_function(node_dir(host, run_id))
    if not follow:
        return script + show + "\n"
    return (script + "if alive; then exec tail " + lines +
            " -F --pid=\"$pid\" \"$d/output.log\" 2>/dev/null; fi\n" + show + "\n")


def stop_node_script(host: Host, run_id: str, grace: float, reason: str) -> str:
    """TERM the node's supervisor (it stops its job, tells the others, records `reason` as
    why) and wait for it; then sweep for anything of the job still there. Prints whether a
    supervisor was running, then the number of the job's processes left."""
    steps = int((grace + STOP_WAIT) * 10)
    return (_alive_function(node_dir(host, run_id))
            + "was=0\n"
            + f"if alive; then was=1; printf '%s\\n' {shlex.quote(reason)} > \"$d/stop_reason\"\n"
            + "  kill -TERM \"$pid\"; i=0\n"
            + f"  while alive && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done\n"
            + "fi\n"
            + "echo supervisor=$was\n"
            + stop_script(run_id, grace))


@dataclass(frozen=True)
class StopOutcome:
    host: str
    had_supervisor: bool
    survivors: int | None         # the job's processes left (None: could not be checked)
    problem: str | None = None


def stop_all(sessions: dict[str, HostSession], run_id: str, grace: float, forks: int,
             reason: str) -> list[StopOutcome]:
    """Stop the run on every node, `forks` nodes at once: each one's supervisor tells the
    others, so the nodes not yet reached stop within the heartbeat deadline anyway."""
    def one(name: str) -> StopOutcome:
        session = sessions[name]
        try:
            result = session.connection.run(
                stop_node_script(session.connection.host, run_id, grace, reason),
                timeout=grace + STOP_WAIT + 30)
        except HostUnreachable as exc:
            return StopOutcome(name, False, None, str(exc))
        session.round_trips += 1
        words = result.stdout.split()
        if not result.ok or not words or not words[-1].isdigit():
            return StopOutcome(name, False, None, result.describe_failure())
        return StopOutcome(name, "supervisor=1" in words, int(words[-1]))

    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(sessions)))) as pool:
        return list(pool.map(one, sessions))
