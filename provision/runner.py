"""Run roles on many hosts in parallel: one connection per host, facts batched per round trip.

Per host: render every selected task, gather the facts of all of them in ONE remote command,
plan each task in order; a task that changes something makes the facts of the tasks after it
stale, so they are gathered again (once) before the next one is planned. In check mode nothing
but fact gathering runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from provision.connection import CommandResult, ConnectOptions, HostConnection
from provision.errors import HostUnreachable
from provision.facts.base import Fact, batch_script, split_batch_output
from provision.inventory import Host, Inventory
from provision.operations import Change, Failure, HostContext, NoChange, Skip
from provision.plan import HostResult, Status, TaskResult
from provision.roles import Role, Task, check_args, evaluate, render

Listener = Callable[[TaskResult], None]


@dataclass(frozen=True)
class RunOptions:
    check: bool = False
    tags: frozenset[str] = frozenset()
    forks: int = 16


def template_variables(inventory: Inventory, host: Host, role: Role | None) -> dict[str, Any]:
    base = role.variables(host.vars) if role else dict(host.vars)
    return {**base, "inventory_hostname": host.name, "host": host,
            "hosts": list(inventory.hosts.values()),
            "groups": {name: g.hosts for name, g in inventory.groups.items()}}


class HostSession:
    """A host's connection, what this run learned and did on it, and the round-trip count the
    benchmarks report. Cross-host checks read `facts` and `tasks` instead of asking again."""

    def __init__(self, connection: HostConnection):
        self.connection = connection
        self.round_trips = 0
        self.facts: dict[Fact, Any] = {}          # the latest value of every fact gathered
        self.tasks: list[TaskResult] = []         # this run's task results on the host

    def changed(self, role: str) -> bool:
        return any(t.role == role and t.status is Status.CHANGED for t in self.tasks)

    def run(self, command, **kwargs) -> CommandResult:
        self.round_trips += 1
        return self.connection.run(command, sudo=self.connection.host.become, **kwargs)

    def gather(self, facts: list[Fact]) -> dict[Fact, Any]:
        """Every fact in one round trip. A parser that rejects its output raises ValueError."""
        unique = list(dict.fromkeys(facts))
        if not unique:
            return {}
        script, marker = batch_script(unique)
        result = self.run(script)
        if marker not in result.stdout:
            # Not even the first fact ran: sudo or the shell itself refused.
            raise ValueError(f"the fact script did not run ({result.describe_failure()})")
        outputs = split_batch_output(result.stdout, marker, len(unique))
        values = {fact: fact.parse(out, rc) for fact, (out, rc) in zip(unique, outputs)}
        self.facts.update(values)
        return values


def _selected(task: Task, role: Role, tags: frozenset[str]) -> bool:
    return not tags or bool(tags & {role.name, *task.tags})


def run_roles(session: HostSession, inventory: Inventory, roles: list[Role],
              options: RunOptions, listener: Listener, results: list[TaskResult]) -> None:
    """Plan and (unless checking) apply `roles` on one host, appending to `results`."""
    host = session.connection.host

    def report(result: TaskResult) -> None:
        results.append(result)
        listener(result)

    # (role, task, rendered args or None when its condition is not met, context)
    bound: list[tuple[Role, Task, dict | None, HostContext]] = []
    for role in roles:
        variables = template_variables(inventory, host, role)
        ctx = HostContext(host, role.path, variables)
        for task in role.tasks:
            if not _selected(task, role, options.tags):
                continue
            try:
                if task.when is not None and not evaluate(task.when, variables):
                    bound.append((role, task, None, ctx))
                    continue
                args = render(task.args, variables)
            except Exception as exc:  # jinja2 errors name the missing variable
                report(TaskResult(host.name, role.name, task.name, Status.FAILED,
                                  f"{task.where}: cannot render task: {exc}"))
                return
            problems = check_args(task, args)
            if problems:
                report(TaskResult(host.name, role.name, task.name, Status.FAILED,
                                  "; ".join(problems)))
                return
            bound.append((role, task, args, ctx))

    facts: dict[Fact, Any] = {}
    stale = True
    changed: set[tuple[str, str]] = set()
    failed_roles: set[str] = set()
    for index, (role, task, args, ctx) in enumerate(bound):
        if role.name in failed_roles:
            report(TaskResult(host.name, role.name, task.name, Status.SKIPPED,
                              "an earlier task of this role failed"))
            continue
        if args is None:
            report(TaskResult(host.name, role.name, task.name, Status.SKIPPED,
                              f"condition not met: {task.when}"))
            continue
        if task.if_changed and not any((role.name, t) in changed for t in task.if_changed):
            report(TaskResult(host.name, role.name, task.name, Status.SKIPPED,
                              f"none of {', '.join(task.if_changed)} changed"))
            continue
        if stale:
            wanted = [f for _, t, a, _ in bound[index:] if a is not None for f in t.op.facts(a)]
            try:
                facts = session.gather(wanted)
            except ValueError as exc:
                report(TaskResult(host.name, role.name, task.name, Status.FAILED,
                                  f"cannot read facts: {exc}"))
                return
            stale = False
        try:
            outcome = task.op.plan(args, facts, ctx)
        except ValueError as exc:
            outcome = Failure(f"{task.where}: {exc}")
        if isinstance(outcome, NoChange):
            report(TaskResult(host.name, role.name, task.name, Status.OK, outcome.reason))
        elif isinstance(outcome, Skip):
            report(TaskResult(host.name, role.name, task.name, Status.SKIPPED, outcome.reason))
        elif isinstance(outcome, Failure):
            report(TaskResult(host.name, role.name, task.name, Status.FAILED, outcome.reason))
            if not options.check:
                return
            # Checking changes nothing, so the other roles are still worth reading.
            failed_roles.add(role.name)
        elif isinstance(outcome, Change):
            if not options.check:
                for command in outcome.commands:
                    result = session.run(command.run, stdin=command.stdin)
                    if not result.ok:
                        report(TaskResult(host.name, role.name, task.name, Status.FAILED,
                                          f"{outcome.description}: {result.describe_failure()}",
                                          outcome.diff, result.stdout + result.stderr))
                        return
                stale = True
            changed.add((role.name, task.name))
            report(TaskResult(host.name, role.name, task.name, Status.CHANGED,
                              outcome.description, outcome.diff))


def run_cluster_checks(sessions: dict[str, HostSession], results: dict[str, HostResult],
                       inventory: Inventory, roles: list[Role], options: RunOptions,
                       listener: Listener) -> None:
    """Each role's cross-host checks, over the hosts that finished that role without failing."""
    from provision.cluster_checks import CLUSTER_CHECKS
    for role in roles:
        if options.tags and role.name not in options.tags and not any(
                options.tags & set(t.tags) for t in role.tasks):
            continue
        healthy = {name: s for name, s in sessions.items()
                   if results[name].status not in (Status.FAILED, Status.UNREACHABLE)}
        for check in role.cluster_checks:
            if not healthy:
                continue
            try:
                check_results = CLUSTER_CHECKS[check](healthy, inventory, role, options.check)
            except HostUnreachable as exc:
                check_results = [TaskResult(name, role.name, check, Status.FAILED, str(exc))
                                 for name in healthy]
            for result in check_results:
                results[result.host].tasks.append(result)
                listener(result)


def run_on_hosts(hosts: list[Host], options: ConnectOptions, forks: int,
                 work: Callable[[HostSession, list[TaskResult]], None],
                 after_all: Callable[[dict[str, HostSession], dict[str, HostResult]], None]
                 | None = None) -> list[HostResult]:
    """Run `work` on every host in parallel (at most `forks` at once), one connection each,
    then `after_all` over the connections still open (cross-host checks), then close them.

    A host that cannot be reached, or whose connection dies, is UNREACHABLE; the others finish.
    """
    sessions = {h.name: HostSession(HostConnection(h, options)) for h in hosts}
    results = {h.name: HostResult(h.name) for h in hosts}
    for name, session in sessions.items():
        session.tasks = results[name].tasks

    def one(host: Host) -> None:
        try:
            work(sessions[host.name], results[host.name].tasks)
        except HostUnreachable as exc:
            results[host.name].unreachable = str(exc)

    try:
        if hosts:
            with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
                list(pool.map(one, hosts))
        if after_all is not None:
            reachable = {n: s for n, s in sessions.items() if not results[n].unreachable}
            after_all(reachable, results)
    finally:
        for name, session in sessions.items():
            session.connection.close()
            results[name].round_trips = session.round_trips
    return list(results.values())
