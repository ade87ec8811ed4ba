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
    """A host's connection plus the round-trip count the benchmarks report."""

    def __init__(self, connection: HostConnection):
        self.connection = connection
        self.round_trips = 0

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
        outputs = split_batch_output(result.stdout, marker, len(unique))
        return {fact: fact.parse(out, rc) for fact, (out, rc) in zip(unique, outputs)}


def _selected(task: Task, role: Role, tags: frozenset[str]) -> bool:
    return not tags or bool(tags & {role.name, *task.tags})


def run_roles(session: HostSession, inventory: Inventory, roles: list[Role],
              options: RunOptions, listener: Listener, results: list[TaskResult]) -> None:
    """Plan and (unless checking) apply `roles` on one host, appending to `results`."""
    host = session.connection.host

    def report(result: TaskResult) -> None:
        results.append(result)
        listener(result)

    bound: list[tuple[Role, Task, dict, HostContext]] = []
    for role in roles:
        variables = template_variables(inventory, host, role)
        ctx = HostContext(host, role.path, variables)
        for task in role.tasks:
            if not _selected(task, role, options.tags):
                continue
            try:
                if task.when is not None and not evaluate(task.when, variables):
                    report(TaskResult(host.name, role.name, task.name, Status.SKIPPED,
                                      f"condition not met: {task.when}"))
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
    for index, (role, task, args, ctx) in enumerate(bound):
        if stale:
            wanted = [f for _, t, a, _ in bound[index:] for f in t.op.facts(a)]
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
            return
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
            report(TaskResult(host.name, role.name, task.name, Status.CHANGED,
                              outcome.description, outcome.diff))


def run_on_hosts(hosts: list[Host], options: ConnectOptions, forks: int,
                 work: Callable[[HostSession, list[TaskResult]], None]) -> list[HostResult]:
    """Run `work` on every host in parallel (at most `forks` at once), one connection each.

    A host that cannot be reached, or whose connection dies, is UNREACHABLE; the others finish.
    """
    def one(host: Host) -> HostResult:
        session = HostSession(HostConnection(host, options))
        result = HostResult(host.name)
        try:
            work(session, result.tasks)
        except HostUnreachable as exc:
            result.unreachable = str(exc)
        finally:
            session.connection.close()
            result.round_trips = session.round_trips
        return result

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        return list(pool.map(one, hosts))
