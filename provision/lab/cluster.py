"""The local lab cluster: N hosts on this machine, each a set of namespaces with a real sshd.

A host is a network namespace on the lab's bridge (its own address, no default route), plus the
mount, UTS, IPC and PID namespaces of its init (provision/lab/init.py): private overlays of /etc
/opt /var /usr /root /home, tmpfs /run /tmp /dev/shm, per-host /srv and /mnt, the lab directory
at /run/provision-lab. Everything the lab keeps lives in its directory:

    id_ed25519[.pub]   the key that logs in as root or deploy (kept by `down`)
    sudo_password      deploy's sudo password (0600; never in the inventory)
    inventory.yaml, known_hosts, hosts.json (name -> address), lab.json (state)
    hosts/<name>/      init.json, boot.json, init.log, sshd_config, sshd.log, host keys,
                       layers/<dir>/{upper,work}, srv/, mnt/
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provision.errors import LabError
from provision.lab import files as lab_files
from provision.lab import init as lab_init
from provision.lab import network as lab_net
from provision.lab import processes as lab_procs
from provision.lab.tools import Tools, find_tools

DEFAULT_NAME = "plab"
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_HOSTS = 3
FIRST_HOST_OFFSET = 11        # hosts are .11, .12, ...; the bridge (the controller) is .1
SUDO_USER = "deploy"
OVERLAY_DIRS = ("/etc", "/opt", "/var", "/usr", "/root", "/home")
# Hosts see their own version of these, so a lab directory under one would be invisible to them.
MOUNT_IN_HOST = "/run/provision-lab"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_SCRIPT = lab_init.__file__
# Interface names are at most 15 characters: "<name>-v<3 digits>" must fit.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{0,9}")
# Paths go into overlay mount options (',' ':' separate) and sshd_config (spaces split).
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
# OpenSSH >= 9.8 runs sessions as sshd-session and sshd-auth below the sshd listener.
SSHD_PROCESS_NAMES = ("sshd", "sshd-session", "sshd-auth")
RUNTIME_FILES = ("hosts", "lab.json", "inventory.yaml", "known_hosts", "hosts.json",
                 "sudo_password", "sshd_probe_config")


@dataclass
class LabHost:
    name: str
    address: str
    init_pid: int | None = None   # as the machine sees it; None while the host is down


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
        state = self._read_state()
        recorded = state.get("subnet")
        if recorded and subnet and _network(subnet) != _network(recorded):
            raise LabError(f"lab {name} in {self.dir} uses subnet {recorded}, not {subnet}; "
                           "run `provision lab down` first to change it")
        self.subnet = _network(recorded or subnet or DEFAULT_SUBNET)
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
        return self.dir / "inventory.yaml"

    @property
    def key_path(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def sudo_password_path(self) -> Path:
        return self.dir / "sudo_password"

    @property
    def hosts_json_path(self) -> Path:
        return self.dir / "hosts.json"

    @property
    def state_path(self) -> Path:
        return self.dir / "lab.json"

    @property
    def bridge(self) -> str:
        return lab_net.bridge_name(self.name)

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"lab {self.name} has no host {name!r} "
                       f"(hosts: {', '.join(h.name for h in self.hosts) or 'none, it is down'})")

    def _host(self, index: int, pids: dict[str, int]) -> LabHost:
        name = f"{self.host_prefix}{index + 1}"
        return LabHost(name, str(self.subnet.network_address + FIRST_HOST_OFFSET + index),
                       pids.get(name))

    def _netns(self, host: LabHost) -> str:
        return lab_net.netns_name(self.name, host.name)

    def _veth(self, host: LabHost) -> str:
        index = int(ipaddress.ip_address(host.address)) - int(self.subnet.network_address)
        return lab_net.veth_name(self.name, index - FIRST_HOST_OFFSET + 1)

    # -- public operations ----------------------------------------------------------------------

    def up(self, hosts: int = DEFAULT_HOSTS, training: int | None = None) -> Lab:
        """Make hosts 1..max(hosts, current count) run; start only those that are not running.

        `training`: how many of the first hosts form the inventory's `training` group (default:
        what the lab had, else all).
        """
        tools = self.tools()
        self._check_dir()
        capacity = min(self.subnet.num_addresses - FIRST_HOST_OFFSET - 1, 999)
        if not 1 <= hosts <= capacity:
            raise LabError(f"--hosts must be between 1 and {capacity} for subnet {self.subnet}")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._read_state()
            count = max(hosts, state.get("hosts", 0))
            training = training if training is not None else state.get("training")
            if training is not None and not 1 <= training <= count:
                raise LabError(f"the training group must have 1 to {count} hosts, not {training}")
            lab_net.check_subnet_free(tools.ip, self.subnet, self.bridge)
            lab_net.ensure_bridge(tools.ip, self.bridge, f"{self.subnet.network_address + 1}/"
                                  f"{self.subnet.prefixlen}", lab_net.bridge_alias(self.dir))
            self.training = training
            self.hosts = [self._host(i, {}) for i in range(count)]
            self._write_state()   # before any host exists, so that `down` finds them all
            self._ensure_credentials(tools)
            running = self._running_inits()
            for host in self.hosts:
                host.init_pid = running.get(host.name)
            lab_files.write_atomic(self.hosts_json_path,
                                   json.dumps({h.name: h.address for h in self.hosts}, indent=1))
            starting = [h for h in self.hosts if h.init_pid is None]
            self._boot(tools, starting)
            for host in self.hosts:
                if host not in starting:
                    self._refresh_running_host(host)
            self._wait_for_ssh(self.hosts)
            self._write_client_files()
            self._write_state()
        return self

    def down(self) -> None:
        """Stop every host and remove the lab's namespaces, interfaces and runtime files.

        Keeps the lab's login key pair, so a later `up` accepts the same key.
        """
        tools = self.tools()
        with self._locked():
            inits = self._running_inits()
            # TERM lets each init stop its host; ending PID 1 ends everything in the host.
            stuck = lab_procs.stop(inits.values(), grace=5)
            stuck += lab_procs.wait_gone(self._processes_of_lab(), 5)
            if stuck:
                raise LabError(f"lab {self.name}: processes {stuck} did not stop")
            bridge_owner = lab_net.links(tools.ip).get(self.bridge)
            if bridge_owner in (None, lab_net.bridge_alias(self.dir)):
                stale_netns, stale_veths = lab_net.leftovers(tools.ip, self.name, self.host_prefix)
                lab_net.remove(tools.ip, sorted(set(stale_netns) |
                                                {self._netns(h) for h in self.hosts}),
                               stale_veths, self.bridge)
            for name in RUNTIME_FILES:
                path = self.dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            self.hosts = []

    def status(self) -> list[HostStatus]:
        self.tools()
        running = self._running_inits()
        with ThreadPoolExecutor(max_workers=32) as pool:
            reachable = list(pool.map(lambda h: ssh_answers(h.address, 1.0), self.hosts))
        result = []
        for host, answers in zip(self.hosts, reachable):
            host.init_pid = running.get(host.name)
            result.append(HostStatus(host.name, host.address, host.init_pid,
                                     self._sshd_listener(host) is not None, answers))
        return result

    def sh(self, host: str | LabHost, script: str, check: bool = True, timeout: float = 60,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run a sh script as root inside a host, through its namespaces (not over SSH)."""
        pid = self._init_pid(host)
        argv = [self.tools().nsenter, "--target", str(pid), "--net", "--mount", "--uts", "--ipc",
                "--pid", "--", "/bin/sh", "-c", script]
        env = {"PATH": HOST_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
               "LANG": "C.UTF-8"}
        # A session of its own, so a timeout can kill the script's whole process group.
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, cwd="/",
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise LabError(f"{_name(host)}: script timed out after {timeout} s: {script[:200]}")
        done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if check and done.returncode != 0:
            raise LabError(f"{_name(host)}: script exited {done.returncode}: {script[:200]}\n"
                           f"{stderr.strip()[-2000:]}")
        return done

    def stop_sshd(self, host: str | LabHost) -> None:
        """Kill every sshd of the host (listener and sessions): the host stops answering SSH."""
        pid = self._init_pid(host)
        sshds = lab_procs.in_namespace_of(pid, SSHD_PROCESS_NAMES)
        lab_procs.signal_all(sshds, signal.SIGKILL)
        if lab_procs.wait_gone(sshds, 5):
            raise LabError(f"{_name(host)}: sshd did not stop")

    def start_sshd(self, host: str | LabHost) -> None:
        """Start the host's sshd (if it is not running) and wait until it answers."""
        lab_host = self.host(_name(host))
        self._start_sshd_if_stopped(lab_host)
        self._wait_for_ssh([lab_host])

    def regenerate_host_key(self, host: str | LabHost) -> None:
        """Give the host a new host key and restart its sshd; known_hosts keeps the old key."""
        lab_host = self.host(_name(host))
        key = self.host_dir(lab_host.name) / "ssh_host_ed25519_key"
        key.unlink(missing_ok=True)
        key.with_name(key.name + ".pub").unlink(missing_ok=True)
        self._keygen(self.tools(), key, f"{lab_host.name} host key")
        self.stop_sshd(lab_host)
        self.start_sshd(lab_host)

    def tools(self) -> Tools:
        if self._tools is None:
            self._tools = find_tools()
        return self._tools

    # -- bringing hosts up ----------------------------------------------------------------------

    def _boot(self, tools: Tools, hosts: list[LabHost]) -> None:
        """Start the inits of hosts that are not running, from fresh network pieces."""
        if not hosts:
            return
        # Pieces of a crashed run: those of the hosts to start, and of hosts the lab no longer has.
        stale_netns, stale_veths = lab_net.leftovers(tools.ip, self.name, self.host_prefix)
        running = [h for h in self.hosts if h not in hosts]
        keep = {self._netns(h) for h in running} | {self._veth(h) for h in running}
        lab_net.remove(tools.ip, [n for n in stale_netns if n not in keep],
                       [v for v in stale_veths if v not in keep])
        penalties = self._sshd_knows_penalties(tools)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda h: self._prepare_host_dir(tools, h, penalties), hosts))
        prefix = f"/{self.subnet.prefixlen}"
        lab_net.add_hosts(tools.ip, self.bridge, [
            lab_net.HostLink(self._netns(h), self._veth(h), h.address + prefix) for h in hosts])
        env = {"PATH": HOST_PATH, "LANG": "C.UTF-8"}
        for host in hosts:
            directory = self.host_dir(host.name)
            (directory / "boot.json").unlink(missing_ok=True)
            with open(directory / "init.log", "ab") as log:
                # setsid -f: the init's parent chain leaves us at once, so no zombie stays ours.
                subprocess.run([tools.setsid, "-f", tools.nsenter,
                                f"--net=/run/netns/{self._netns(host)}", "--",
                                tools.unshare, "--mount", "--uts", "--ipc", "--pid", "--fork",
                                "--propagation", "slave", "--",
                                sys.executable, "-I", "-S", INIT_SCRIPT,
                                str(directory / "init.json")],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                               cwd="/", check=True)
        self._wait_for_boot(hosts)

    def _prepare_host_dir(self, tools: Tools, host: LabHost, penalties: bool) -> None:
        directory = self.host_dir(host.name)
        for sub in ("srv", "mnt", "layers"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        key = directory / "ssh_host_ed25519_key"
        if not key.exists():
            self._keygen(tools, key, f"{host.name} host key")
        lab_files.write_atomic(directory / "sshd_config",
                               lab_files.sshd_config(host.name, host.address, key, penalties))
        config = {
            "hostname": host.name,
            "overlays": [[d, str(directory / "layers" / d[1:] / "upper"),
                          str(directory / "layers" / d[1:] / "work")] for d in OVERLAY_DIRS],
            # The controller's Python environment stays usable in the hosts (the tests run
            # torchrun from it), wherever the checkout lies.
            "visible": [str(self.dir.resolve()), os.path.realpath(sys.prefix)],
            "binds": [[str(directory / "srv"), "/srv"], [str(directory / "mnt"), "/mnt"],
                      [str(self.dir), MOUNT_IN_HOST]],
            "hosts_json": str(self.hosts_json_path),
            "boot_file": str(directory / "boot.json"),
            "user": SUDO_USER,
            "password_file": str(self.sudo_password_path),
            "authorized_key": self._public_key(),
            "useradd": tools.useradd, "usermod": tools.usermod, "chpasswd": tools.chpasswd,
            "sshd_argv": self._sshd_argv(host, daemon=False),
        }
        lab_files.write_atomic(directory / "init.json", json.dumps(config, indent=1), 0o600)

    def _sshd_argv(self, host: LabHost, daemon: bool) -> list[str]:
        directory = self.host_dir(host.name)
        return [self.tools().sshd, *([] if daemon else ["-D"]),
                "-f", str(directory / "sshd_config"), "-E", str(directory / "sshd.log")]

    def _wait_for_boot(self, hosts: list[LabHost]) -> None:
        pending = {h.name: h for h in hosts}
        errors = []
        deadline = time.monotonic() + 30 + 0.5 * len(hosts)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                boot_file = self.host_dir(name) / "boot.json"
                if boot_file.exists():
                    report = json.loads(boot_file.read_text())
                    pending.pop(name).init_pid = report["pid"]
                    if "error" in report:
                        errors.append(f"{name}: {report['error']}")
            time.sleep(0.02)
        errors += [f"{name}: did not boot; {self._log_tail(name, 'init.log')}" for name in pending]
        if errors:
            raise LabError(f"lab {self.name}: hosts failed to start (see {self.dir}/hosts/*/"
                           "init.log; `provision lab down` cleans up):\n  " + "\n  ".join(errors))

    def _wait_for_ssh(self, hosts: list[LabHost]) -> None:
        def wait(host: LabHost) -> str | None:
            deadline = time.monotonic() + 20 + 0.2 * len(hosts)
            while time.monotonic() < deadline:
                if ssh_answers(host.address, 1.0):
                    return None
                time.sleep(0.05)
            return f"{host.name} ({host.address}): sshd does not answer; " \
                   f"{self._log_tail(host.name, 'sshd.log')}"

        with ThreadPoolExecutor(max_workers=32) as pool:
            errors = [e for e in pool.map(wait, hosts) if e]
        if errors:
            raise LabError(f"lab {self.name}:\n  " + "\n  ".join(errors))

    def _refresh_running_host(self, host: LabHost) -> None:
        """A host that kept running: give it the current host list and make sure sshd is started."""
        hosts_file = Path(f"/proc/{host.init_pid}/root/etc/hosts")   # the host's own /etc
        text = lab_init.hosts_file({h.name: h.address for h in self.hosts})
        if hosts_file.read_text() != text:
            lab_files.write_atomic(hosts_file, text)
        self._start_sshd_if_stopped(host)

    def _start_sshd_if_stopped(self, host: LabHost) -> None:
        if not self._sshd_listener(host):
            # Daemonized, it is re-parented to the host's init like the sshd the init started.
            self.sh(host, shlex.join(self._sshd_argv(host, daemon=True)))

    def _ensure_credentials(self, tools: Tools) -> None:
        if not self.key_path.exists():
            self._keygen(tools, self.key_path, f"provision lab {self.name}")
        if not self.sudo_password_path.exists():
            lab_files.write_atomic(self.sudo_password_path, secrets.token_urlsafe(18) + "\n",
                                   0o600)

    def _keygen(self, tools: Tools, path: Path, comment: str) -> None:
        done = subprocess.run([tools.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                               "-f", str(path)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise LabError(f"ssh-keygen for {path} failed: {done.stderr.strip()}")

    def _sshd_knows_penalties(self, tools: Tools) -> bool:
        """Whether this sshd has PerSourcePenalties (OpenSSH >= 9.8), by testing a config."""
        probe = self.dir / "sshd_probe_config"
        probe.write_text(f"HostKey {self.key_path}\nPerSourcePenalties no\n")
        done = subprocess.run([tools.sshd, "-t", "-f", str(probe)], capture_output=True,
                              check=False)
        probe.unlink()
        return done.returncode == 0

    def _write_client_files(self) -> None:
        public = {h.address: (self.host_dir(h.name) / "ssh_host_ed25519_key.pub").read_text()
                  for h in self.hosts}
        lab_files.write_atomic(self.known_hosts_path, lab_files.known_hosts(public))
        lab_files.write_atomic(self.inventory_path, lab_files.inventory(
            self.name, {h.name: h.address for h in self.hosts}, self.training or len(self.hosts),
            self.key_path, self.known_hosts_path, str(self.subnet)))

    # -- state, processes, checks ---------------------------------------------------------------

    def _public_key(self) -> str:
        return self.key_path.with_name(self.key_path.name + ".pub").read_text().strip()

    def _running_inits(self) -> dict[str, int]:
        """Host name -> machine PID of each init of this lab directory that runs now."""
        configs = {str(self.host_dir(h.name) / "init.json"): h.name for h in self.hosts}
        hosts_dir = str(self.dir / "hosts") + "/"
        found = {}
        for pid in lab_procs.pids():
            argv = lab_procs.cmdline(pid)
            if argv[-2:-1] == [INIT_SCRIPT] and argv[-1].startswith(hosts_dir) \
                    and lab_procs.is_namespace_init(pid) and lab_procs.alive(pid):
                found[configs.get(argv[-1], argv[-1])] = pid
        return found

    def _processes_of_lab(self) -> list[int]:
        """Every process whose command line names this lab's host directories."""
        hosts_dir = str(self.dir / "hosts") + "/"
        return [pid for pid in lab_procs.pids()
                if any(arg.startswith(hosts_dir) for arg in lab_procs.cmdline(pid))]

    def _sshd_listener(self, host: LabHost) -> int | None:
        """The host's listening sshd: the one its init is the parent of (sessions are below it)."""
        if host.init_pid is None:
            return None
        for pid in lab_procs.in_namespace_of(host.init_pid, ["sshd"]):
            if (lab_procs.comm_and_parent(pid) or ("", 0))[1] == host.init_pid:
                return pid
        return None

    def _init_pid(self, host: str | LabHost) -> int:
        """The running init of the host (looked up again if another `up` restarted it)."""
        lab_host = self.host(_name(host))
        config = str(self.host_dir(lab_host.name) / "init.json")
        pid = lab_host.init_pid
        if pid is None or not lab_procs.alive(pid) or lab_procs.cmdline(pid)[-1:] != [config]:
            pid = lab_host.init_pid = self._running_inits().get(lab_host.name)
        if pid is None:
            raise LabError(f"lab host {lab_host.name} is not running; run `provision lab up`")
        return pid

    def _check_dir(self) -> None:
        if not SAFE_PATH.fullmatch(str(self.dir)):
            raise LabError(f"lab directory {self.dir} may only contain letters, digits and "
                           "'._/@+-' (it goes into mount options and sshd_config)")
        real = Path(os.path.realpath(self.dir))
        # Under a tmpfs or bind target the lab dir is mounted back in each host (lab_init); an
        # overlay's own upper layer cannot live inside that overlay, so those stay refused.
        for private in OVERLAY_DIRS:
            if real == Path(private) or Path(private) in real.parents:
                raise LabError(f"lab directory {real} is under {private}, which every lab host "
                               "replaces with its own; choose a --dir elsewhere")

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read lab state {self.state_path}: {exc}") from exc
        if state.get("name") != self.name:
            raise LabError(f"{self.dir} holds lab {state.get('name')!r}, not {self.name!r}")
        return state

    def _write_state(self) -> None:
        lab_files.write_atomic(self.state_path, json.dumps({
            "name": self.name, "subnet": str(self.subnet), "hosts": len(self.hosts),
            "training": self.training,
            "init_pids": {h.name: h.init_pid for h in self.hosts if h.init_pid is not None},
        }, indent=1))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up` or `down` at a time per lab directory (none to lock where it does not exist)."""
        if not self.dir.is_dir():
            yield
            return
        with open(self.dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _log_tail(self, host: str, log: str) -> str:
        path = self.host_dir(host) / log
        try:
            lines = path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return f"no {path}"
        return f"{path}: " + (" | ".join(lines) if lines else "(empty)")


def ssh_answers(address: str, timeout: float) -> bool:
    """True when something on address:22 sends an SSH banner."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _network(text: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(text)
    except ValueError as exc:
        raise LabError(f"subnet {text!r} is not a network address: {exc}") from exc
    if network.version != 4 or not network.is_private or network.prefixlen > 28:
        raise LabError(f"subnet {text} must be a private IPv4 network of at least /28 "
                       "(e.g. 10.213.0.0/24)")
    return network


def _name(host: str | LabHost) -> str:
    return host if isinstance(host, str) else host.name
