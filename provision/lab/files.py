"""The files of a lab: where each lives in its directory, and what the lab writes into them.

Everything the lab keeps lives in its directory:

    id_ed25519[.pub]   the key that logs in as root or deploy (kept by `down`)
    sudo_password      deploy's sudo password (0600; never in the inventory)
    inventory.yaml, known_hosts, hosts.json (name -> address), lab.json (state)
    hosts/<name>/      init.json, boot.json, init.log, sshd_config, sshd.log, host keys,
                       layers/<dir>/{upper,work}, srv/, mnt/
"""

from __future__ import annotations

import fcntl
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from provision.errors import LabError
from provision.lab.init import write_atomic
from provision.lab.tools import Tools

RUNTIME_FILES = ("hosts", "lab.json", "inventory.yaml", "known_hosts", "hosts.json",
                 "sudo_password", "sshd_probe_config")


class LabFiles:
    """One lab's directory: its paths, its recorded state and the files `up` writes there."""

    def __init__(self, name: str, dir: Path):
        self.name = name
        self.dir = dir
        self.inventory_path = dir / "inventory.yaml"
        self.key_path = dir / "id_ed25519"
        self.known_hosts_path = dir / "known_hosts"
        self.sudo_password_path = dir / "sudo_password"
        self.hosts_json_path = dir / "hosts.json"
        self.state_path = dir / "lab.json"

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    def host_key(self, host: str) -> Path:
        return self.host_dir(host) / "ssh_host_ed25519_key"

    def init_config(self, host: str) -> Path:
        return self.host_dir(host) / "init.json"

    def read_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read lab state {self.state_path}: {exc}") from exc
        if state.get("name") != self.name:
            raise LabError(f"{self.dir} holds lab {state.get('name')!r}, not {self.name!r}")
        return state

    def write_state(self, subnet: str, hosts: int, training: int | None,
                    init_pids: dict[str, int]) -> None:
        write_atomic(self.state_path, json.dumps({
            "name": self.name, "subnet": subnet, "hosts": hosts, "training": training,
            "init_pids": init_pids,
        }, indent=1))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One `up` or `down` at a time per lab directory (none to lock where it does not exist)."""
        if not self.dir.is_dir():
            yield
            return
        with open(self.dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def ensure_credentials(self, tools: Tools) -> None:
        if not self.key_path.exists():
            keygen(tools, self.key_path, f"provision lab {self.name}")
        if not self.sudo_password_path.exists():
            write_atomic(self.sudo_password_path, secrets.token_urlsafe(18) + "\n", 0o600)

    def public_key(self) -> str:
        return public_half(self.key_path).read_text().strip()

    def write_hosts_json(self, hosts: dict[str, str]) -> None:
        write_atomic(self.hosts_json_path, json.dumps(hosts, indent=1))

    def write_client_files(self, hosts: dict[str, str], training: int, subnet: str) -> None:
        """known_hosts and the inventory: what clients need to reach `hosts` (name -> address)."""
        public = {address: public_half(self.host_key(name)).read_text()
                  for name, address in hosts.items()}
        write_atomic(self.known_hosts_path, known_hosts(public))
        write_atomic(self.inventory_path, inventory(
            self.name, hosts, training, self.key_path, self.known_hosts_path, subnet))

    def remove_runtime_files(self) -> None:
        """All but the login key pair, which a later `up` reuses."""
        for name in RUNTIME_FILES:
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def log_tail(self, host: str, log: str) -> str:
        path = self.host_dir(host) / log
        try:
            lines = path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return f"no {path}"
        return f"{path}: " + (" | ".join(lines) if lines else "(empty)")


def public_half(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def keygen(tools: Tools, path: Path, comment: str) -> None:
    done = subprocess.run([tools.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                           "-f", str(path)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise LabError(f"ssh-keygen for {path} failed: {done.stderr.strip()}")


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

