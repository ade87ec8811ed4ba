"""Detached runs: `provision train --detach` (after the same checks and staging as a foreground
run), and `provision runs`, `logs`, `attach`, `stop`, which read everything from the nodes.

Longer than ~300 lines because its four commands read the nodes one way (RunView, built
from every node's record): split, each would need the others' reading.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import click

from provision.cli import connect_options, emit, fail, open_inventory, ssh_options, ssh_settings
from provision.cli.output import line_printer
from provision.connection import HostConnection
from provision.errors import HostUnreachable, TrainError
from provision.session import HostSession
from provision.train.argv import NodeCommand
from provision.train.config import TrainConfig
from provision.train.detached import (Timing, coordination_port, log_script, new_token,
                                      node_spec, read_records, start_all, stop_all)
from provision.train.launch import NodeOutcome
from provision.train.run_records import RunView, group_runs
from provision.train.supervisor import NOTE, STOPPING

STATE_COLOURS = {"running": "cyan", "succeeded": "green", "failed": "red", "stopped": "yellow"}
ATTACH_TAIL = 10


def launch_detached(config: TrainConfig, sessions: dict[str, HostSession],
                    commands: dict[str, NodeCommand], grace: float, inventory: Path) -> int:
    """Start the job under a supervisor on every node; 0 once every node has started."""
    try:
        port = coordination_port(config)
    except TrainError as exc:
        emit(click.style("not launching: ", fg="red") + str(exc), err=True)
        return 2
    timing = Timing()
    token = new_token()
    digest = hashlib.sha256(inventory.read_bytes()).hexdigest()
    specs = {n.name: node_spec(config, n, commands[n.name], port=port, token=token, grace=grace,
                               timing=timing, launch_command=sys.argv, inventory_sha256=digest)
             for n in config.nodes}
    problems = start_all(sessions, specs, config.python, timing)
    if problems:
        for name, problem in sorted(problems.items()):
            emit(click.style(f"{name}: ", fg="red") + problem, err=True)
        outcomes = stop_all(sessions, config.run_id, grace, len(sessions),
                            "it did not start on every node")
        emit(f"not started on {len(problems)} node(s); the run was stopped on every node: "
             + _left(outcomes), err=True)
        return 2
    click.echo(config.run_id)      # alone on stdout, for scripts: RUN=$(provision train --detach)
    where = f"-i {inventory}"
    emit(f"run {config.run_id}: detached on {len(config.nodes)} node(s), master "
         f"{config.master.address}:{config.master_port}, supervisors on port {port}\n"
         f"  follow it:  provision attach {config.run_id} {where}\n"
         f"  its logs:   provision logs {config.run_id} {where} [-f]\n"
         f"  stop it:    provision stop {config.run_id} {where}\n"
         f"  every run:  provision runs {where}", err=True)
    return 0


def _me() -> str:
    """user@host of this controller, for the record of who stopped a run."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):    # no login name in the environment nor in the passwd file
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _left(outcomes) -> str:
    left = {o.host: o.survivors for o in outcomes if o.survivors}
    unknown = [f"{o.host} ({o.problem})" for o in outcomes if o.survivors is None]
    return ((f"processes LEFT: {left}" if left else "no process of the job is left")
            + (f"; could not check {', '.join(unknown)}" if unknown else ""))


@contextmanager
def _fleet(inventory: str, limit: str | None, kwargs: dict):
    """The inventory's hosts (after --limit), one session each, closed at the end."""
    from provision.setup import known_settings
    ssh = ssh_settings(kwargs)
    inv, hosts = open_inventory(inventory, limit, known_settings(), ssh["extra_vars"])
    options = connect_options(ssh, hosts)
    sessions = {h.name: HostSession(HostConnection(h, options)) for h in hosts}
    try:
        yield inv, sessions
    finally:
        for session in sessions.values():
            session.connection.close()


def _unreachable(problem: str) -> None:
    emit(click.style("unreachable: ", fg="magenta") + problem, err=True)


def _views(sessions: dict[str, HostSession], run: str | None,
           forks: int) -> tuple[list[RunView], int]:
    """The runs the hosts hold, and how many hosts could not be read."""
    try:
        records, unreadable = read_records(sessions, run, forks)
    except TrainError as exc:
        fail(str(exc))
    for problem in unreadable.values():
        _unreachable(problem)
    return group_runs(records), len(unreadable)


def _one_run(sessions: dict[str, HostSession], run: str, forks: int) -> RunView:
    views, _ = _views(sessions, run, forks)
    exact = [v for v in views if v.run_id == run]
    if exact:
        return exact[0]
    if not views:
        fail(f"no run {run} on these hosts (`provision runs` lists them)")
    if len(views) > 1:
        fail(f"{run} is the start of several runs' ids: "
             + ", ".join(v.run_id for v in views))
    return views[0]


def _duration(view: RunView) -> str:
    seconds = int((view.ended or time.time()) - view.started)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s")


def cause_text(node: NodeOutcome) -> str:
    what = (f"lost: {node.lost}" if node.lost else node.error if node.error
            else f"exited with code {node.exit_code}")
    worker = node.worker_failure()
    if worker is not None:
        what += f": worker rank {worker[0]} exited with code {worker[1]}"
    return f"{node.host} (node rank {node.rank}) {what}"


def _node_state(view: RunView, node: NodeOutcome) -> str:
    if node.lost:
        return f"lost: {node.lost}"
    if node.error:
        return node.error
    if node.stopped_by_teardown:
        why = (f"node rank {view.root_cause.rank} on {view.root_cause.host} failed"
               if view.root_cause else view.stop_reason or "stopped")
        return f"stopped ({why})"
    if node.exit_code is None:
        return "running" if view.state == "running" else "no exit code recorded"
    return f"exit code {node.exit_code}"


def summarise(view: RunView) -> None:
    """The run's end, as a foreground run reports it: the root cause first, then every node."""
    colour = STATE_COLOURS.get(view.state)
    emit(click.style(f"run {view.run_id} {view.state}", fg=colour, bold=True)
         + (f" (exit code {view.result().exit_code})" if view.state == "failed" else ""),
         err=True)
    if view.root_cause is not None:
        emit(click.style("ROOT CAUSE: " + cause_text(view.root_cause), fg="red", bold=True),
             err=True)
        for line in list(view.root_cause.tail)[-10:]:
            emit(f"    {view.root_cause.host} | {line}", err=True)
    for node in view.nodes:
        if node is not view.root_cause:
            emit(f"{node.host} (node rank {node.rank}): {_node_state(view, node)}", err=True)


@click.command("runs")
@click.option("--inventory", "-i", default="inventory.yaml", show_default=True,
              type=click.Path(), help="Inventory file.")
@ssh_options
def runs_cmd(inventory, limit, forks, **kwargs) -> None:
    """Detached runs on the inventory's hosts, newest first (read from the nodes)."""
    with _fleet(inventory, limit, kwargs) as (_, sessions):
        views, unreachable = _views(sessions, None, forks)
    if not views:
        emit("no detached runs on these hosts")
    else:
        _runs_table(views)
    raise SystemExit(4 if unreachable else 0)


def _runs_table(views: list[RunView]) -> None:
    def why(view: RunView) -> str:
        if view.root_cause is not None:
            return cause_text(view.root_cause)
        return (view.stop_reason or "") if view.state == "stopped" else ""

    rows = [(v.run_id, v.state, str(len(v.nodes)),
             datetime.datetime.fromtimestamp(v.started).strftime("%Y-%m-%d %H:%M:%S"),
             _duration(v), why(v)) for v in views]
    header = ("RUN", "STATE", "NODES", "STARTED", "DURATION", "ROOT CAUSE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    emit("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[5])
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        cells[1] = click.style(cells[1], fg=STATE_COLOURS.get(row[1]))
        emit("  ".join(cells) + "  " + row[5])


def _nodes_of(view: RunView, hosts: tuple[str, ...], ranks: tuple[int, ...]) -> list[NodeOutcome]:
    chosen = [n for n in view.nodes if n.host in view.hosts
              and (not hosts or n.host in hosts) and (not ranks or n.rank in ranks)]
    if not chosen:
        fail(f"run {view.run_id} has no such node (nodes: "
             + ", ".join(f"{n.host}[{n.rank}]" for n in view.nodes) + ")")
    return chosen


def _print_log(sink, node: NodeOutcome, until_stopping: bool = False):
    """A line callback for a node's log: its lines as a foreground run prints them. With
    `until_stopping`, as a foreground run also does, what the node prints once it is being
    stopped (torchrun's reaction to the TERM, a traceback per node) stays in the log only:
    the summary at the end says why it stopped."""
    stopping = False

    def on_line(stream: str, line: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = until_stopping and line.startswith(NOTE + STOPPING)
        if line.startswith("[stderr] "):
            sink(node.host, node.rank, "stderr", line[len("[stderr] "):])
        else:
            sink(node.host, node.rank, "stderr" if line.startswith(NOTE) else stream,
                 line)
    return on_line


def _follow(sessions: dict[str, HostSession], view: RunView, nodes: list[NodeOutcome],
            tail: int | None, until_stopping: bool = False) -> int:
    """Every node's log, live, until every node's supervisor has ended (Ctrl-C: at once);
    the number of nodes that could not be followed to the end."""
    sink = line_printer(max(len(f"{n.host}[{n.rank}]") for n in nodes), sys.stdout.isatty())
    lost: list[str] = []

    def follow(node: NodeOutcome) -> None:
        connection = sessions[node.host].connection
        try:
            process = connection.start(log_script(connection.host, view.run_id, True, tail))
            process.wait(float("inf"), _print_log(sink, node, until_stopping))
        except HostUnreachable as exc:
            lost.append(node.host)
            _unreachable(str(exc))

    threads = [threading.Thread(target=follow, args=(n,), daemon=True) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)    # in slices: Ctrl-C reaches the main thread between them
    return len(lost)


def _run_options(command):
    """RUN, the inventory and the SSH options; --forks has no -f here: `logs -f` follows, as
    `tail -f` does."""
    command = ssh_options(command)
    forks = next(p for p in command.__click_params__ if p.name == "forks")
    forks.opts = [o for o in forks.opts if o != "-f"]
    command = click.option("--inventory", "-i", default="inventory.yaml", show_default=True,
                           type=click.Path(), help="Inventory file.")(command)
    return click.argument("run")(command)


@click.command("logs")
@_run_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.option("--host", "hosts", multiple=True, help="Only this node (repeatable).")
@click.option("--rank", "ranks", multiple=True, type=click.IntRange(0),
              help="Only this node rank (repeatable).")
@click.option("--tail", "-n", type=click.IntRange(0), help="Only the last N lines of each node.")
def logs_cmd(run, inventory, limit, forks, follow, hosts, ranks, tail, **kwargs) -> None:
    """A detached run's output, from every node's log, host-prefixed as in a foreground run."""
    with _fleet(inventory, limit, kwargs) as (_, sessions):
        view = _one_run(sessions, run, forks)
        nodes = _nodes_of(view, hosts, ranks)
        if follow:
            try:
                raise SystemExit(4 if _follow(sessions, view, nodes, tail) else 0)
            except KeyboardInterrupt:
                raise SystemExit(0) from None
        sink = line_printer(max(len(f"{n.host}[{n.rank}]") for n in nodes), sys.stdout.isatty())
        unreachable = 0
        for node in nodes:
            connection = sessions[node.host].connection
            try:
                connection.run(log_script(connection.host, view.run_id, False, tail),
                               on_line=_print_log(sink, node))
            except HostUnreachable as exc:
                unreachable += 1
                _unreachable(str(exc))
    raise SystemExit(4 if unreachable else 0)


@click.command("attach")
@_run_options
def attach_cmd(run, inventory, limit, forks, **kwargs) -> None:
    """Follow a detached run's live output; Ctrl-C detaches and leaves the run running."""
    with _fleet(inventory, limit, kwargs) as (inv, sessions):
        view = _one_run(sessions, run, forks)
        try:
            # The last lines first; on a run that has ended, only those.
            _follow(sessions, view, _nodes_of(view, (), ()), ATTACH_TAIL, until_stopping=True)
        except KeyboardInterrupt:
            emit(f"\ndetached from run {view.run_id}; it keeps running on every node. Stop "
                 f"it with: provision stop {view.run_id} -i {inv.path}", err=True)
            raise SystemExit(0) from None
        view = _one_run(sessions, view.run_id, forks)
        summarise(view)
    raise SystemExit(0 if view.state in ("succeeded", "running") else view.result().exit_code)


@click.command("stop")
@_run_options
@click.option("--grace", default=3.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between TERM and KILL for what the supervisors left.")
def stop_cmd(run, inventory, limit, forks, grace, **kwargs) -> None:
    """Stop a detached run on every node; report how many of its processes are left (0)."""
    with _fleet(inventory, limit, kwargs) as (_, sessions):
        view = _one_run(sessions, run, forks)
        nodes = {n.host: sessions[n.host] for n in view.nodes if n.host in sessions}
        outcomes = stop_all(nodes, view.run_id, grace, forks, f"`provision stop` from {_me()}")
        view = _one_run(sessions, view.run_id, forks)
    summarise(view)
    emit(f"stopped run {view.run_id} on {len(outcomes)} node(s): {_left(outcomes)}", err=True)
    raise SystemExit(0 if all(o.survivors == 0 for o in outcomes) else 3)
