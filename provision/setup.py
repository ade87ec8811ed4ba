"""Settings known to the tool: core settings plus every role's arguments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from provision.errors import RoleError
from provision.inventory import Host
from provision.roles import ROLES_DIR, Role, load_role
from provision.settings import CORE_SETTINGS, Setting


def role_names(roles_dir: Path = ROLES_DIR) -> list[str]:
    return sorted(p.parent.name for p in roles_dir.glob("*/role.yml"))


def load_roles(roles_dir: Path = ROLES_DIR, names: Sequence[str] = ()) -> list[Role]:
    """The roles `names` (--role, in the order given), or else every role of `roles_dir` in
    the order each declares (`order:` in its role.yml, lower first): setup, check, --tags and
    `provision roles` all run them so. A directory without any role, or roles that do not say
    where they go among the others, is an error, not a guess."""
    available = role_names(roles_dir)
    if not available:
        raise RoleError(f"no roles in {roles_dir} (a role is a folder with a role.yml): "
                        "check --roles-dir")
    if names:
        return [load_role(name, roles_dir) for name in names]
    roles = [load_role(name, roles_dir) for name in available]
    if len(roles) > 1:
        unordered = [r.name for r in roles if r.order is None]
        if unordered:
            placed = ", ".join(f"{r.name} {r.order}" for r in sorted(
                (r for r in roles if r.order is not None), key=lambda r: r.order))
            raise RoleError(f"{', '.join(f'{roles_dir}/{n}/role.yml' for n in unordered)}: "
                            "no `order:` (where the role runs among the others"
                            + (f": {placed}" if placed else "") + ")")
        orders = [r.order for r in roles]
        same = sorted({r.name for r in roles if orders.count(r.order) > 1})
        if same:
            raise RoleError(f"roles {', '.join(same)} in {roles_dir} share an `order:`: give "
                            "each its own place")
    return sorted(roles, key=lambda r: (r.order or 0, r.name))


def selected_roles(roles: Iterable[Role], tags: frozenset[str]) -> list[Role]:
    """The roles with a task that `--tags` selects (a tag of the task, or the role's name)."""
    return [r for r in roles if r.tasks and r.selected(tags)]


def missing_required(roles: Iterable[Role], hosts: Iterable[Host]) -> list[str]:
    """One line per role argument marked `required: true` that some hosts do not set."""
    hosts = list(hosts)
    problems = []
    for role in roles:
        for arg in role.required:
            unset = [h.name for h in hosts if h.vars.get(arg) is None]
            if unset:
                shown = ", ".join(unset[:5]) + (f" and {len(unset) - 5} more" if len(unset) > 5
                                                else "")
                problems.append(f"role {role.name} requires {arg!r}, which is not set for "
                                f"{shown}: set it in the inventory (or -e {arg}=...)")
    return problems


def known_settings(roles_dir: Path = ROLES_DIR) -> dict[str, Setting]:
    """Every setting an inventory may hold. Roles may share an argument (conda_prefix, say),
    but then they must agree on its type and default, or one role would silently win."""
    known = dict(CORE_SETTINGS)
    owners: dict[str, tuple[str, object]] = {}
    for name in role_names(roles_dir):
        role = load_role(name, roles_dir)
        for arg, setting in role.args.items():
            if arg in CORE_SETTINGS and CORE_SETTINGS[arg].type != setting.type:
                raise RoleError(f"{role.path}/role.yml: argument {arg!r} is a core setting "
                                f"of type {CORE_SETTINGS[arg].type}, not {setting.type}")
            default = role.defaults.get(arg)
            if arg in owners and (known[arg].type, owners[arg][1]) != (setting.type, default):
                raise RoleError(f"{role.path}/role.yml: argument {arg!r} differs from role "
                                f"{owners[arg][0]}'s (type or default)")
            owners.setdefault(arg, (name, default))
            known[arg] = setting
    return known
