"""Checks across hosts (clock skew, shared mount, identical environments), run after every host
has run its tasks, over the connections still open.

A check is a function of a CheckContext -> list[TaskResult] (in check mode it must change
nothing, not even a temporary file). The runner builds the context once per role: the hosts
that finished the role without failing, and each one's variables exactly as its tasks saw them.
A check should read what the run already knows (session.facts, session.tasks) rather than run
more commands, so that a run with nothing to change stays at one round trip per host.
Registered with @cluster_check(name) (in the modules of provision.operations, all imported
with it) and named in a role file's `cluster_checks:`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from provision.plan import TaskResult

if TYPE_CHECKING:
    from provision.inventory import Inventory
    from provision.roles import Role
    from provision.session import HostSession


@dataclass(frozen=True)
class CheckContext:
    sessions: "dict[str, HostSession]"        # the hosts that finished the role without failing
    inventory: "Inventory"
    role: "Role"
    check_mode: bool
    variables: dict[str, dict[str, Any]]      # per host: the role's variables, as its tasks saw
    forks: int = 16                           # hosts asked at once (the run's --forks)

    def map(self, function: "Callable[[str], T]", names: Iterable[str]) -> "list[T]":
        """`function` of each host name, in order, `forks` hosts at once."""
        names = list(names)
        with ThreadPoolExecutor(max_workers=max(1, min(self.forks, len(names)))) as pool:
            return list(pool.map(function, names))


T = TypeVar("T")
ClusterCheck = Callable[[CheckContext], "list[TaskResult]"]
CLUSTER_CHECKS: dict[str, ClusterCheck] = {}


def cluster_check(name: str):
    def register(function: ClusterCheck) -> ClusterCheck:
        CLUSTER_CHECKS[name] = function
        return function
    return register
