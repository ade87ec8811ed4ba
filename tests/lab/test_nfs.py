"""The nfs role on real lab hosts over SSH: the first host's /srv/export is the share, the three
training hosts mount it on /mnt/shared (a lab host's / is the machine's, its /mnt its own)
with tests/doubles/mount.nfs standing in for the kernel NFS client (installed in each host's
private /usr/sbin). Every effect is checked from inside the hosts (lab.sh), and each test leaves
the hosts as it found them."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from pathlib import Path

import pytest

DOUBLE = Path(__file__).resolve().parents[1] / "doubles" / "mount.nfs"
HELPER = "/usr/sbin/mount.nfs"
SAVED_HELPER = "/usr/sbin/.mount.nfs.before-nfs-tests"
EXPORT = "/srv/export"
FSTAB = "/etc/fstab"
BACKUP = "/etc/fstab.provision-backup"
MP = "/mnt/shared"


@pytest.fixture(scope="module")
def hosts(lab):
    """(server, clients): the double installed on the clients and the export made on the server;
    all undone at the end."""
    server, clients = lab.hosts[0], lab.hosts[:3]
    lab.sh(server, f"mkdir {EXPORT}")
    for host in clients:
        lab.sh(host, f"if [ -e {HELPER} ]; then cp -a {HELPER} {SAVED_HELPER}; fi; "
                     f"cat > {HELPER}; chmod 755 {HELPER}", input=DOUBLE.read_text())
    try:
        yield server, clients
    finally:
        for host in clients:
            lab.sh(host, f"if [ -e {SAVED_HELPER} ]; then mv -f {SAVED_HELPER} {HELPER}; "
                         f"else rm -f {HELPER}; fi; "
                         f"rm -rf /run/provision-lab/hosts/{host.name}/mount.nfs")
        lab.sh(server, f"rm -rf {EXPORT}")


@pytest.fixture
def restore(lab, hosts):
    """Each client's fstab (and backup) as before the test; the share unmounted, its mount point
    removed."""
    _, clients = hosts
    saved = {h.name: (lab.sh(h, f"cat {FSTAB}").stdout,
                      lab.sh(h, f"[ -e {BACKUP} ]", check=False).returncode == 0)
             for h in clients}
    yield saved
    for host in clients:
        text, had_backup = saved[host.name]
        lab.sh(host, f"if findmnt --mountpoint {MP} >/dev/null; then umount {MP}; fi; "
                     f"if [ -d {MP} ]; then rmdir {MP}; fi; cat > {FSTAB}"
                     + ("" if had_backup else f"; rm -f {BACKUP}"), input=text)


def fstab_sha(lab, host) -> str:
    return hashlib.sha256(lab.sh(host, f"cat {FSTAB}").stdout.encode()).hexdigest()


def mount_of(lab, host) -> dict | None:
    done = lab.sh(host, f"findmnt -J -o SOURCE,TARGET --mountpoint {MP}", check=False)
    return json.loads(done.stdout)["filesystems"][0] if done.returncode == 0 else None


def run(cli, inventory, *extra) -> tuple[int, dict[str, dict]]:
    done = cli("setup", inventory, "--role", "nfs", "--json", *extra)
    report = json.loads(done.stdout)
    return done.returncode, {h["host"]: h for h in report["hosts"]}


def tasks(result: dict) -> dict[str, dict]:
    return {t["task"]: t for t in result["tasks"]}


def test_check_on_fresh_hosts_reports_and_changes_nothing(lab, hosts, restore, make_inventory,
                                                         cli):
    server, clients = hosts
    names = [h.name for h in clients]
    before = {h.name: fstab_sha(lab, h) for h in clients}
    inventory = make_inventory(vars={"nfs_server": server.name, "nfs_mount_point": MP},
                               hosts=names)
    code, results = run(cli, inventory, "--check")
    assert code == 0
    for host in clients:
        mine = tasks(results[host.name])
        assert mine["mounted"]["status"] == "changed"
        assert mine["fstab entry"]["status"] == "changed"
        assert f"+{server.name}:{EXPORT} {MP} nfs _netdev,nofail,noatime 0 0" in \
            mine["fstab entry"]["diff"].splitlines()
        assert mine["same files on every host"]["status"] == "skipped"
        assert fstab_sha(lab, host) == before[host.name]
        assert lab.sh(host, f"[ ! -e {MP} ] && [ ! -e {BACKUP} ]", check=False).returncode == 0
    assert lab.sh(server, f"ls -A {EXPORT}").stdout == "", "no sentinel file, even for a moment"


def test_setup_mounts_the_share_everywhere_then_changes_nothing(lab, hosts, restore,
                                                                make_inventory, cli):
    server, clients = hosts
    inventory = make_inventory(vars={"nfs_server": server.name, "nfs_mount_point": MP},
                               hosts=[h.name for h in clients])
    code, results = run(cli, inventory)
    assert code == 0, results
    for host in clients:
        assert mount_of(lab, host) == {"source": f"{server.name}:{EXPORT}", "target": MP}
        entries = [line for line in lab.sh(host, f"cat {FSTAB}").stdout.splitlines()
                   if line.split()[1:2] == [MP]]
        assert entries == [f"{server.name}:{EXPORT} {MP} nfs _netdev,nofail,noatime 0 0"]
        assert lab.sh(host, f"cat {BACKUP}").stdout == restore[host.name][0]
        assert tasks(results[host.name])["same files on every host"]["status"] == "ok"
    assert lab.sh(server, f"ls -A {EXPORT}").stdout == "", "the sentinel file was removed"

    writer, reader = clients[1], clients[2]
    lab.sh(writer, f"echo written-on-$(hostname) > {MP}/hello")
    assert lab.sh(reader, f"cat {MP}/hello").stdout == f"written-on-{writer.name}\n"
    assert lab.sh(server, f"cat {EXPORT}/hello").stdout == f"written-on-{writer.name}\n"
    lab.sh(server, f"rm {EXPORT}/hello")

    code, again = run(cli, inventory)
    assert code == 0
    for host in clients:
        assert again[host.name]["counts"]["changed"] == 0, again[host.name]
        assert again[host.name]["round_trips"] == 1


def test_wrong_server_fails_per_host_and_leaves_fstab_as_it_was(lab, hosts, restore,
                                                              make_inventory, cli):
    _, clients = hosts
    nowhere = str(ipaddress.ip_address(clients[0].address) + 200)   # in the lab, nobody there
    host_vars = {clients[0].name: {"nfs_server": "nfs-nowhere.invalid", "nfs_mount_point": MP},
                 clients[1].name: {"nfs_server": nowhere, "nfs_mount_point": MP}}
    before = {h.name: fstab_sha(lab, h) for h in clients[:2]}
    code, results = run(cli, make_inventory(hosts=[h.name for h in clients[:2]],
                                            host_vars=host_vars))
    assert code == 3
    expected = {clients[0].name: "mount.nfs: Failed to resolve server nfs-nowhere.invalid: "
                                 "Name or service not known",
                clients[1].name: "mount.nfs: Connection timed out"}
    for host in clients[:2]:
        failed = tasks(results[host.name])["mounted"]
        assert failed["status"] == "failed"
        assert expected[host.name] in failed["message"]
        assert "/etc/fstab was not changed: check nfs_server and nfs_export" in failed["message"]
        assert "fstab entry" not in tasks(results[host.name])
        assert fstab_sha(lab, host) == before[host.name]
        assert lab.sh(host, f"[ ! -e {MP} ] && [ ! -e {BACKUP} ]", check=False).returncode == 0


def test_old_fstab_entry_is_fixed_but_a_live_mount_from_elsewhere_is_refused(
        lab, hosts, restore, make_inventory, cli):
    server, clients = hosts
    fixed, busy = clients[1], clients[2]
    lab.sh(server, f"mkdir {EXPORT}-old")
    try:
        old = f"{server.name}:{EXPORT}-old {MP} nfs rw 0 0\n"
        for host in (fixed, busy):
            lab.sh(host, f"cat >> {FSTAB}", input=old + "# keep me\n" + old)
        lab.sh(busy, f"mkdir {MP} && mount {MP}")
        busy_sha = fstab_sha(lab, busy)
        inventory = make_inventory(vars={"nfs_server": server.name, "nfs_mount_point": MP},
                                   hosts=[fixed.name, busy.name])
        code, results = run(cli, inventory)
        assert code == 3
        message = tasks(results[busy.name])["mounted"]["message"]
        assert message.startswith(f"{MP} is already mounted from {server.name}:{EXPORT}-old")
        assert f"umount {MP}" in message and fstab_sha(lab, busy) == busy_sha
        assert lab.sh(fixed, f"cat {FSTAB}").stdout == restore[fixed.name][0] + (
            f"{server.name}:{EXPORT} {MP} nfs _netdev,nofail,noatime 0 0\n# keep me\n")
        assert mount_of(lab, fixed)["source"] == f"{server.name}:{EXPORT}"
    finally:
        lab.sh(busy, f"if findmnt --mountpoint {MP} >/dev/null; then umount {MP}; fi")
        lab.sh(server, f"rm -rf {EXPORT}-old")
