"""Typed settings: the inventory vars the tool itself reads, with their checks.

Role arguments are settings too (declared in roles/<name>/role.yml); both kinds are checked by
`check_value`, so an inventory error and a role argument error read the same.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ADDRESS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]*")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Paths go into remote commands quoted, but a newline or NUL is never a real path.
PATH_RE = re.compile(r"[^\x00\n\r]+")
SHA256_RE = re.compile(r"[0-9A-Fa-f]{64}")

TYPES = ("str", "int", "float", "bool", "path", "abspath", "address", "user", "ifname",
         "name", "port", "cidr", "list", "dict", "env", "sha256")


@dataclass(frozen=True)
class Setting:
    name: str
    type: str
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    item: str | None = None  # element type for list settings

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"setting {self.name}: unknown type {self.type!r}")


def _check_scalar(kind: str, value: Any) -> str | None:
    """Returns a problem description or None."""
    if kind in ("int", "port"):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if kind == "port" and not 1 <= value <= 65535:
            return f"must be a port number 1-65535, got {value}"
        return None
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        return None
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r}"
    patterns = {"address": (ADDRESS_RE, "a host name or IP address"),
                "user": (USER_RE, "a POSIX user name"),
                "ifname": (IFNAME_RE, "a network interface name"),
                "name": (NAME_RE, "a name of letters, digits, '.', '_' and '-'"),
                "path": (PATH_RE, "a path without newlines"),
                "abspath": (PATH_RE, "an absolute path without newlines"),
                "env": (ENV_NAME_RE, "an environment variable name")}
    if kind in patterns:
        regex, what = patterns[kind]
        if not regex.fullmatch(value):
            return f"must be {what}, got {value!r}"
        if kind == "abspath" and not value.startswith("/"):
            return f"must be an absolute path, got {value!r}"
    if kind == "sha256" and value and not SHA256_RE.fullmatch(value):
        return f"must be a sha256 hex digest (64 hex digits) or empty, got {value!r}"
    if kind == "cidr":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"must be a network in CIDR notation like 10.0.0.0/24, got {value!r}"
    return None


def check_value(setting: Setting, value: Any) -> str | None:
    """The problem with `value` for `setting`, or None when it is valid."""
    if setting.type == "list":
        if not isinstance(value, list):
            return f"must be a list, got {value!r}"
        for item in value:
            problem = _check_scalar(setting.item or "str", item)
            if problem:
                return f"item {problem}"
        return None
    if setting.type == "dict":
        if not isinstance(value, dict):
            return f"must be a mapping, got {value!r}"
        for key, item in value.items():
            if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
                return f"key {key!r} must be a variable name"
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                return f"value of {key} must be a string or number, got {item!r}"
        return None
    problem = _check_scalar(setting.type, value)
    if problem:
        return problem
    if setting.min is not None and value < setting.min:
        return f"must be at least {setting.min:g}, got {value}"
    if setting.max is not None and value > setting.max:
        return f"must be at most {setting.max:g}, got {value}"
    if setting.choices is not None and value not in setting.choices:
        return f"must be one of {', '.join(map(str, setting.choices))}, got {value!r}"
    return None


def suggest(name: str, known: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return matches[0] if matches else None


CORE_SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("address", "address", "where to reach the host (IP or DNS name)"),
    Setting("port", "port", "SSH port"),
    Setting("user", "user", "SSH user"),
    Setting("ssh_key", "path", "private key file for SSH"),
    Setting("become", "bool", "run changes with sudo (for non-root users)"),
    Setting("ssh_known_hosts", "path", "known_hosts file used and updated by provision"),
    Setting("ssh_connect_timeout", "float", "seconds to wait for an SSH connection", min=0.1),
    Setting("command_timeout", "float", "seconds a remote command may run", min=0.1),
    Setting("ssh_keepalive_interval", "float",
            "seconds between SSH keepalives that expect a reply (like ServerAliveInterval)",
            min=0.1),
    Setting("ssh_keepalive_count_max", "int", "keepalives without a reply after which the "
            "connection is lost (like ServerAliveCountMax)", min=1),
    Setting("gpus", "int", "GPUs the host must have (0: CPU-only host)", min=0),
    Setting("rendezvous_port", "port", "torch rendezvous port on the master node"),
    Setting("master", "name", "inventory name of the rendezvous master node"),
    Setting("train_env", "dict", "environment variables for training processes"),
    Setting("cluster_cidr", "cidr", "network the training hosts talk over"),
    Setting("nccl_socket_ifname", "ifname", "network interface for NCCL/gloo traffic"),
]}

# Ansible's names, accepted so an existing Ansible inventory loads unchanged.
ALIASES = {
    "ansible_host": "address",
    "ansible_port": "port",
    "ansible_user": "user",
    "ansible_ssh_private_key_file": "ssh_key",
    "ansible_become": "become",
}
