"""Checks across hosts (clock skew, shared mount, identical environments), run after every host
has run its tasks, over the connections still open.

A check is a function (sessions, inventory, role, check_mode) -> list[TaskResult] (in check
mode it must change nothing, not even a temporary file). A check should read what the run
already knows (session.facts, session.tasks) rather than run more commands,
so that a run with nothing to change stays at one round trip per host. Registered with
@cluster_check(name) (in the modules of provision.operations, all imported with it) and named
in a role file's `cluster_checks:`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from provision.plan import TaskResult

if TYPE_CHECKING:
    from provision.inventory import Inventory
    from provision.roles import Role
    from provision.runner import HostSession

ClusterCheck = Callable[["dict[str, HostSession]", "Inventory", "Role", bool],
                        "list[TaskResult]"]
CLUSTER_CHECKS: dict[str, ClusterCheck] = {}


def cluster_check(name: str):
    def register(function: ClusterCheck) -> ClusterCheck:
        CLUSTER_CHECKS[name] = function
        return function
    return register
