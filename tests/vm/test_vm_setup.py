"""`provision setup` against real Debian 12 VMs made by vagrant/Vagrantfile: the kernel NFS server
and clients with fstab, nftables checked by real connects, chrony with one VM as the cluster's time
server, preflight and nvidia (skipped: gpus 0), then an idempotent second run, a client reboot and
`provision check`.

The tests run in file order on one session cluster (nfs = NFS and time server, node1/node2 =
training nodes and NFS clients); each states what the earlier ones left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

EXPORT, MOUNT_POINT = "/srv/export", "/shared"
PORT = 29500
LISTENER = ("import socket\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {PORT})); s.listen(64)\n"
            "while True: s.accept()[0].close()\n")
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"


# The conda role is left out: its installer double makes environments that see the VM's own
# Python, which has no torch, so its "environment versions" check cannot pass in these VMs (the
# lab tier covers the role). PROVISION_TEST_VM_EXTRA_VARS="K=V ..." adds -e vars (to try a fix).
ROLES = ["--role", "preflight", "--role", "nvidia", "--role", "ntp", "--role", "firewall",
         "--role", "nfs"]


def provision(cluster, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it, on the cluster's inventory (written by the Vagrantfile)."""
    extra = [arg for kv in os.environ.get("PROVISION_TEST_VM_EXTRA_VARS", "").split()
             for arg in ("-e", kv)]
    command, rest = args[0], args[1:]
    argv = [sys.executable, "-m", "provision", command, str(cluster.inventory), *ROLES, *extra,
            *rest]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1"})


def setup(cluster, label: str) -> tuple[int, dict[str, dict], str]:
    done = cluster.timed(label, provision, cluster, "setup", "--json")
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.returncode, {h["host"]: h for h in report["hosts"]}, done.stderr


def problems(hosts: dict[str, dict]) -> str:
    return "\n".join(f"{h}: {t['task']}: {t['status']}: {t['message']}"
                     for h, r in hosts.items() for t in r["tasks"]
                     if t["status"] in ("failed", "unreachable")) or \
        "\n".join(f"{h}: {r['unreachable']}" for h, r in hosts.items() if r["unreachable"])


@pytest.fixture(scope="module")
def first_setup(vm_cluster):
    """The first `provision setup` on fresh VMs. On a first run the clients may try to mount
    before the server exports (hosts run in parallel; the nfs role says a re-run completes it):
    then one more run, and both reports are kept."""
    runs = [setup(vm_cluster, "provision setup (first run)")]
    if runs[0][0] != 0:
        runs.append(setup(vm_cluster, "provision setup (completing run)"))
    return runs


def nfs_mount(cluster, name: str) -> dict | None:
    done = cluster.ssh(name, f"findmnt -J -o SOURCE,TARGET,FSTYPE,OPTIONS {MOUNT_POINT}",
                       check=False)
    return json.loads(done.stdout)["filesystems"][0] if done.returncode == 0 else None


def connects(cluster, source: str, target: str) -> bool:
    done = cluster.ssh(source, f"python3 -c '{CONNECT}' {cluster.vm(target).address} {PORT}",
                       check=False, timeout=30)
    return done.returncode == 0


def listen(cluster, name: str) -> None:
    pidfile = "/run/provision-vmtest-listener.pid"
    cluster.ssh(name, f"if [ -f {pidfile} ]; then kill $(cat {pidfile}) 2>/dev/null; fi; "
                      f"setsid python3 -c \"{LISTENER}\" >/dev/null 2>&1 < /dev/null & "
                      f"echo $! > {pidfile}; "
                      f"for i in $(seq 50); do ss -Htln | grep -q ':{PORT} ' && exit 0; "
                      f"sleep 0.2; done; exit 1")


def test_vagrant_cluster_is_up_on_its_private_network_only(vm_cluster):
    assert [vm.name for vm in vm_cluster.vms] == ["nfs", "node1", "node2"]
    for vm in vm_cluster.vms:
        done = vm_cluster.ssh(vm.name, "hostname; ip -4 -o addr show scope global; ip route")
        lines = done.stdout.splitlines()
        assert lines[0] == vm.name
        assert f"inet {vm.address}/24" in done.stdout
        assert "default" not in done.stdout, f"{vm.name} has a route out: {done.stdout}"
        assert len([line for line in lines if " inet " in line]) == 1


def test_first_setup_succeeds(vm_cluster, first_setup):
    code, hosts, stderr = first_setup[-1]
    assert code == 0, f"{problems(hosts)}\n{stderr}"
    assert set(hosts) == {"nfs", "node1", "node2"}


def test_nfs_is_the_kernel_client_with_fstab_and_shared_both_ways(vm_cluster, first_setup):
    server = vm_cluster.vm("nfs")
    for name in ("node1", "node2"):
        mount = nfs_mount(vm_cluster, name)
        assert mount and mount["fstype"].startswith("nfs"), mount
        assert mount["source"] == f"{server.address}:{EXPORT}"
        fstab = vm_cluster.ssh(name, "cat /etc/fstab").stdout
        assert any(line.split()[:3] == [f"{server.address}:{EXPORT}", MOUNT_POINT, "nfs"]
                   or line.split()[:3] == [f"{server.address}:{EXPORT}", MOUNT_POINT, "nfs4"]
                   for line in fstab.splitlines() if line.strip() and not line.startswith("#"))
    assert nfs_mount(vm_cluster, "nfs") is None          # the server is no client of itself
    exports = vm_cluster.ssh("nfs", "exportfs -v").stdout
    assert EXPORT in exports
    token = f"written on node1 at {time.time()}"
    vm_cluster.ssh("node1", f"echo '{token}' > {MOUNT_POINT}/vmtest-file")
    assert vm_cluster.ssh("node2", f"cat {MOUNT_POINT}/vmtest-file").stdout.strip() == token
    assert vm_cluster.ssh("nfs", f"cat {EXPORT}/vmtest-file").stdout.strip() == token
    vm_cluster.ssh("nfs", f"echo back > {EXPORT}/vmtest-back")
    assert vm_cluster.ssh("node1", f"cat {MOUNT_POINT}/vmtest-back").stdout.strip() == "back"


def test_chrony_follows_the_nfs_vm(vm_cluster, first_setup):
    server = vm_cluster.vm("nfs").address
    for name in ("node1", "node2"):
        sources = vm_cluster.ssh(name, "chronyc -n sources").stdout
        assert f"^* {server}" in sources, sources
        tracking = vm_cluster.ssh(name, "chronyc -n tracking").stdout
        assert "Leap status     : Normal" in tracking, tracking
    assert "local" in vm_cluster.ssh("nfs", "cat /etc/chrony/chrony.conf").stdout


def test_rendezvous_port_open_to_the_cluster_only(vm_cluster, first_setup):
    for name in ("node1", "node2"):
        assert "provision" in vm_cluster.ssh(name, "nft list ruleset").stdout
    listen(vm_cluster, "node1")
    assert connects(vm_cluster, "node2", "node1")              # a training node
    assert not connects(vm_cluster, "nfs", "node1")            # a VM outside the training group
    assert not vm_cluster.connects_from_host("node1", PORT)    # this machine, 10.230.0.1
    assert vm_cluster.connects_from_host("node1", 22)          # SSH untouched


def test_second_setup_changes_nothing(vm_cluster, first_setup):
    code, hosts, stderr = setup(vm_cluster, "provision setup (second run, no-op)")
    assert code == 0, f"{problems(hosts)}\n{stderr}"
    changed = {h: [t["task"] for t in r["tasks"] if t["status"] == "changed"]
               for h, r in hosts.items()}
    assert changed == {h: [] for h in hosts}


def test_rebooted_client_gets_its_mount_and_rule_back(vm_cluster, first_setup):
    before = vm_cluster.ssh("node2", "cat /proc/sys/kernel/random/boot_id").stdout
    vm_cluster.ssh("node2", "systemd-run --on-active=1 systemctl reboot", check=False)
    start = time.monotonic()
    deadline = start + 300
    while time.monotonic() < deadline:
        time.sleep(5)
        try:
            done = vm_cluster.ssh("node2", "cat /proc/sys/kernel/random/boot_id", check=False,
                                  timeout=30)
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0 and done.stdout != before:
            break
    else:
        pytest.fail("node2 did not come back within 300 s")
    vm_cluster.timings["reboot node2 to SSH"] = time.monotonic() - start
    # The fstab mount (nofail, _netdev) may still be on its way when SSH answers.
    for _ in range(60):
        mount = nfs_mount(vm_cluster, "node2")
        if mount:
            break
        time.sleep(2)
    assert mount and mount["fstype"].startswith("nfs"), "NFS share not mounted after reboot"
    assert vm_cluster.ssh("node2", f"cat {MOUNT_POINT}/vmtest-back").stdout.strip() == "back"
    assert "provision" in vm_cluster.ssh("node2", "nft list ruleset").stdout
    listen(vm_cluster, "node2")
    assert connects(vm_cluster, "node1", "node2")
    assert not connects(vm_cluster, "nfs", "node2")
    assert not vm_cluster.connects_from_host("node2", PORT)


def test_check_shows_every_host_ready(vm_cluster, first_setup):
    done = vm_cluster.timed("provision check", provision, vm_cluster, "check", "--json")
    table = json.loads(done.stdout)["ready"]
    assert done.returncode == 0, f"{json.dumps(table, indent=1)}\n{done.stderr}"
    assert set(table) == {"nfs", "node1", "node2"}
    for host, row in table.items():
        assert all(v in ("ready", "skipped") for v in row.values()), (host, row)
        assert row["nfs"] == "ready" and row["ntp"] == "ready" and row["preflight"] == "ready"
    for name in ("node1", "node2"):
        assert table[name]["firewall"] == "ready"
    done = provision(vm_cluster, "check")
    assert "3/3 host(s) ready" in done.stdout
