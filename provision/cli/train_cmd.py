"""`provision train`: plan, check, stage, launch, stream, tear down, summarise."""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from provision.cli import (connect_options, emit, fail, open_inventory, ssh_options,
                           ssh_settings)
from provision.cli.output import line_printer
from provision.connection import HostConnection
from provision.errors import HostUnreachable, ProvisionError
from provision.operations.conda import env_path
from provision.relay import Relay
from provision.relay.firewall import firewall_peers
from provision.relay.report import describe
from provision.roles import load_role
from provision.session import HostSession
from provision.train import build_train_config, node_command
from provision.train.launch import Job, JobResult, write_summary
from provision.train.prelaunch import check_nodes
from provision.train.staging import plan_staging, stage_all

DEFAULT_RUN_DIR = "/tmp/provision-runs"


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def default_python(host_vars: dict) -> str:
    """The training environment's python, where the conda role builds it for this host."""
    variables = load_role("conda").variables(host_vars)
    return f"{env_path(variables['conda_prefix'], variables['conda_env_name'])}/bin/python"


def report(result: JobResult) -> None:
    if result.root_cause is not None:
        cause = result.root_cause
        what = (f"lost its connection ({cause.lost})" if cause.lost
                else f"could not be followed ({cause.error})" if cause.error
                else f"exited with code {cause.exit_code}")
        worker = cause.worker_failure()
        if worker is not None:
            what += f": worker rank {worker[0]} exited with code {worker[1]}"
        emit(click.style(f"ROOT CAUSE: {cause.host} (node rank {cause.rank}) {what}",
                         fg="red", bold=True), err=True)
        for line in list(cause.tail)[-10:]:
            emit(f"    {cause.host} | {line}", err=True)
    elif result.interrupted:
        emit(click.style("interrupted: the job was stopped on every node", fg="yellow"), err=True)
    for node in result.nodes:
        if node is result.root_cause:
            continue
        if node.lost:
            state = f"connection lost: {node.lost}"
        elif node.error:
            state = f"controller error: {node.error}"
        elif node.stopped_by_teardown and result.root_cause is not None:
            state = (f"stopped: node rank {result.root_cause.rank} on {result.root_cause.host} "
                     "failed")
        elif node.stopped_by_teardown:
            state = "stopped by Ctrl-C" if result.interrupted else "stopped by teardown"
        else:
            state = f"exit code {node.exit_code}"
        emit(f"{node.host} (node rank {node.rank}): {state}", err=result.exit_code != 0)
    if result.teardown_seconds is not None:
        left = {n.host: n.survivors for n in result.nodes if n.survivors}
        unknown = [n.host for n in result.nodes if n.survivors is None and not n.lost
                   and n.stopped_by_teardown]
        emit(f"teardown took {result.teardown_seconds:.1f} s; "
             + (f"processes LEFT: {left}" if left else "no process of the job is left")
             + (f"; could not check {', '.join(unknown)}" if unknown else ""), err=True)


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("script", type=click.Path(dir_okay=False))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--inventory", "-i", default="inventory.yaml", show_default=True,
              type=click.Path(), help="Inventory file.")
@ssh_options
@click.option("--group", "-g", help="Training hosts [default: group 'training' if the "
                                    "inventory has it, else all hosts].")
@click.option("--nproc-per-node", type=click.IntRange(1),
              help="Workers per node [default: the host's gpus, 1 for CPU-only hosts].")
@click.option("--rdzv", type=click.Choice(["static", "c10d"]), default="static",
              show_default=True, help="torchrun rendezvous: static master or c10d.")
@click.option("--env", "env", multiple=True, metavar="K=V",
              help="Environment variable for every worker (repeatable).")
@click.option("--forward-env", multiple=True, metavar="GLOB",
              help="Forward the controller's variables matching GLOB, e.g. 'NCCL_*'.")
@click.option("--sync", "sync_dir", type=click.Path(file_okay=False, exists=True),
              help="Keep this directory (containing the script) in step on every node.")
@click.option("--python", help="Python on the nodes [default: the conda env from setup].")
@click.option("--grace", default=3.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between TERM and KILL when the job is torn down.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where each run's logs and summary.json go.")
@click.option("--dry-run", is_flag=True, help="Check the nodes and print each node's argv, "
                                               "directory and environment; launch nothing.")
@click.option("--detach", is_flag=True, help="Start the job under a supervisor on every node "
                                              "and return: it needs no controller (see "
                                              "`provision runs`, `attach`, `logs`, `stop`).")
def train_cmd(script, script_args, inventory, limit, forks, group, nproc_per_node, rdzv, env,
              forward_env, sync_dir, python, grace, runs_dir, dry_run, detach, **kwargs) -> None:
    """Run a script with torchrun on every training node (exit code: the job's)."""
    from provision.setup import known_settings
    if click.get_current_context().get_parameter_source("forks") is ParameterSource.COMMANDLINE:
        fail("--forks: train reaches every node at once (a job needs all of its nodes)")
    ssh = ssh_settings(kwargs)
    inv, hosts = open_inventory(inventory, limit, known_settings(), ssh["extra_vars"])
    if group is None:
        group = "training" if "training" in inv.groups else None
    run_id = new_run_id()
    try:
        first = next(h for h in hosts if group in (None, "all") or group in h.groups)
    except StopIteration:
        fail(f"no training hosts in {'the inventory' if group is None else 'group ' + group}")
    run_dir = f"{first.vars.get('train_run_dir', DEFAULT_RUN_DIR)}/{run_id}"
    try:
        staging = plan_staging(Path(script), Path(sync_dir) if sync_dir else None,
                               first.vars.get("nfs_mount_point"), run_dir)
        config = build_train_config(
            hosts, script=staging.script, script_args=script_args, group=group,
            nproc_per_node=nproc_per_node, rdzv=rdzv, env_overrides=env,
            forward_env=forward_env, controller_environ=dict(os.environ), run_id=run_id,
            python=python or default_python(first.vars), workdir=staging.workdir)
    except ProvisionError as exc:
        fail(str(exc))
    options = connect_options(ssh, config.nodes)
    sessions = {n.name: HostSession(HostConnection(n, options)) for n in config.nodes}
    try:
        # The training files cross the controller's link about once (provision/relay).
        relay = Relay(lambda: firewall_peers(inv, config.nodes), len(config.nodes))
        code = _run(config, sessions, staging, dry_run, grace, Path(runs_dir), inv.path, detach,
                    relay, built_env=python is None)
    except HostUnreachable as exc:
        fail(f"{exc}", 4)
    except KeyboardInterrupt:
        fail("interrupted before launch; nothing was started", 130)
    finally:
        for session in sessions.values():
            session.connection.close()
    raise SystemExit(code)


def _run(config, sessions, staging, dry_run, grace, runs_dir: Path, inventory: Path,
         detach: bool, relay: Relay | None = None, built_env: bool = True) -> int:
    # One limit for setup's check and train's: the ntp role's (its default, or the inventory's).
    max_skew = float(config.master.vars.get("ntp_max_skew_ms",
                                            load_role("ntp").defaults["ntp_max_skew_ms"]))
    reports = check_nodes(sessions, config, staging.source is None, max_skew, built_env)
    if any(r.versions is not None for r in reports.values()):
        emit(f"--python {config.python}: not an environment setup built on every node, so no "
             "lock is checked; python, torch, CUDA and NCCL versions were compared across the "
             "nodes", err=True)
    commands = {n.name: node_command(config, n, reports[n.name].ifname) for n in config.nodes}
    problems = [(name, p) for name, r in reports.items() for p in r.problems]
    if dry_run:
        for node in config.nodes:
            command = commands[node.name]
            emit(f"# {node.name} (node rank {config.node_rank(node)}), in {command.cwd}")
            for key, value in sorted(command.env.items()):
                emit(f"  {key}={value}")
            emit("  " + " ".join(command.argv))
    if problems:
        for name, problem in problems:
            emit(click.style(f"{name}: ", fg="red") + problem, err=True)
        emit(f"not launching: {len(problems)} problem(s) on "
             f"{len({n for n, _ in problems})} node(s)", err=True)
        return 2
    if dry_run:
        return 0
    relay = relay or Relay()
    try:
        failed = stage_all(sessions, staging, relay)
    finally:
        relay.close()      # every copy gone, nothing listening on a training port
    for entry in relay.report():
        if entry["from_peers"]:
            emit(f"staged {describe(entry)}", err=True)
    if failed:
        for name, problem in failed.items():
            emit(click.style(f"{name}: ", fg="red") + problem, err=True)
        emit(f"not launching: the training files could not be put on {len(failed)} node(s)",
             err=True)
        return 2
    if detach:
        from provision.cli.runs_cmd import launch_detached
        return launch_detached(config, sessions, commands, grace, inventory)
    log_dir = runs_dir / config.run_id
    width = max(len(f"{n.name}[{config.node_rank(n)}]") for n in config.nodes)
    job = Job(config, sessions, commands, log_dir, line_printer(width, sys.stdout.isatty()),
              grace)
    emit(f"run {config.run_id}: {len(config.nodes)} node(s), master "
         f"{config.master.address}:{config.master_port}, logs in {log_dir}", err=True)
    previous = {sig: signal.signal(sig, lambda *_: job.interrupt())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = job.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    write_summary(result, log_dir / "summary.json", sys.argv,
                  hashlib.sha256(inventory.read_bytes()).hexdigest(), config)
    report(result)
    if result.exit_code != 0:
        emit(f"every node's full output: {log_dir}/<host>.log", err=True)
    return result.exit_code
