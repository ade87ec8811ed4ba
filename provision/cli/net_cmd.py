"""`provision net`: pairwise throughput and latency between the training nodes, an all-reduce
sweep across them, and a verdict naming the slow node or the bad link.

Exit codes: 0 nothing flagged; 2 usage or inventory error; 3 something flagged (a slow, bad or
unmeasurable node or link, or a failed all-reduce sweep); 4 a node unreachable over SSH and
nothing else flagged; 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from provision.cli import connect_options, emit, fail, open_inventory, ssh_options, ssh_settings
from provision.cli.net_output import print_report, report_dict
from provision.cli.train_cmd import DEFAULT_RUN_DIR, default_python, new_run_id
from provision.connection import HostConnection
from provision.errors import ProvisionError
from provision.netcheck import collective, plot
from provision.netcheck.endpoint import NodeState, inspect_nodes
from provision.netcheck.pairwise import measure, run_seconds, start_agents
from provision.netcheck.schedule import disjoint_rounds, plan_steps
from provision.netcheck.verdict import better_of, judge, to_retest
from provision.session import HostSession
from provision.train import build_train_config
from provision.train.config import TrainConfig
from provision.train.staging import plan_staging, stage_all

EXIT_FLAGGED = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130


def _size(ctx, param, value: str) -> int:
    try:
        return collective.parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("net")
@click.argument("inventory", type=click.Path())
@ssh_options
@click.option("--group", "-g", help="Nodes to check [default: group 'training' if the "
                                    "inventory has it, else all hosts].")
@click.option("--seconds", default=2.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="How long each direction of each pair is measured.")
@click.option("--threshold", default=50.0, show_default=True, type=click.FloatRange(1, 99),
              help="Percent of the reference link below which a link is slow (and of the "
                   "faster direction below which a link is asymmetric).")
@click.option("--quick", is_flag=True,
              help="Only each node and its neighbour (a ring, two rounds of transfers).")
@click.option("--collective/--no-collective", "with_collective", default=True, show_default=True,
              help="Run the all-reduce sweep through torchrun after the pairwise check.")
@click.option("--min-size", default="1K", show_default=True, callback=_size,
              help="Smallest all-reduce message (bytes; K, M, G suffixes).")
@click.option("--max-size", default="64M", show_default=True, callback=_size,
              help="Largest all-reduce message.")
@click.option("--iters", default=20, show_default=True, type=click.IntRange(1),
              help="All-reduces timed per message size.")
@click.option("--python", help="Python on the nodes, with torch for the sweep [default: the "
                               "conda env from setup; the pairwise check falls back to python3].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a heatmap of the pairwise matrix to this PNG (needs matplotlib).")
def net_cmd(inventory, limit, forks, group, seconds, threshold, quick, with_collective,
            min_size, max_size, iters, python, as_json, plot_path, **kwargs) -> None:
    """Find the slow node or the bad link: pairwise TCP throughput and latency between the
    training nodes, then an all-reduce bus-bandwidth sweep (exit 3 when anything is flagged)."""
    from provision.setup import known_settings
    if plot_path and not plot.available():
        fail(plot.INSTALL_HINT)
    if min_size > max_size:
        fail(f"--min-size {min_size} is larger than --max-size {max_size}")
    ssh = ssh_settings(kwargs)
    inv, hosts = open_inventory(inventory, limit, known_settings(), ssh["extra_vars"])
    if group is None:
        group = "training" if "training" in inv.groups else None
    first = next((h for h in hosts if group in (None, "all") or group in h.groups), None)
    if first is None:
        fail(f"no hosts to check in {'the inventory' if group is None else 'group ' + group}")
    run_id = new_run_id()
    try:
        staging = plan_staging(collective.SCRIPT, None, first.vars.get("nfs_mount_point"),
                               f"{first.vars.get('train_run_dir', DEFAULT_RUN_DIR)}/{run_id}")
        config = build_train_config(
            hosts, script=staging.script, group=group, run_id=run_id,
            script_args=collective.sweep_args(min_size, max_size, iters),
            python=python or default_python(first.vars), workdir=staging.workdir)
    except ProvisionError as exc:
        fail(str(exc))
    options = connect_options(ssh, config.nodes)
    sessions = {n.name: HostSession(HostConnection(n, options)) for n in config.nodes}
    progress = (lambda text: None) if as_json else (lambda text: emit(text, err=True))
    try:
        nodes = inspect_nodes(sessions, config, forks)
        links, verdict, started = _pairwise(sessions, nodes, config.python, seconds,
                                            threshold / 100, quick, progress)
        result = _collective(config, sessions, nodes, staging, progress) if with_collective \
            else None
    except KeyboardInterrupt:
        fail("interrupted; the measuring programs stop with their connections",
             EXIT_INTERRUPTED)
    finally:
        for session in sessions.values():
            session.connection.close()
    report = report_dict(nodes, started, links, verdict, result, seconds, quick)
    if plot_path:
        try:
            plot.write_heatmap(Path(plot_path), started, links, verdict)
        except (OSError, ValueError) as exc:
            fail(f"cannot write the plot {plot_path}: {exc}")
    code = exit_code(nodes, verdict.flagged, result)
    if as_json:
        click.echo(json.dumps({**report, "exit_code": code}, indent=2))
    else:
        print_report(nodes, started, links, verdict, result, plot_path)
    raise SystemExit(code)


def exit_code(nodes: dict[str, NodeState], flagged: bool,
              result: collective.CollectiveResult | None) -> int:
    if result is not None and result.interrupted:
        return EXIT_INTERRUPTED
    measured_badly = any(n.problem and not n.unreachable for n in nodes.values())
    if flagged or measured_badly or (result is not None and result.problem):
        return EXIT_FLAGGED
    if any(n.unreachable for n in nodes.values()):
        return EXIT_UNREACHABLE
    return 0


def _pairwise(sessions, nodes: dict[str, NodeState], python: str, seconds: float,
              threshold: float, quick: bool, progress):
    ready = [name for name, state in nodes.items() if state.endpoint is not None]
    # The programs' deadline covers the plan for every node that may start (fewer is shorter)
    # and the retests: at most n-1 pairs, at worst one round each (all on one node).
    retests = [(ready[0], other) for other in ready[1:]] if ready else []
    deadline = run_seconds(plan_steps(ready, quick), seconds) \
        + run_seconds(disjoint_rounds(retests), seconds)
    agents = start_agents({n: sessions[n] for n in ready},
                          {n: nodes[n].endpoint for n in ready},
                          {n: nodes[n].port for n in ready},
                          {n: [python, "python3"] for n in ready}, deadline)
    try:
        for name, agent in agents.items():
            if agent.problem:
                nodes[name].problem = agent.problem
        started = [name for name in ready if not agents[name].problem]
        rounds = plan_steps(started, quick)
        if rounds:
            progress(f"provision net: {len(started)} node(s), {len(rounds)} round(s) of "
                     f"{seconds:g} s per direction" + (" (ring)" if quick else ""))
        links = measure(agents, rounds, seconds, _round_progress(progress))
        verdict = judge(started, links, threshold)
        again = to_retest(verdict, links)[:len(retests)]
        if again:
            progress(f"measuring {len(again)} flagged link(s) again")
            second = {(l.a, l.b): l for l in measure(agents, disjoint_rounds(again), seconds,
                                                     _round_progress(progress))}
            links = [better_of(l, second[(l.a, l.b)]) if (l.a, l.b) in second else l
                     for l in links]
            verdict = judge(started, links, threshold)
    finally:
        with ThreadPoolExecutor(max_workers=max(1, len(agents))) as pool:
            list(pool.map(lambda agent: agent.stop(), agents.values()))
    return links, verdict, started


def _round_progress(progress):
    return lambda done, total: progress(f"  round {done + 1}/{total}") if done < total else None


def _collective(config: TrainConfig, sessions, nodes: dict[str, NodeState], staging,
                progress) -> collective.CollectiveResult:
    missing = [n for n, s in nodes.items() if s.problem]
    if missing:
        return collective.CollectiveResult(
            skipped=f"{', '.join(missing)} could not be measured")
    if len(nodes) < 2:
        return collective.CollectiveResult(skipped="a single node has no network to test")
    no_python = [n for n, s in nodes.items() if not s.has_python]
    if no_python:
        return collective.CollectiveResult(
            problem=f"{config.python} does not exist on {', '.join(no_python)}: run "
                    "`provision setup` (conda role), pass --python, or --no-collective")
    failed = stage_all(sessions, staging)
    if failed:
        return collective.CollectiveResult(
            problem="; ".join(f"{name}: {problem}" for name, problem in failed.items()))
    progress(f"all-reduce sweep: torchrun on {len(config.nodes)} node(s)")
    with tempfile.TemporaryDirectory(prefix="provision-net-") as logs:
        job, lines = collective.collective_job(
            config, sessions, {n: s.endpoint.ifname for n, s in nodes.items()}, Path(logs))
        previous = {sig: signal.signal(sig, lambda *_: job.interrupt())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            result = job.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return collective.collective_result(result, lines)
