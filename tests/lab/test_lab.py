"""The lab cluster itself: real SSH, isolated hosts, idempotent up, a down that leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from provision.errors import LabError
from provision.inventory import load_inventory
from provision.lab import Lab, LabHost, processes, ssh_answers
from provision.lab.tools import REQUIRED_PROGRAMS

# For the refusals: a lab that is never brought up, in the gitignored .lab/ of the repository.
REFUSED_NAME = "plabz"
REFUSED_ROOT = Path(__file__).resolve().parents[2] / ".lab"


def ssh(lab: Lab, host: LabHost, command: str, user: str = "root",
        known_hosts: Path | None = None) -> subprocess.CompletedProcess:
    """The real OpenSSH client, trusting only the lab's known_hosts."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(lab.key_path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts or lab.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"{user}@{host.address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def pid_namespace_members(init_pid: int) -> list[int]:
    namespace = processes.pid_namespace(init_pid)
    return [p for p in processes.pids() if processes.pid_namespace(p) == namespace]


def traces(lab: Lab) -> dict[str, set[str]]:
    """Everything on the machine that belongs to this lab: netns, interfaces, mounts, processes."""
    prefix = lab.name + "-"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    found: dict[str, set[str]] = {
        "netns": {line.split()[0] for line in netns.splitlines() if line.startswith(prefix)},
        "links": {link["ifname"] for link in links if link["ifname"].startswith(prefix)},
        "mounts": set(), "processes": set()}
    for pid in processes.pids():
        try:
            mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:
            continue
        # Any mount namespace (the machine's or a leftover host's) that still holds our mounts.
        found["mounts"] |= {line.split(" - ")[0].split()[4] for line in mountinfo.splitlines()
                            if str(lab.dir) in line or f"/run/netns/{prefix}" in line}
        argv = " ".join(processes.cmdline(pid))
        if str(lab.dir) in argv:
            found["processes"].add(f"{pid} {argv}")
    return found


# -- the session lab ------------------------------------------------------------------------------

def test_each_host_answers_real_ssh_as_itself(lab: Lab):
    assert len(lab.hosts) >= 4
    for host in lab.hosts:
        done = ssh(lab, host, "hostname; ip -4 -o addr show dev eth0")
        assert done.returncode == 0, done.stderr
        name, address_line = done.stdout.splitlines()
        assert name == host.name
        assert f" {host.address}/" in address_line


def test_inventory_lists_the_hosts_and_the_training_group(lab: Lab):
    inventory = load_inventory(lab.inventory_path)
    assert [(h.name, h.address, h.user) for h in inventory.hosts.values()] == \
        [(h.name, h.address, "root") for h in lab.hosts]
    assert lab.training == len(lab.hosts) - 1   # the last host is outside the cluster
    assert inventory.groups["training"].hosts == [h.name for h in lab.hosts[:lab.training]]
    first = inventory.hosts[lab.hosts[0].name]
    assert Path(first.key_file) == lab.key_path
    assert first.vars["ssh_known_hosts"] == str(lab.known_hosts_path)
    assert first.vars["gpus"] == 0
    known = lab.known_hosts_path.read_text().splitlines()
    assert [line.split()[:2] for line in known] == [[h.address, "ssh-ed25519"] for h in lab.hosts]
    assert lab.sudo_password_path.read_text().strip() not in lab.inventory_path.read_text()


def test_deploy_logs_in_with_the_key_and_sudo_wants_the_password(lab: Lab):
    host = lab.hosts[1]
    assert oct(lab.sudo_password_path.stat().st_mode & 0o777) == "0o600"
    without = ssh(lab, host, "id -un; sudo -n true", user="deploy")
    assert without.stdout.strip() == "deploy"
    assert without.returncode != 0 and "password is required" in without.stderr
    password = lab.sudo_password_path.read_text().strip()
    wrong = ssh(lab, host, "echo not-the-password | sudo -S -p '' id -u", user="deploy")
    assert wrong.returncode != 0
    right = ssh(lab, host, f"echo {password} | sudo -S -p '' id -u", user="deploy")
    assert right.returncode == 0, right.stderr
    assert right.stdout.strip() == "0"


def test_a_host_has_its_own_etc_opt_var_usr_root_home_tmp_run(lab: Lab):
    one, two = lab.hosts[0], lab.hosts[1]
    marker = f"lab-test-{uuid.uuid4().hex}"
    paths = [f"{d}/{marker}" for d in ("/etc", "/opt", "/var", "/usr", "/root", "/home", "/tmp",
                                       "/run")]
    lab.sh(one, " && ".join(f"echo {one.name} > {p}" for p in paths))
    try:
        assert lab.sh(one, f"cat {' '.join(paths)}").stdout.split() == [one.name] * len(paths)
        seen_by_two = lab.sh(two, f"ls {' '.join(paths)}", check=False)
        assert seen_by_two.returncode != 0 and seen_by_two.stdout == ""
        assert not any(Path(p).exists() for p in paths)   # nor on the machine
    finally:
        lab.sh(one, f"rm -f {' '.join(paths)}")


def test_roots_shell_starts_like_a_fresh_servers_not_like_this_machines(lab: Lab):
    host = lab.hosts[0]
    skel = Path("/etc/skel/.bashrc")
    assert lab.sh(host, "cat /root/.bashrc").stdout == (skel.read_text() if skel.exists() else "")
    # What bash runs for a command over SSH is the host's file: a variable the machine's own
    # ~/.bashrc would set stays unset.
    lab.sh(host, "sed -i '1i export LAB_RC_PROBE=sourced' /root/.bashrc")
    try:
        assert ssh(lab, host, "echo ${LAB_RC_PROBE:-unset}").stdout.strip() == "sourced"
    finally:
        lab.sh(host, f"cp {skel} /root/.bashrc" if skel.exists() else ": > /root/.bashrc")


def test_srv_and_mnt_are_per_host_directories_of_the_lab(lab: Lab):
    one, two = lab.hosts[0], lab.hosts[1]
    lab.sh(one, "echo served > /srv/export-check && echo mounted > /mnt/mnt-check")
    try:
        assert (lab.host_dir(one.name) / "srv" / "export-check").read_text() == "served\n"
        assert (lab.host_dir(one.name) / "mnt" / "mnt-check").read_text() == "mounted\n"
        assert lab.sh(two, "ls /srv /mnt").stdout.split() == ["/mnt:", "/srv:"]
    finally:
        lab.sh(one, "rm -f /srv/export-check /mnt/mnt-check")


def test_the_lab_dir_is_mounted_in_every_host(lab: Lab):
    for host in lab.hosts:
        hosts = json.loads(lab.sh(host, "cat /run/provision-lab/hosts.json").stdout)
        assert hosts == {h.name: h.address for h in lab.hosts}
    lab.sh(lab.hosts[0], "echo from-host > /run/provision-lab/written-inside")
    written = lab.dir / "written-inside"
    assert written.read_text() == "from-host\n"
    written.unlink()


def test_ps_inside_a_host_shows_only_that_host_and_orphans_are_reaped(lab: Lab):
    host = lab.hosts[0]
    listing = lab.sh(host, "ps -e -o pid=,comm=").stdout.split("\n")
    by_pid = dict(line.split(None, 1) for line in listing if line.strip())
    assert by_pid["1"].startswith("python")
    assert "sshd" in by_pid.values()
    assert len(by_pid) <= 6, by_pid
    # The inner sh exits at once, so sleep is re-parented to the host's init, which must reap it.
    states = lab.sh(host, "sh -c 'sleep 0.2 & exit 0'; sleep 1; ps -e -o stat=,comm=").stdout
    assert "sleep" not in states and not any(s.startswith("Z") for s in states.split("\n"))


def test_hosts_reach_each_other_by_name_and_address(lab: Lab):
    probe = ("python3 -c 'import socket,sys; s=socket.create_connection((sys.argv[1], 22), 3);"
             " print(s.recv(7).decode())' ")
    for target in (lab.hosts[1].name, lab.hosts[-1].address):
        assert lab.sh(lab.hosts[0], probe + target).stdout.strip() == "SSH-2.0"


def test_hosts_resolve_each_other_backwards_as_a_clusters_dns_does(lab: Lab):
    """torch's TCPStore looks its peers up by their IPv4-mapped IPv6 address: /etc/hosts alone
    cannot answer that, the lab's resolver must (else every train run warns on every node)."""
    probe = ("python3 -c 'import socket,sys; print(socket.getnameinfo((sys.argv[1], 0, 0, 0), "
             "socket.NI_NAMEREQD)[0])' ")
    peer = lab.hosts[1]
    assert lab.sh(lab.hosts[0], probe + "::ffff:" + peer.address).stdout.strip() == peer.name
    assert lab.sh(lab.hosts[0], probe.replace(", 0, 0, 0)", ", 0)") + peer.address
                  ).stdout.strip() == peer.name
    unknown = lab.sh(lab.hosts[0], "getent hosts no-such-host.example.com", check=False)
    assert unknown.returncode == 2   # not found, answered at once (no resolver timeout)


def test_nothing_leaves_the_bridge(lab: Lab):
    host = lab.hosts[0]
    routes = lab.sh(host, "ip -4 route show table all type unicast").stdout
    assert "default" not in routes
    unreachable = lab.sh(host, "ip route get 192.0.2.1", check=False)
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr
    assert Path(f"/proc/sys/net/ipv4/conf/{lab.bridge}/forwarding").read_text().strip() == "0"
    assert lab.sh(host, "ls /sys/class/net").stdout.split() == ["eth0", "lo"]


def test_up_again_changes_nothing(lab: Lab):
    def snapshot():
        return ([(h.name, h.address, h.init_pid) for h in lab.hosts], traces(lab)["netns"],
                traces(lab)["links"], lab.known_hosts_path.read_text(),
                lab.inventory_path.read_text())

    before = snapshot()
    assert len(before[2]) == len(lab.hosts) + 1   # the bridge and one veth per host
    lab.up(2)   # fewer hosts than it has: a running lab never shrinks
    assert snapshot() == before
    assert all(status.healthy for status in lab.status())


def test_stop_and_start_sshd(lab: Lab):
    host = lab.hosts[-1]
    lab.stop_sshd(host)
    try:
        refused = ssh(lab, host, "true")
        assert refused.returncode == 255 and "refused" in refused.stderr
        status = {s.name: s for s in lab.status()}[host.name]
        assert status.init_pid == host.init_pid and not status.sshd_alive
        assert not status.ssh_reachable
    finally:
        lab.start_sshd(host)
    assert ssh(lab, host, "hostname").stdout.strip() == host.name
    assert {s.name: s for s in lab.status()}[host.name].healthy


def test_a_subnet_already_routed_is_refused(lab: Lab, scratch_lab: Lab):
    clashing = Lab(scratch_lab.name, scratch_lab.dir, str(lab.subnet))
    with pytest.raises(LabError, match=rf"{lab.subnet} is already routed .*dev {lab.bridge}"):
        clashing.up(1)
    assert scratch_lab.bridge not in traces(scratch_lab)["links"]


def test_a_lab_name_in_use_by_another_directory_is_refused(lab: Lab, scratch_lab: Lab):
    elsewhere = lab.dir.parent / f"{lab.name}-elsewhere"
    try:
        with pytest.raises(LabError, match=f"{lab.bridge} already exists and is not this lab's"):
            Lab(lab.name, elsewhere, scratch_lab.subnet.with_prefixlen).up(1)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert all(status.healthy for status in lab.status())


# -- labs of their own ----------------------------------------------------------------------------

def test_grow_repair_and_down_leave_nothing_behind(scratch_lab: Lab):
    before = traces(scratch_lab)
    assert before == {"netns": set(), "links": set(), "mounts": set(), "processes": set()}

    scratch_lab.up(1)
    first_pid = scratch_lab.hosts[0].init_pid
    scratch_lab.up(2)
    one, two = scratch_lab.hosts
    assert one.init_pid == first_pid and two.init_pid not in (None, first_pid)

    # Killing a host's init kills everything in the host; the next up restarts only that host.
    members = pid_namespace_members(two.init_pid)
    assert len(members) >= 2
    os.kill(two.init_pid, signal.SIGKILL)
    assert processes.wait_gone(members, 5) == []
    assert not ssh_answers(two.address, 1)
    scratch_lab.up(2)
    assert scratch_lab.hosts[0].init_pid == first_pid
    assert scratch_lab.hosts[1].init_pid not in (None, two.init_pid)
    assert ssh(scratch_lab, scratch_lab.hosts[1], "hostname").stdout.strip() == two.name

    during = traces(scratch_lab)
    assert during["netns"] == {f"{scratch_lab.name}-{h.name}" for h in scratch_lab.hosts}
    assert during["links"] == {scratch_lab.bridge, f"{scratch_lab.name}-v1",
                               f"{scratch_lab.name}-v2"}
    assert during["mounts"] and during["processes"]

    scratch_lab.down()
    assert traces(scratch_lab) == before
    assert sorted(os.listdir(scratch_lab.dir)) == [".lock", "id_ed25519", "id_ed25519.pub"]
    assert scratch_lab.status() == []


def test_term_to_a_hosts_init_stops_the_whole_host(scratch_lab: Lab):
    scratch_lab.up(1)
    host = scratch_lab.hosts[0]
    members = pid_namespace_members(host.init_pid)
    assert len(members) >= 2
    os.kill(host.init_pid, signal.SIGTERM)
    assert processes.wait_gone(members, 10) == []


def test_a_regenerated_host_key_is_refused_by_strict_ssh(scratch_lab: Lab):
    scratch_lab.up(1)
    host = scratch_lab.hosts[0]
    recorded = scratch_lab.known_hosts_path.read_text()
    assert ssh(scratch_lab, host, "true").returncode == 0
    scratch_lab.regenerate_host_key(host)
    assert scratch_lab.known_hosts_path.read_text() == recorded
    refused = ssh(scratch_lab, host, "true")
    assert refused.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr


# -- refusals before anything is changed -------------------------------------------------------

def require_root():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")


def test_missing_programs_are_named_with_their_debian_package(tmp_path, monkeypatch):
    require_root()
    for name in REQUIRED_PROGRAMS:
        if name not in ("nsenter", "sshd"):
            (tmp_path / name).symlink_to(shutil.which(name))
    monkeypatch.setenv("PATH", str(tmp_path))
    lab = Lab(REFUSED_NAME, REFUSED_ROOT / "missing-programs")
    with pytest.raises(LabError) as raised:
        lab.up(1)
    message = str(raised.value)
    assert "nsenter (Debian package util-linux)" in message
    assert "sshd (Debian package openssh-server)" in message
    assert "apt-get install openssh-server util-linux" in message
    assert not lab.dir.exists()


def test_without_root_it_says_root_is_needed():
    require_root()
    # In a new user namespace this process is unprivileged (its uid shows as 65534).
    done = subprocess.run(
        ["unshare", "--user", sys.executable, "-c",
         "from provision.cli.lab_cmd import lab; lab()", "up", "--name", REFUSED_NAME,
         "--dir", str(REFUSED_ROOT / "not-root")],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "the lab needs root" in done.stderr
    assert not (REFUSED_ROOT / "not-root").exists()


@pytest.mark.parametrize("directory", ["/etc/lab", "/var/lib/lab", "/root/lab", "/home/x/lab"])
def test_a_lab_directory_inside_a_host_overlay_is_refused(directory):
    require_root()
    with pytest.raises(LabError, match=f"is under /{directory.split('/')[1]}, which every"):
        Lab(REFUSED_NAME, directory).up(1)
    assert not Path(directory).exists()


@pytest.mark.parametrize("name", ["Lab", "pl-ab", "p" * 11, "1lab", ""])
def test_bad_lab_names_are_refused(name):
    with pytest.raises(LabError, match="lab name"):
        Lab(name)
