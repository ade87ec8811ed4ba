"""provision as a user installs it (issues 10 and 11): the wheel built from this checkout, in a
fresh venv outside it, provisions the lab from an INI inventory with a host range, group_vars/
and host_vars/: the shipped roles are listed, setup runs twice (the second changes nothing),
check says ready, and train runs on every node in the inventory's order."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
MOUNT_NFS = TESTS / "doubles" / "mount.nfs"
SMOKE = REPO / "examples" / "ddp_smoke.py"
ROLES = ("preflight", "nvidia", "ntp", "firewall", "nfs", "conda")


def user_venv(where: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel and its dependencies, and nothing of this checkout."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                   check=True, timeout=600)
    return where / "bin" / "provision"


def ini_inventory(lab, directory: Path, installer: Path) -> Path:
    """hosts (INI: the training hosts as one range), group_vars/all.yml, host_vars/ with each
    host's address, as an ops team's Ansible inventory is laid out."""
    names = [h.name for h in lab.hosts]
    prefix = names[0].rstrip("0123456789")
    assert names == [f"{prefix}{i}" for i in range(1, len(names) + 1)], names
    lab_vars = yaml.safe_load(lab.inventory_path.read_text())["all"]["vars"]
    server = lab.hosts[0]
    (directory / "group_vars").mkdir(parents=True)
    (directory / "host_vars").mkdir()
    (directory / "hosts").write_text(
        f"[training]\n{prefix}[1:{len(names)}]\n\n"
        "[all:vars]\nansible_user=root\ngpus=0\n")
    (directory / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "ansible_ssh_private_key_file": lab_vars["ansible_ssh_private_key_file"],
        "ssh_known_hosts": lab_vars["ssh_known_hosts"],
        "ntp_servers": [server.address], "ntp_chronyd_options": ["-x"],
        "nfs_server": server.address, "nfs_export": "/srv/export",
        "nfs_mount_point": "/mnt/shared",
        "conda_installer_path": str(installer),
        "conda_installer_sha256": hashlib.sha256(installer.read_bytes()).hexdigest()}))
    for host in lab.hosts:
        own = {"ansible_host": host.address}
        if host is server:
            own.update({"ntp_local_stratum": 8, "ntp_allow": [str(lab.subnet)]})
        (directory / "host_vars" / f"{host.name}.yml").write_text(yaml.safe_dump(own))
    return directory / "hosts"


def test_a_wheel_in_a_fresh_venv_provisions_the_lab_from_an_ini_inventory(
        scratch_lab, built_wheel, tmp_path, installer_double):
    provision = user_venv(tmp_path / "venv", built_wheel)
    workdir = tmp_path / "work"          # nowhere near the checkout
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(provision), *map(str, args)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)

    where = subprocess.run([str(provision.parent / "python"), "-c",
                            "import provision; print(provision.__file__)"],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True)
    installed = Path(where.stdout.strip())
    assert tmp_path / "venv" in installed.parents and REPO not in installed.parents

    roles = run("roles")
    assert roles.returncode == 0, roles.stderr
    assert re.findall(r"^(\w+):", roles.stdout, re.M)[:len(ROLES)] == list(ROLES), roles.stdout

    lab = scratch_lab.up(3)
    lab.sh(lab.hosts[0].name, "mkdir -p /srv/export")
    for host in lab.hosts:  # the kernel NFS client cannot run here: see tests/doubles/mount.nfs
        lab.sh(host.name, "cat > /usr/sbin/mount.nfs && chmod 755 /usr/sbin/mount.nfs",
               input=MOUNT_NFS.read_text())
    inventory = ini_inventory(lab, tmp_path / "inventory", installer_double)

    first = run("setup", inventory)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed=" in first.stdout
    second = run("setup", inventory)
    assert second.returncode == 0, second.stdout + second.stderr
    for host in lab.hosts:
        assert re.search(rf"^{host.name}\s.*changed=0\b", second.stdout, re.M), second.stdout
    check = run("check", inventory)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(lab.hosts)}/{len(lab.hosts)} host(s) ready" in check.stdout

    train = run("train", "-i", inventory, "--runs-dir", tmp_path / "runs", SMOKE, "--steps", "3")
    assert train.returncode == 0, train.stdout + train.stderr
    # Ranks follow the inventory's order: the range expanded in order.
    seen = dict(re.findall(r"^(\S+)\[\d+\] +\| ddp_smoke rank=(\d) .*allreduce=OK", train.stdout,
                           re.M))
    assert seen == {h.name: str(i) for i, h in enumerate(lab.hosts)}, train.stdout
