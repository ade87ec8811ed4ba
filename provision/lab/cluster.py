"""The local lab cluster: N hosts on this machine, each a set of namespaces with a real sshd.

`Lab` is the one entry point (the CLI, the tests and the benchmarks use it); it keeps the lab's
hosts and hands the work to what manages each part: the lab directory's files (files.py), the
network (network.py), the hosts' namespaces, mounts and boot (hosts.py) and their processes
(processes.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.errors import LabError
from provision.lab.files import LabFiles, keygen, public_half
from provision.lab.hosts import HostBoot, LabHost, addresses, check_dir
from provision.lab.network import DEFAULT_SUBNET, LabNetwork, parse_subnet
from provision.lab.processes import LabProcesses, ssh_answers
from provision.lab.tools import Tools, find_tools

DEFAULT_NAME = "plab"
DEFAULT_HOSTS = 3
# Interface names are at most 15 characters: "<name>-v<3 digits>" must fit.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{0,9}")


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    init_pid: int | None
    sshd_alive: bool
    ssh_reachable: bool

    @property
    def healthy(self) -> bool:
        return self.init_pid is not None and self.sshd_alive and self.ssh_reachable


class Lab:
    """One lab, named and kept in a directory; the constructor only reads its recorded state."""

    def __init__(self, name: str = DEFAULT_NAME, dir: str | Path | None = None,
                 subnet: str | None = None):
        if not NAME_PATTERN.fullmatch(name):
            raise LabError(f"lab name {name!r} must be 1-10 characters: a lowercase letter, then "
                           "lowercase letters or digits (interface names derive from it)")
        self.name = name
        self.dir = Path(os.path.abspath(dir if dir is not None else Path(".lab") / name))
        self._files = LabFiles(name, self.dir)
        state = self._files.read_state()
        recorded = state.get("subnet")
        if recorded and subnet and parse_subnet(subnet) != parse_subnet(recorded):
            raise LabError(f"lab {name} in {self.dir} uses subnet {recorded}, not {subnet}; "
                           "run `provision lab down` first to change it")
        self.subnet = parse_subnet(recorded or subnet or DEFAULT_SUBNET)
        self._network = LabNetwork(name, self.dir, self.subnet, self.host_prefix)
        self._processes = LabProcesses(self._files, self.tools)
        self._boot = HostBoot(self._files, self._network)
        self.training: int | None = state.get("training")
        pids = state.get("init_pids", {})
        self.hosts = [self._host(i, pids) for i in range(state.get("hosts", 0))]
        self._tools: Tools | None = None

    # -- paths and names ------------------------------------------------------------------------

    @property
    def host_prefix(self) -> str:
        """Host names: the lab name without its leading 'p' (for provision), then 1, 2, ..."""
        rest = self.name[1:] if self.name.startswith("p") else ""
        return rest if rest[:1].isalpha() else self.name

    @property
    def inventory_path(self) -> Path:
        return self._files.inventory_path

    @property
    def key_path(self) -> Path:
        return self._files.key_path

    @property
    def known_hosts_path(self) -> Path:
        return self._files.known_hosts_path

    @property
    def sudo_password_path(self) -> Path:
        return self._files.sudo_password_path

    @property
    def bridge(self) -> str:
        return self._network.bridge

    def host_dir(self, host: str) -> Path:
        return self._files.host_dir(host)

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"lab {self.name} has no host {name!r} "
                       f"(hosts: {', '.join(h.name for h in self.hosts) or 'none, it is down'})")

    def _host(self, index: int, pids: dict[str, int]) -> LabHost:
        name = f"{self.host_prefix}{index + 1}"
        return LabHost(name, self._network.address(index), pids.get(name))

    # -- public operations ----------------------------------------------------------------------

    def up(self, hosts: int = DEFAULT_HOSTS, training: int | None = None) -> Lab:
        """Make hosts 1..max(hosts, current count) run; start only those that are not running.

        `training`: how many of the first hosts form the inventory's `training` group (default:
        what the lab had, else all).
        """
        tools = self.tools()
        check_dir(self.dir)
        capacity = self._network.capacity
        if not 1 <= hosts <= capacity:
            raise LabError(f"--hosts must be between 1 and {capacity} for subnet {self.subnet}")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._files.locked():
            state = self._files.read_state()
            count = max(hosts, state.get("hosts", 0))
            training = training if training is not None else state.get("training")
            if training is not None and not 1 <= training <= count:
                raise LabError(f"the training group must have 1 to {count} hosts, not {training}")
            self._network.set_up(tools.ip)
            self.training = training
            self.hosts = [self._host(i, {}) for i in range(count)]
            self._write_state()   # before any host exists, so that `down` finds them all
            self._files.ensure_credentials(tools)
            running = self._processes.running_inits(self.hosts)
            for host in self.hosts:
                host.init_pid = running.get(host.name)
            self._files.write_hosts_json(addresses(self.hosts))
            starting = [h for h in self.hosts if h.init_pid is None]
            kept = [h for h in self.hosts if h not in starting]
            self._boot.start(tools, starting, kept)
            for host in kept:
                self._boot.refresh_hosts_file(host, self.hosts)
                self._processes.start_sshd_if_stopped(host)
            self._processes.wait_for_ssh(self.hosts)
            self._files.write_client_files(addresses(self.hosts),
                                          self.training or len(self.hosts), str(self.subnet))
            self._write_state()
        return self

    def down(self) -> None:
        """Stop every host and remove the lab's namespaces, interfaces and runtime files.

        Keeps the lab's login key pair, so a later `up` accepts the same key.
        """
        tools = self.tools()
        with self._files.locked():
            stuck = self._processes.stop_all(self.hosts)
            if stuck:
                raise LabError(f"lab {self.name}: processes {stuck} did not stop")
            self._network.tear_down(tools.ip, [h.name for h in self.hosts])
            self._files.remove_runtime_files()
            self.hosts = []

    def status(self) -> list[HostStatus]:
        self.tools()
        running = self._processes.running_inits(self.hosts)
        with ThreadPoolExecutor(max_workers=32) as pool:
            reachable = list(pool.map(lambda h: ssh_answers(h.address, 1.0), self.hosts))
        result = []
        for host, answers in zip(self.hosts, reachable):
            host.init_pid = running.get(host.name)
            result.append(HostStatus(host.name, host.address, host.init_pid,
                                     self._processes.sshd_listener(host) is not None, answers))
        return result

    def sh(self, host: str | LabHost, script: str, check: bool = True, timeout: float = 60,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run a sh script as root inside a host, through its namespaces (not over SSH)."""
        return self._processes.sh(self.host(_name(host)), script, check, timeout, input)

    def stop_sshd(self, host: str | LabHost) -> None:
        """Kill every sshd of the host (listener and sessions): the host stops answering SSH."""
        self._processes.stop_sshd(self.host(_name(host)))

    def start_sshd(self, host: str | LabHost) -> None:
        """Start the host's sshd (if it is not running) and wait until it answers."""
        lab_host = self.host(_name(host))
        self._processes.start_sshd_if_stopped(lab_host)
        self._processes.wait_for_ssh([lab_host])

    def regenerate_host_key(self, host: str | LabHost) -> None:
        """Give the host a new host key and restart its sshd; known_hosts keeps the old key."""
        lab_host = self.host(_name(host))
        key = self._files.host_key(lab_host.name)
        key.unlink(missing_ok=True)
        public_half(key).unlink(missing_ok=True)
        keygen(self.tools(), key, f"{lab_host.name} host key")
        self.stop_sshd(lab_host)
        self.start_sshd(lab_host)

    def tools(self) -> Tools:
        if self._tools is None:
            self._tools = find_tools()
        return self._tools

    def _write_state(self) -> None:
        self._files.write_state(str(self.subnet), len(self.hosts), self.training,
                               {h.name: h.init_pid for h in self.hosts if h.init_pid is not None})


def _name(host: str | LabHost) -> str:
    return host if isinstance(host, str) else host.name
