"""Settings known to the tool: core settings plus every role's arguments."""

from __future__ import annotations

from pathlib import Path

from provision.errors import RoleError
from provision.roles import ROLES_DIR, load_role
from provision.settings import CORE_SETTINGS, Setting


def role_names(roles_dir: Path = ROLES_DIR) -> list[str]:
    return sorted(p.parent.name for p in roles_dir.glob("*/role.yml"))


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

# The order `provision setup` runs the shipped roles in: a host failing preflight is not touched.
SETUP_ORDER = ("preflight", "nvidia", "ntp", "firewall", "nfs", "conda")
