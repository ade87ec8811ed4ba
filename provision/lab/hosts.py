"""The lab's hosts: what each one is, and how it boots.

A host is a network namespace on the lab's bridge (its own address, no default route), plus the
mount, UTS, IPC and PID namespaces of its init (provision/lab/init.py): private overlays of /etc
/opt /var /usr /root /home, tmpfs /run /tmp /dev/shm, per-host /srv and /mnt, the lab directory
at /run/provision-lab.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.errors import LabError
from provision.lab import init
from provision.lab.files import LabFiles, keygen, sshd_config
from provision.lab.init import hosts_file, write_atomic
from provision.lab.network import LabNetwork
from provision.lab.tools import Tools

SUDO_USER = "deploy"
OVERLAY_DIRS = ("/etc", "/opt", "/var", "/usr", "/root", "/home")
# Hosts see their own version of these, so a lab directory under one would be invisible to them.
MOUNT_IN_HOST = "/run/provision-lab"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_SCRIPT = init.__file__
# Paths go into overlay mount options (',' ':' separate) and sshd_config (spaces split).
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")


@dataclass
class LabHost:
    name: str
    address: str
    init_pid: int | None = None   # as the machine sees it; None while the host is down


def check_dir(lab_dir: Path) -> None:
    """Refuse a lab directory that the hosts could not use."""
    if not SAFE_PATH.fullmatch(str(lab_dir)):
        raise LabError(f"lab directory {lab_dir} may only contain letters, digits and "
                       "'._/@+-' (it goes into mount options and sshd_config)")
    real = Path(os.path.realpath(lab_dir))
    # Under a tmpfs or bind target the lab dir is mounted back in each host (init.py); an
    # overlay's own upper layer cannot live inside that overlay, so those stay refused.
    for private in OVERLAY_DIRS:
        if real == Path(private) or Path(private) in real.parents:
            raise LabError(f"lab directory {real} is under {private}, which every lab host "
                           "replaces with its own; choose a --dir elsewhere")


def sshd_argv(sshd: str, host_dir: Path, daemon: bool) -> list[str]:
    return [sshd, *([] if daemon else ["-D"]),
            "-f", str(host_dir / "sshd_config"), "-E", str(host_dir / "sshd.log")]


def addresses(hosts: list[LabHost]) -> dict[str, str]:
    """Name -> address of each host."""
    return {h.name: h.address for h in hosts}


class HostBoot:
    """Starts a lab's hosts: their directories, their network links, their inits."""

    def __init__(self, files: LabFiles, network: LabNetwork):
        self.files = files
        self.network = network

    def start(self, tools: Tools, hosts: list[LabHost], running: list[LabHost]) -> None:
        """Boot `hosts` while the `running` ones keep running; return once each init reported."""
        if not hosts:
            return
        self.network.remove_leftovers(tools.ip, addresses(running))
        penalties = self._sshd_knows_penalties(tools)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda h: self._prepare_host_dir(tools, h, penalties), hosts))
        self.network.connect(tools.ip, addresses(hosts))
        env = {"PATH": HOST_PATH, "LANG": "C.UTF-8"}
        for host in hosts:
            directory = self.files.host_dir(host.name)
            (directory / "boot.json").unlink(missing_ok=True)
            with open(directory / "init.log", "ab") as log:
                # setsid -f: the init's parent chain leaves us at once, so no zombie stays ours.
                subprocess.run([tools.setsid, "-f", tools.nsenter,
                                f"--net=/run/netns/{self.network.netns(host.name)}", "--",
                                tools.unshare, "--mount", "--uts", "--ipc", "--pid", "--fork",
                                "--propagation", "slave", "--",
                                sys.executable, "-I", "-S", INIT_SCRIPT,
                                str(self.files.init_config(host.name))],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                               cwd="/", check=True)
        self._wait_for_boot(hosts)

    def refresh_hosts_file(self, host: LabHost, hosts: list[LabHost]) -> None:
        """Give a host that kept running the current host list."""
        path = Path(f"/proc/{host.init_pid}/root/etc/hosts")   # the host's own /etc
        text = hosts_file(addresses(hosts))
        if path.read_text() != text:
            write_atomic(path, text)

    def _prepare_host_dir(self, tools: Tools, host: LabHost, penalties: bool) -> None:
        directory = self.files.host_dir(host.name)
        for sub in ("srv", "mnt", "layers"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        key = self.files.host_key(host.name)
        if not key.exists():
            keygen(tools, key, f"{host.name} host key")
        write_atomic(directory / "sshd_config",
                     sshd_config(host.name, host.address, key, penalties))
        config = {
            "hostname": host.name,
            "overlays": [[d, str(directory / "layers" / d[1:] / "upper"),
                          str(directory / "layers" / d[1:] / "work")] for d in OVERLAY_DIRS],
            # The controller's Python environment stays usable in the hosts (the tests run
            # torchrun from it), wherever the checkout lies.
            "visible": [str(self.files.dir.resolve()), os.path.realpath(sys.prefix)],
            "binds": [[str(directory / "srv"), "/srv"], [str(directory / "mnt"), "/mnt"],
                      [str(self.files.dir), MOUNT_IN_HOST]],
            "hosts_json": str(self.files.hosts_json_path),
            "boot_file": str(directory / "boot.json"),
            "user": SUDO_USER,
            "password_file": str(self.files.sudo_password_path),
            "authorized_key": self.files.public_key(),
            "useradd": tools.useradd, "usermod": tools.usermod, "chpasswd": tools.chpasswd,
            "sshd_argv": sshd_argv(tools.sshd, directory, daemon=False),
        }
        write_atomic(self.files.init_config(host.name), json.dumps(config, indent=1), 0o600)

    def _sshd_knows_penalties(self, tools: Tools) -> bool:
        """Whether this sshd has PerSourcePenalties (OpenSSH >= 9.8), by testing a config."""
        probe = self.files.dir / "sshd_probe_config"
        probe.write_text(f"HostKey {self.files.key_path}\nPerSourcePenalties no\n")
        done = subprocess.run([tools.sshd, "-t", "-f", str(probe)], capture_output=True,
                              check=False)
        probe.unlink()
        return done.returncode == 0

    def _wait_for_boot(self, hosts: list[LabHost]) -> None:
        pending = {h.name: h for h in hosts}
        errors = []
        deadline = time.monotonic() + 30 + 0.5 * len(hosts)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                boot_file = self.files.host_dir(name) / "boot.json"
                if boot_file.exists():
                    report = json.loads(boot_file.read_text())
                    pending.pop(name).init_pid = report["pid"]
                    if "error" in report:
                        errors.append(f"{name}: {report['error']}")
            time.sleep(0.02)
        errors += [f"{name}: did not boot; {self.files.log_tail(name, 'init.log')}"
                   for name in pending]
        if errors:
            raise LabError(f"lab {self.files.name}: hosts failed to start (see {self.files.dir}/"
                           "hosts/*/init.log; `provision lab down` cleans up):\n  "
                           + "\n  ".join(errors))
