"""The operation contract: compare wanted state (args) with facts, yield commands or say why not.

An operation is pure: `facts(args)` names what it must know, `plan(args, facts, host)` returns
Change (commands to run), NoChange (why nothing is needed), Failure (a verification that did not
hold) or Skip. The runner gathers the facts of many tasks in one round trip and runs the commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

from provision.facts.base import Fact
from provision.inventory import Host
from provision.settings import Setting


@dataclass(frozen=True)
class Command:
    run: list[str] | str          # argv, or a POSIX sh script with every value quoted
    stdin: bytes | None = None
    # A provision.relay.SharedFile the command reads at its path: the run's relay brings it to
    # the host first (the controller's link carries such a file about once per run).
    needs: Any = None


@dataclass(frozen=True)
class Change:
    description: str
    commands: tuple[Command, ...]
    diff: str | None = None


@dataclass(frozen=True)
class NoChange:
    reason: str


@dataclass(frozen=True)
class Failure:
    reason: str


@dataclass(frozen=True)
class Skip:
    reason: str


Outcome = Union[Change, NoChange, Failure, Skip]
FactValues = Mapping[Fact, Any]


@dataclass(frozen=True)
class HostContext:
    """What an operation may know besides its facts: the host and the controller-side files."""

    host: Host
    role_dir: Any = None          # pathlib.Path of the role, for templates and files
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    name: str
    args: dict[str, Setting]
    required: tuple[str, ...]
    facts: Callable[[dict[str, Any]], list[Fact]]
    plan: Callable[[dict[str, Any], FactValues, HostContext], Outcome]
    doc: str = ""


REGISTRY: dict[str, Operation] = {}


def operation(name: str, args: list[Setting], required: tuple[str, ...] = (),
              facts: Callable[[dict[str, Any]], list[Fact]] = lambda a: []):
    """Register `plan` as operation `name` (used as `op: name` in role files)."""
    def register(plan: Callable[[dict[str, Any], FactValues, HostContext], Outcome]):
        REGISTRY[name] = Operation(name, {s.name: s for s in args}, required, facts, plan,
                                   (plan.__doc__ or "").strip())
        return plan
    return register
