"""Run roles on many hosts in parallel: one connection per host, facts batched per round trip.

Per host: render every selected task, gather the facts of all of them in ONE remote command,
plan each task in order; a task that changes something makes the facts of the tasks after it
stale, so they are gathered again (once) before the next one is planned. In check mode nothing
but fact gathering runs.
"""

from __future__ import annotations

import threading
import traceback
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from provision.connection import ConnectOptions, HostConnection
from provision.errors import HostUnreachable, Interrupted, ProvisionError
from provision.facts.base import Fact
from provision.host_lock import LockRequest
from provision.inventory import Host, Inventory
from provision.operations import Change, Failure, HostContext, NoChange, Skip
from provision.plan import HostResult, Status, TaskResult
from provision.relay import Relay
from provision.checks import CLUSTER_CHECKS
from provision.roles import (Role, Task, check_args, check_context, evaluate, render,
                             template_variables)
from provision.session import HostSession, Progress

Listener = Callable[[TaskResult], None]


@dataclass(frozen=True)
class RunOptions:
    check: bool = False
    tags: frozenset[str] = frozenset()
    forks: int = 16


@dataclass(frozen=True)
class BoundTask:
    """A task as it runs on one host: its arguments rendered (None: its `when:` is false)."""

    role: Role
    task: Task
    args: dict[str, Any] | None
    context: HostContext

    def result(self, status: Status, message: str, diff: str | None = None,
               output: str | None = None) -> TaskResult:
        """Every result of a task on a host is built here."""
        return TaskResult(self.context.host.name, self.role.name, self.task.name, status,
                          message, diff, output)


def bind_tasks(host: Host, inventory: Inventory, roles: list[Role],
               options: RunOptions) -> tuple[list[BoundTask], TaskResult | None]:
    """The selected tasks of `roles` for `host`, arguments rendered and checked; or, with the
    tasks bound so far, the FAILED result of the first task that cannot be."""
    bound: list[BoundTask] = []
    for role in roles:
        variables = template_variables(inventory, host, role)
        context = HostContext(host, role.path, variables)
        for task in role.tasks:
            if not role.runs(task, options.tags):
                continue
            unbound = BoundTask(role, task, None, context)
            try:
                if task.when is not None and not evaluate(task.when, variables):
                    bound.append(unbound)
                    continue
                args = render(task.args, variables)
            except Exception as exc:  # jinja2 errors name the missing variable
                return bound, unbound.result(Status.FAILED,
                                             f"{task.where}: cannot render task: {exc}")
            problems = check_args(task, args)
            if problems:
                return bound, unbound.result(Status.FAILED, "; ".join(problems))
            bound.append(BoundTask(role, task, args, context))
    return bound, None


def run_roles(session: HostSession, inventory: Inventory, roles: list[Role],
              options: RunOptions, listener: Listener, results: list[TaskResult],
              relay: Relay | None = None) -> None:
    """Plan and (unless checking) apply `roles` on one host, appending to `results`. `relay`:
    the run's, shared by its hosts, for the files commands need (default: from the controller)."""

    def report(result: TaskResult) -> None:
        results.append(result)
        listener(result)

    bound, failure = bind_tasks(session.connection.host, inventory, roles, options)
    if failure is not None:
        report(failure)
        return
    facts: dict[Fact, Any] = {}
    stale = True
    changed: set[tuple[str, str]] = set()
    failed_roles: set[str] = set()
    for index, bound_task in enumerate(bound):
        role, task, args = bound_task.role, bound_task.task, bound_task.args
        result = bound_task.result
        session.begin(role.name, task.name)
        if role.name in failed_roles:
            report(result(Status.SKIPPED, "an earlier task of this role failed"))
            continue
        if args is None:
            report(result(Status.SKIPPED, f"condition not met: {task.when}"))
            continue
        if task.if_changed and not any((role.name, t) in changed for t in task.if_changed):
            report(result(Status.SKIPPED, f"none of {', '.join(task.if_changed)} changed"))
            continue
        if stale:
            wanted = [f for later in bound[index:] if later.args is not None
                      for f in later.task.op.facts(later.args)]
            try:
                facts = session.gather(wanted)
            except ValueError as exc:
                report(result(Status.FAILED, f"cannot read facts: {exc}"))
                return
            stale = False
        try:
            outcome = task.op.plan(args, facts, bound_task.context)
        except ValueError as exc:
            outcome = Failure(f"{task.where}: {exc}")
        if isinstance(outcome, (NoChange, Skip, Failure)):
            status = {NoChange: Status.OK, Skip: Status.SKIPPED,
                      Failure: Status.FAILED}[type(outcome)]
            report(result(status, outcome.reason))
            if status is Status.FAILED:
                if not options.check:
                    return
                # Checking changes nothing, so the other roles are still worth reading.
                failed_roles.add(role.name)
        elif isinstance(outcome, Change):
            if not options.check:
                for command in outcome.commands:
                    done = (relay or Relay()).run(session, command)
                    if not done.ok:
                        report(result(Status.FAILED,
                                      f"{outcome.description}: {done.describe_failure()}",
                                      outcome.diff, done.stdout + done.stderr))
                        return
                stale = True
            changed.add((role.name, task.name))
            report(result(Status.CHANGED, outcome.description, outcome.diff))


def run_cluster_checks(sessions: dict[str, HostSession], results: dict[str, HostResult],
                       inventory: Inventory, roles: list[Role], options: RunOptions,
                       listener: Listener) -> None:
    """Each role's cross-host checks, over the hosts that finished that role without failing."""
    for role in roles:
        if not role.selected(options.tags):
            continue
        healthy = {name: s for name, s in sessions.items()
                   if results[name].status not in (Status.FAILED, Status.UNREACHABLE)}
        if not healthy:
            continue
        context = check_context(healthy, inventory, role, options.check, options.forks)
        for check in role.cluster_checks:
            try:
                check_results = CLUSTER_CHECKS[check](context)
            except Interrupted:
                raise
            except Exception as exc:  # noqa: BLE001 - a check's error is its hosts' failure
                check_results = [failed(name, role.name, check, exc) for name in healthy]
            for result in check_results:
                results[result.host].tasks.append(result)
                listener(result)


def failed(host: str, role: str, task: str, exc: Exception) -> TaskResult:
    """The FAILED result of a task that raised: a ProvisionError says what went wrong; any
    other exception is a bug, reported with its traceback (in --json, and with -v)."""
    if isinstance(exc, ProvisionError):
        return TaskResult(host, role, task, Status.FAILED, str(exc))
    kind = type(exc).__qualname__ if type(exc).__module__ == "builtins" else \
        f"{type(exc).__module__}.{type(exc).__qualname__}"
    return TaskResult(host, role, task, Status.FAILED, f"unexpected error: {kind}: {exc}",
                      traceback="".join(traceback.format_exception(exc)))


STOP_POLL_S = 0.2   # how often the waiting main thread looks for a stop request


def run_on_hosts(hosts: list[Host], options: ConnectOptions, forks: int,
                 work: Callable[[HostSession, list[TaskResult]], None],
                 after_all: Callable[[dict[str, HostSession], dict[str, HostResult]], None]
                 | None = None, stop: threading.Event | None = None,
                 lock: LockRequest | None = None,
                 listener: Listener | None = None,
                 progress: Progress | None = None) -> list[HostResult]:
    """Run `work` on every host in parallel (at most `forks` at once), one connection each,
    then `after_all` over the connections still open (cross-host checks), then close them.
    With `lock`, each host's lock is held from the first round trip to the end. `listener`
    hears of the failures this function itself records; `progress` of each host's tasks.

    A host that cannot be reached, or whose connection dies, is UNREACHABLE; a host whose work
    raised anything else is FAILED; the others finish either way. Once `stop` is set (Ctrl-C),
    no task starts, every connection is closed (which stops its commands on the host) and the
    hosts not done are INTERRUPTED.
    """
    sessions = {h.name: HostSession(HostConnection(h, options), lock) for h in hosts}
    results = {h.name: HostResult(h.name) for h in hosts}
    for name, session in sessions.items():
        session.tasks = results[name].tasks
        session.progress = progress

    def report(result: TaskResult) -> None:
        results[result.host].tasks.append(result)
        if listener is not None:
            listener(result)

    def one(host: Host) -> None:
        session, result = sessions[host.name], results[host.name]
        if stop is not None and stop.is_set():
            result.interrupted = "before it started"
            return
        try:
            work(session, result.tasks)
        except Interrupted:
            result.interrupted = (f"during [{session.current[0]}] {session.current[1]}"
                                  if session.current else "before its first task")
        except HostUnreachable as exc:
            result.unreachable = str(exc)
        except Exception as exc:  # noqa: BLE001 - one host's error must not stop the others
            report(failed(host.name, *(session.current or ("provision", "run")), exc))
        finally:
            if progress is not None:
                progress.host_done(host.name)

    def checks() -> None:
        reachable = {n: s for n, s in sessions.items()
                     if not results[n].unreachable and not results[n].interrupted}
        try:
            if stop is not None and stop.is_set():
                raise Interrupted("interrupted")
            after_all(reachable, results)
        except Interrupted:
            for name in reachable:
                results[name].interrupted = "before the cross-host checks were done"
        except Exception as exc:  # noqa: BLE001
            for name in reachable:
                report(failed(name, "provision", "cross-host checks", exc))

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts) or 1))) as pool:
            _until_done([pool.submit(one, h) for h in hosts], stop, sessions)
            if after_all is not None:
                _until_done([pool.submit(checks)], stop, sessions)
    finally:
        for name, session in sessions.items():
            session.connection.close()
            results[name].round_trips = session.round_trips
    return list(results.values())


def _until_done(futures: list, stop: threading.Event | None,
                sessions: dict[str, HostSession]) -> None:
    """Wait for `futures`; on a stop request, end every connection so that they end soon."""
    aborted = False
    while wait(futures, timeout=None if stop is None else STOP_POLL_S).not_done:
        if stop is not None and stop.is_set() and not aborted:
            for session in sessions.values():
                session.connection.abort(Interrupted("interrupted"))
            aborted = True
