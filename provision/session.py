"""One host's part in a run: its connection, what the run learned and did there, and who
hears of its progress. setup's runner, the cross-host checks and train all work through it."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from provision.connection import CommandResult, HostConnection, RemoteProcess
from provision.errors import ProvisionError
from provision.facts.base import Fact, batch_script, split_batch_output
from provision.host_lock import (BUSY, EXIT_BUSY, HostLocked, LockRequest, holder_named,
                                 locked_script)
from provision.plan import Status, TaskResult


class Progress(Protocol):
    """Hears where each host is (the live view): a task begun, a host with nothing more to do."""

    def started(self, host: str, role: str, task: str) -> None: ...

    def host_done(self, host: str) -> None: ...

    def sent(self, host: str, done: int, total: int) -> None: ...


class HostSession:
    """A host's connection, what this run learned and did on it, and the round-trip count the
    benchmarks report. Cross-host checks read `facts` and `tasks` instead of asking again."""

    def __init__(self, connection: HostConnection, lock: LockRequest | None = None):
        self.connection = connection
        self.round_trips = 0
        self.facts: dict[Fact, Any] = {}          # the latest value of every fact gathered
        self.tasks: list[TaskResult] = []         # this run's task results on the host
        self.current: tuple[str, str] | None = None   # (role, task) being worked on, if any
        self.progress: Progress | None = None
        self.lock = lock                          # the host lock this run must hold first
        # The command holding the lock, kept referenced: paramiko closes a collected channel.
        self._lock_holder: RemoteProcess | None = None

    def on_sent(self) -> Callable[[int, int], None] | None:
        """What hears how much of a big file has gone to this host (the live view), if any."""
        progress, name = self.progress, self.connection.host.name
        return None if progress is None else lambda done, total: progress.sent(name, done, total)

    def begin(self, role: str, task: str) -> None:
        self.current = (role, task)
        if self.progress is not None:
            self.progress.started(self.connection.host.name, role, task)

    def changed(self, role: str) -> bool:
        return any(t.role == role and t.status is Status.CHANGED for t in self.tasks)

    def run(self, command, **kwargs) -> CommandResult:
        if self.lock is not None and self._lock_holder is None:
            self._locked("")
        self.round_trips += 1
        return self.connection.run(command, sudo=self.connection.host.become, **kwargs)

    def _locked(self, facts_script: str) -> CommandResult:
        """Take the host lock and run `facts_script`, in one round trip (provision.host_lock)."""
        host, lock = self.connection.host, self.lock
        fence = "@@PROVISION-LOCKED"

        def on_line(stream: str, line: str) -> None:
            if stream == "stderr" and line.startswith(BUSY) and lock.wait:
                lock.notice(host.name, f"waiting for the run lock, held by "
                                       f"{holder_named(line)}")

        self.round_trips += 1
        process = self.connection.start(locked_script(facts_script, fence, lock),
                                        sudo=host.become)
        result = process.wait(self.connection.options.command_timeout, on_line, until=fence)
        if not result.running:
            if result.exit_code == EXIT_BUSY and BUSY in result.stderr:
                raise HostLocked(f"{host.name}: another run holds the host's lock "
                                 f"({holder_named(result.stderr)}); not waiting (--no-wait)")
            raise ProvisionError(f"{host.name}: cannot take the run lock "
                                 f"({result.describe_failure()})")
        self._lock_holder = process
        return result

    def gather(self, facts: list[Fact]) -> dict[Fact, Any]:
        """Every fact in one round trip. A parser that rejects its output raises ValueError."""
        unique = list(dict.fromkeys(facts))
        if not unique and (self.lock is None or self._lock_holder is not None):
            return {}
        script, marker = batch_script(unique)
        result = self._locked(script) if self.lock is not None and self._lock_holder is None \
            else self.run(script)
        if not unique:
            return {}
        if marker not in result.stdout:
            # Not even the first fact ran: sudo or the shell itself refused.
            raise ValueError(f"the fact script did not run ({result.describe_failure()})")
        outputs = split_batch_output(result.stdout, marker, len(unique))
        values = {fact: fact.parse(out, rc) for fact, (out, rc) in zip(unique, outputs)}
        self.facts.update(values)
        return values
