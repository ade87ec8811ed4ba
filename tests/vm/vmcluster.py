"""The VM tier's cluster: the project's own vagrant/Vagrantfile brought up with vagrant-libvirt
(QEMU software emulation: KVM does not boot guests on this kind of machine) on a private bridge
the tests create, from a Debian 12 box built locally by vagrant/box/build-box.sh.

Nothing here touches anything it did not make: its bridge, its nftables table, libvirt domains and
volumes named with PREFIX, the libvirt daemons it started (stopped again by their pid).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
BUILD_BOX = VAGRANT_DIR / "box" / "build-box.sh"

CACHE = Path(os.environ.get("PROVISION_VM_CACHE", "/var/cache/provision-vm"))
SUBNET = os.environ.get("PROVISION_TEST_VM_SUBNET", "10.230.0")     # first three octets
BRIDGE = os.environ.get("PROVISION_TEST_VM_BRIDGE", "pvmtest-br")
PREFIX = "provision-vmtest-"          # libvirt domains and volumes of this tier
BOX_NAME = "provision-vmtest/debian12"
NFT_TABLE = "provision_vmtest"        # the host's own table: nothing from the bridge is forwarded
LIBVIRT_URI = "qemu:///system"
TRAINING_VMS = 2

TOOLS = ["qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "vagrant", "virsh",
         "libvirtd", "virtlogd", "ssh", "nft", "ip"]


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def run(argv: list[str], timeout: float = 120, check: bool = True, env: dict | None = None,
        cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}:\n"
                           f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


def virsh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(["virsh", "-c", LIBVIRT_URI, *args], check=check, timeout=timeout)


@dataclass
class Vm:
    name: str
    address: str


@dataclass
class VmCluster:
    workdir: Path                      # this session's files: vagrant state, inventory, consoles
    timings: dict[str, float] = field(default_factory=dict)
    started_daemons: list[int] = field(default_factory=list)
    vms: list[Vm] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        """The bridge's address on this machine: outside the training group."""
        return f"{SUBNET}.1"

    @property
    def inventory(self) -> Path:
        return self.workdir / "inventory.yaml"

    @property
    def key(self) -> Path:
        return CACHE / "vagrant-home" / "insecure_private_key"

    def vm(self, name: str) -> Vm:
        return next(v for v in self.vms if v.name == name)

    def env(self) -> dict[str, str]:
        """The environment every vagrant command of the tier runs with (the Vagrantfile's
        settings, see its header)."""
        return {**os.environ,
                "VAGRANT_CWD": str(VAGRANT_DIR),
                "VAGRANT_HOME": str(CACHE / "vagrant-home"),
                "VAGRANT_DOTFILE_PATH": str(self.workdir / "vagrant-state"),
                "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                "VAGRANT_CHECKPOINT_DISABLE": "1",
                "VAGRANT_NO_COLOR": "1",
                "LIBVIRT_DEFAULT_URI": LIBVIRT_URI,
                "PROVISION_VMS": str(TRAINING_VMS),
                "PROVISION_VM_BOX": BOX_NAME,
                "PROVISION_VM_SUBNET": SUBNET,
                "PROVISION_VM_MEMORY": "1024",
                "PROVISION_VM_CPUS": "1",
                "PROVISION_VM_BOOT_TIMEOUT": "900",
                "PROVISION_VM_LIBVIRT_DRIVER": "qemu",
                "PROVISION_VM_PREFIX": PREFIX,
                "PROVISION_VM_BRIDGE": BRIDGE,
                "PROVISION_VM_KERNEL": str(CACHE / "vmlinuz"),
                "PROVISION_VM_INITRD": str(CACHE / "initrd.img"),
                "PROVISION_VM_CONSOLE_DIR": str(self.workdir / "consoles"),
                "PROVISION_VM_INVENTORY": str(self.inventory)}

    def vagrant(self, *args: str, timeout: float = 900, check: bool = True):
        return run(["vagrant", *args], timeout=timeout, check=check, env=self.env())

    def timed(self, label: str, fn, *args, **kwargs):
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[label] = time.monotonic() - start

    # --- bringing it up -----------------------------------------------------------------------

    def up(self) -> None:
        self.timed("build image and box (cached)", run, [str(BUILD_BOX), str(CACHE)], timeout=900)
        self.timed("libvirt daemons", self.start_daemons)
        self.clean_leftovers()
        self.make_network()
        self.timed("vagrant box add (cached)", self.add_box)
        (self.workdir / "consoles").mkdir(parents=True, exist_ok=True)
        self.timed("vagrant up (3 VMs, parallel)", self.vagrant, "up", "--provider", "libvirt",
                   timeout=1200)
        import yaml
        hosts = yaml.safe_load(self.inventory.read_text())["all"]["hosts"]
        self.vms = [Vm(name, h["ansible_host"]) for name, h in hosts.items()]

    def start_daemons(self) -> None:
        """virtlogd and libvirtd, unless libvirtd answers already (the machine has no systemd).

        libvirtd runs in a mount namespace of its own where /dev/kvm is an inaccessible file:
        here /dev/kvm opens for root but not for libvirt's QEMU user, so libvirt probes QEMU as
        KVM-capable, then finds KVM unusable and throws its capability cache away on every
        lookup (~4 s each, dozens per `vagrant up`). KVM does not boot guests here anyway."""
        if virsh("version", check=False, timeout=60).returncode == 0:
            return
        # A character device (libvirt copies /dev/kvm into each domain's /dev): /dev/null's,
        # which no QEMU user may open and on which the KVM ioctls fail.
        nokvm = Path("/run/provision-vmtest-nokvm")
        nokvm.unlink(missing_ok=True)
        os.mknod(nokvm, 0o000 | stat.S_IFCHR, os.makedev(1, 3))
        nokvm.chmod(0)
        commands = [("virtlogd", "/run/virtlogd.pid", ["virtlogd", "-d"]),
                    ("libvirtd", "/run/libvirtd.pid",
                     ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                      f"mount --bind {nokvm} /dev/kvm 2>/dev/null; exec libvirtd -d"])]
        for daemon, pidfile, argv in commands:
            pid = Path(pidfile)
            if pid.exists() and pid.read_text().strip() and \
                    Path(f"/proc/{pid.read_text().strip()}").exists():
                continue
            pid.unlink(missing_ok=True)
            run(argv, timeout=30)
            for _ in range(100):
                if pid.exists() and pid.read_text().strip():
                    break
                time.sleep(0.1)
            self.started_daemons.append(int(pid.read_text().strip()))
        for _ in range(100):
            if virsh("version", check=False, timeout=60).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError("libvirtd started but does not answer on qemu:///system")

    def make_network(self) -> None:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.host_address}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # Whatever the machine's forwarding setting, nothing is routed from or to the bridge
        # (bridged traffic between the VMs, seen here with br_netfilter, stays allowed).
        run(["nft", "-f", "-"], input=(
            f"table inet {NFT_TABLE} {{\n"
            f"  chain forward {{ type filter hook forward priority -10; "
            f"iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" drop; "
            f"oifname \"{BRIDGE}\" iifname != \"{BRIDGE}\" drop; }}\n}}\n"))

    def add_box(self) -> None:
        """The locally built box, added once per build (VAGRANT_HOME lives in the cache)."""
        stamp = (CACHE / "stamp").read_text()
        added = CACHE / "vagrant-home" / "provision-box-stamp"
        if added.exists() and added.read_text() == stamp:
            return
        self.vagrant("box", "add", "--force", "--name", BOX_NAME,
                     str(CACHE / "provision-debian12.box"), timeout=300)
        # vagrant-libvirt's copy of the previous box image in the storage pool is stale now.
        for volume in self.pool_volumes(BOX_NAME.replace("/", "-VAGRANTSLASH-")):
            virsh("vol-delete", "--pool", "default", volume, check=False)
        added.write_text(stamp)

    # --- talking to the VMs -------------------------------------------------------------------

    def ssh(self, name: str, script: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        """`script` as root (sudo sh -c) on VM `name`, over SSH as the vagrant user."""
        return run(["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                    "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
                    f"vagrant@{self.vm(name).address}", "sudo", "sh", "-c",
                    shlex.quote(script)], check=check, timeout=timeout, input=input)

    def wait_ssh(self, name: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.ssh(name, "true", check=False, timeout=30).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(3)
        raise TimeoutError(f"{name}: no SSH within {timeout:.0f} s")

    def connects_from_host(self, name: str, port: int, timeout: float = 3) -> bool:
        """A TCP connect from this machine's bridge address (not a cluster address)."""
        try:
            with socket.create_connection((self.vm(name).address, port), timeout=timeout):
                return True
        except OSError:
            return False

    # --- taking it down -----------------------------------------------------------------------

    def pool_volumes(self, prefix: str) -> list[str]:
        done = virsh("vol-list", "--pool", "default", check=False)
        return [line.split()[0] for line in done.stdout.splitlines()[2:]
                if line.split() and line.split()[0].startswith(prefix)]

    def domains(self) -> list[str]:
        done = virsh("list", "--all", "--name", check=False)
        return [d for d in done.stdout.split() if d.startswith(PREFIX)]

    def clean_leftovers(self) -> None:
        """Domains, volumes, bridge and nft table left by an interrupted earlier session."""
        for domain in self.domains():
            pidfile = Path(f"/run/libvirt/qemu/{domain}.pid")
            virsh("destroy", domain, check=False)
            if pidfile.exists():            # libvirt could not stop it: its QEMU, by pid
                try:
                    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
            virsh("undefine", domain, "--nvram", check=False)
        if virsh("pool-info", "default", check=False).returncode == 0:
            for volume in self.pool_volumes(PREFIX):
                if "_vagrant_box_image_" not in volume:   # the box's upload: kept, a cache
                    virsh("vol-delete", "--pool", "default", volume, check=False)
        run(["ip", "link", "del", BRIDGE], check=False)
        run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)

    def down(self) -> None:
        if (self.workdir / "vagrant-state").exists():
            try:
                self.timed("vagrant destroy", self.vagrant, "destroy", "--force", timeout=300,
                           check=False)
            except subprocess.TimeoutExpired:
                pass
        self.clean_leftovers()
        for pid in reversed(self.started_daemons):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.started_daemons:
            Path("/run/provision-vmtest-nokvm").unlink(missing_ok=True)
