"""The whole product on a fresh lab, as the README's demo runs it: setup with every role, a
second setup with nothing to change in one round trip per host, check, then train."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parents[1]
MOUNT_NFS = TESTS / "doubles" / "mount.nfs"
SMOKE = TESTS.parent / "examples" / "ddp_smoke.py"


def test_setup_twice_check_and_train(scratch_lab, cli, tmp_path, installer_double):
    lab = scratch_lab.up(3)
    server = lab.hosts[0]
    lab.sh(server.name, "mkdir -p /srv/export")
    for host in lab.hosts:  # the kernel NFS client cannot run here: see tests/doubles/mount.nfs
        lab.sh(host.name, "cat > /usr/sbin/mount.nfs && chmod 755 /usr/sbin/mount.nfs",
               input=MOUNT_NFS.read_text())
    data = yaml.safe_load(lab.inventory_path.read_text())
    data["all"]["vars"].update({
        "nfs_server": server.address, "nfs_export": "/srv/export",
        "nfs_mount_point": "/mnt/shared",
        "conda_installer_path": str(installer_double),
        "conda_installer_sha256": hashlib.sha256(installer_double.read_bytes()).hexdigest()})
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(data))

    first = cli("setup", inventory, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli("setup", inventory, "--json")
    report = json.loads(second.stdout)
    assert second.returncode == 0
    roles_run = {t["role"] for h in report["hosts"] for t in h["tasks"]
                 if t["status"] == "ok"}
    assert roles_run >= {"preflight", "ntp", "firewall", "nfs", "conda"}
    for host in report["hosts"]:
        assert host["counts"]["changed"] == 0, host
        assert host["round_trips"] == 1, host

    check = cli("check", inventory)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(lab.hosts)}/{len(lab.hosts)} host(s) ready" in check.stdout

    # Files written on one node are on the others: the share is mounted everywhere.
    lab.sh(lab.hosts[1].name, "echo from-2 > /mnt/shared/flow")
    assert lab.sh(lab.hosts[2].name, "cat /mnt/shared/flow").stdout == "from-2\n"

    train = cli("train", "-i", inventory, "--runs-dir", tmp_path / "runs", SMOKE,
                "--steps", "3")
    assert train.returncode == 0, train.stdout + train.stderr
    ranks = sorted(re.findall(r"ddp_smoke rank=(\d) .*allreduce=OK", train.stdout))
    assert ranks == [str(i) for i in range(len(lab.hosts))]
