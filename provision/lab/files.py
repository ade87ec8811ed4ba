"""What the lab writes, as pure functions of its hosts: sshd_config, known_hosts, the inventory."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def sshd_config(host: str, address: str, host_key: Path, penalties_option: bool) -> str:
    lines = [
        f"# sshd of lab host {host}; rewritten by every `provision lab up`",
        f"ListenAddress {address}:22",
        f"HostKey {host_key}",
        "PidFile /run/sshd.pid",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # PAM would run the machine's login stack (motd scripts...) on every connection.
        "UsePAM no",
        "UseDNS no",
        # The runner opens many connections and channels at once.
        "MaxStartups 1024",
        "MaxSessions 1024",
        "PrintMotd no",
        "PrintLastLog no",
        "AcceptEnv LANG LC_*",
        "Subsystem sftp internal-sftp",
    ]
    if penalties_option:
        # OpenSSH >= 9.8 would lock the controller out after the tests' deliberate failures.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def known_hosts(public_keys: dict[str, str]) -> str:
    """address -> 'ssh-ed25519 AAAA... comment' becomes 'address ssh-ed25519 AAAA...' lines."""
    return "".join(f"{address} {' '.join(key.split()[:2])}\n"
                   for address, key in public_keys.items())


def inventory(lab: str, hosts: dict[str, str], training: int, key: Path,
              known_hosts_path: Path, subnet: str) -> str:
    """The Ansible YAML inventory of the lab: every host, the first `training` in `training`,
    and what `provision setup` needs to know about lab hosts: no GPUs, no route to outside time
    servers (the first host serves the lab's time) and no systemd (provision starts chronyd
    itself, with -x: a lab host shares the machine's clock and must not set it)."""
    names = list(hosts)
    document = {"all": {
        "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(key),
                 "ssh_known_hosts": str(known_hosts_path), "gpus": 0,
                 "ntp_servers": [hosts[names[0]]], "ntp_chronyd_options": ["-x"]},
        "hosts": {name: {"ansible_host": address} for name, address in hosts.items()},
        "children": {"training": {"hosts": {name: {} for name in names[:training]}}},
    }}
    document["all"]["hosts"][names[0]].update({"ntp_local_stratum": 8, "ntp_allow": [subnet]})
    header = f"# Lab {lab}: written by `provision lab up`, rewritten by every up.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a sibling file with its final mode, then rename it over `path`."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, mode)
    os.replace(temp, path)
