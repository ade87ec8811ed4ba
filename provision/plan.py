"""Results of planning and running tasks: one TaskResult per host and task, HostResult per host."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNREACHABLE = "unreachable"
    INTERRUPTED = "interrupted"   # the run was stopped (Ctrl-C) before the host's work was done


@dataclass(frozen=True)
class TaskResult:
    host: str
    role: str
    task: str
    status: Status
    message: str                 # what changed (or would), why not, or why it failed
    diff: str | None = None
    output: str | None = None    # command output, for ad-hoc commands and failures
    traceback: str | None = None  # where an unexpected error (a bug) was raised


@dataclass
class HostResult:
    host: str
    tasks: list[TaskResult] = field(default_factory=list)
    unreachable: str | None = None
    interrupted: str | None = None  # when in its work the run was interrupted
    round_trips: int = 0          # remote commands run, facts batches included

    @property
    def status(self) -> Status:
        if self.unreachable:
            return Status.UNREACHABLE
        if self.interrupted:
            return Status.INTERRUPTED
        statuses = {t.status for t in self.tasks}
        for status in (Status.FAILED, Status.CHANGED, Status.OK):
            if status in statuses:
                return status
        return Status.SKIPPED

    def count(self, status: Status) -> int:
        if status is Status.UNREACHABLE:
            return 1 if self.unreachable else 0
        if status is Status.INTERRUPTED:
            return 1 if self.status is Status.INTERRUPTED else 0
        return sum(1 for t in self.tasks if t.status is status)

    def as_dict(self) -> dict:
        return {"host": self.host, "status": self.status.value,
                "unreachable": self.unreachable, "interrupted": self.interrupted,
                "round_trips": self.round_trips,
                "counts": {s.value: self.count(s) for s in Status},
                "tasks": [{"role": t.role, "task": t.task, "status": t.status.value,
                           "message": t.message, "diff": t.diff, "output": t.output,
                           **({"traceback": t.traceback} if t.traceback else {})}
                          for t in self.tasks]}


EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_UNREACHABLE = 0, 2, 3, 4
EXIT_INTERRUPTED = 128 + 2    # as a shell reports a command that SIGINT ended


def exit_code(results: list[HostResult]) -> int:
    """0 all ok, 3 some host failed, 4 some host unreachable (and none failed); 130 when the
    run was interrupted, whatever else happened."""
    statuses = {r.status for r in results}
    if Status.INTERRUPTED in statuses:
        return EXIT_INTERRUPTED
    if Status.FAILED in statuses:
        return EXIT_FAILED
    if Status.UNREACHABLE in statuses:
        return EXIT_UNREACHABLE
    return EXIT_OK
