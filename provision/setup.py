"""Settings known to the tool: core settings plus every role's arguments."""

from __future__ import annotations

from pathlib import Path

from provision.roles import ROLES_DIR, load_role
from provision.settings import CORE_SETTINGS, Setting


def role_names(roles_dir: Path = ROLES_DIR) -> list[str]:
    return sorted(p.parent.name for p in roles_dir.glob("*/role.yml"))


def known_settings(roles_dir: Path = ROLES_DIR) -> dict[str, Setting]:
    known = dict(CORE_SETTINGS)
    for name in role_names(roles_dir):
        known.update(load_role(name, roles_dir).args)
    return known

# The order `provision setup` runs the shipped roles in: a host failing preflight is not touched.
SETUP_ORDER = ("preflight", "nvidia", "ntp", "firewall", "nfs", "conda")
