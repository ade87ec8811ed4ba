"""The engine against real SSH hosts: exec, setup, check mode, unreachable hosts, host keys,
sudo, hostile inventory strings, retry files."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import yaml

from provision.connection import ConnectOptions, HostConnection
from provision.errors import HostKeyMismatch
from provision.inventory import load_inventory

ROLES = Path(__file__).parent / "roles"
PROBE = ["--roles-dir", str(ROLES), "--role", "engine_probe"]


def state(lab, host: str, path: str = "/opt/probe") -> str:
    """Everything about `path` in a host, read without SSH."""
    return lab.sh(host, f"find {path} -exec stat -c '%n %a %U %s %Y' {{}} + 2>/dev/null; "
                        f"cat {path}/* 2>/dev/null; true").stdout


def clean(lab, path: str = "/opt/probe") -> None:
    for host in lab.hosts:
        lab.sh(host.name, f"rm -rf {path}")


def test_exec_runs_everywhere_with_host_prefix(lab, make_inventory, cli):
    inv = make_inventory()
    done = cli("exec", inv, "--", "hostname")
    assert done.returncode == 0, done.stderr
    names = {h.name for h in lab.hosts}
    lines = [line for line in done.stdout.splitlines() if " | " in line]
    assert {tuple(part.strip() for part in line.split("|")) for line in lines} == \
        {(name, name) for name in names}
    assert "RECAP" in done.stdout
    for name in names:
        assert f"{name} : ok=1" in done.stdout.replace("  ", " ").replace(f"{name} ", f"{name} ")


def test_exec_failure_sets_exit_code_and_retry_file(lab, make_inventory, cli):
    inv = make_inventory()
    failing = lab.hosts[1].name
    done = cli("exec", inv, "--", f'[ "$(hostname)" != {failing} ]')
    assert done.returncode == 3
    retry = Path(str(inv) + ".retry")
    assert retry.read_text().split() == [failing]
    again = cli("exec", inv, "--limit", f"@{retry}", "--json", "--", "hostname")
    report = json.loads(again.stdout)
    assert [h["host"] for h in report["hosts"]] == [failing]
    assert again.returncode == 0 and not retry.exists()


def test_setup_is_idempotent_with_one_round_trip(lab, make_inventory, cli):
    clean(lab)
    inv = make_inventory()
    first = cli("setup", inv, *PROBE, "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert {h["status"] for h in json.loads(first.stdout)["hosts"]} == {"changed"}
    host = lab.hosts[0].name
    assert lab.sh(host, "cat /opt/probe/note").stdout == f"host={host}\nnote=hello\n"
    assert lab.sh(host, "stat -c %a /opt/probe /opt/probe/note").stdout.split() == ["750", "640"]
    second = json.loads(cli("setup", inv, *PROBE, "--json").stdout)
    for report in second["hosts"]:
        assert report["counts"]["changed"] == 0 and report["counts"]["ok"] == 4
        assert report["round_trips"] == 1
    clean(lab)


def test_check_mode_changes_nothing(lab, make_inventory, cli):
    clean(lab)
    inv = make_inventory(vars={"probe_note": "changed"})
    host = lab.hosts[0].name
    before = state(lab, host, "/opt")
    done = cli("setup", inv, *PROBE, "--check", "--diff")
    assert done.returncode == 0, done.stderr
    assert "WOULD CHANGE" in done.stdout and "+note=changed" in done.stdout
    assert state(lab, host, "/opt") == before
    # And on a configured host: check mode reports the pending edit, the file keeps its content.
    cli("setup", make_inventory(name="other.yaml"), *PROBE)
    configured = state(lab, host)
    done = cli("setup", inv, *PROBE, "--check", "--tags", "settings")
    assert "WOULD CHANGE" in done.stdout and state(lab, host) == configured
    clean(lab)


def test_unreachable_host_others_finish(lab, make_inventory, cli):
    down = lab.hosts[2].name
    lab.stop_sshd(down)
    try:
        done = cli("exec", make_inventory(), "--json", "--", "true")
    finally:
        lab.start_sshd(down)
    report = {h["host"]: h for h in json.loads(done.stdout)["hosts"]}
    assert done.returncode == 4
    assert report[down]["status"] == "unreachable"
    assert "Connection refused" in report[down]["unreachable"]
    assert all(h["status"] == "ok" for name, h in report.items() if name != down)


def test_sshd_dying_mid_run_is_unreachable(lab, make_inventory, cli):
    victim = lab.hosts[1].name
    lab.sh(victim, "rm -f /tmp/running")

    def kill_once_running() -> None:
        deadline = time.monotonic() + 60
        while lab.sh(victim, "test -e /tmp/running", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.1)
        lab.stop_sshd(victim)

    killer = threading.Thread(target=kill_once_running)
    killer.start()
    try:
        done = cli("exec", make_inventory(), "--json", "--",
                   "touch /tmp/running; sleep 5; echo finished")
    finally:
        killer.join()
        lab.start_sshd(victim)
    report = {h["host"]: h for h in json.loads(done.stdout)["hosts"]}
    assert report[victim]["status"] == "unreachable"
    assert "connection lost" in report[victim]["unreachable"]
    others = [h for name, h in report.items() if name != victim]
    assert all(h["status"] == "ok" and "finished" in h["tasks"][0]["output"] for h in others)


def test_host_keys_recorded_on_first_use_in_parallel(lab, make_inventory, cli, tmp_path):
    known = tmp_path / "known_hosts"
    inv = make_inventory(vars={"ssh_known_hosts": str(known)})
    assert cli("exec", inv, "--", "true").returncode == 0
    recorded = sorted(line.split()[0] for line in known.read_text().splitlines())
    assert recorded == sorted(h.address for h in lab.hosts)
    assert cli("exec", inv, "--", "true").returncode == 0
    assert len(known.read_text().splitlines()) == len(lab.hosts)  # nothing added twice


def test_strict_policy_refuses_unknown_key(lab, make_inventory, cli, tmp_path):
    inv = make_inventory(vars={"ssh_known_hosts": str(tmp_path / "empty")})
    done = cli("exec", inv, "--host-key-policy", "strict", "--json", "--", "true")
    assert done.returncode == 4
    assert all("is not in" in h["unreachable"] for h in json.loads(done.stdout)["hosts"])
    assert not (tmp_path / "empty").exists() or not (tmp_path / "empty").read_text()


def test_changed_host_key_is_refused(scratch_lab, cli, tmp_path):
    scratch_lab.up(1)
    host = scratch_lab.hosts[0]
    scratch_lab.regenerate_host_key(host)
    inventory = shutil.copy(scratch_lab.inventory_path, tmp_path)  # its retry file goes there
    done = cli("exec", inventory, "--json", "--", "touch /tmp/ran")
    message = json.loads(done.stdout)["hosts"][0]["unreachable"]
    assert done.returncode == 4
    assert "HOST KEY CHANGED" in message and "ssh-keygen" in message
    assert message.count("SHA256:") == 2            # old and new fingerprints
    assert scratch_lab.sh(host.name, "test -e /tmp/ran", check=False).returncode != 0
    # Direct API: never silently accepted, whatever the policy.
    connection = HostConnection(load_inventory(inventory).hosts[host.name],
                                ConnectOptions(known_hosts=scratch_lab.known_hosts_path))
    try:
        connection.open()
        raise AssertionError("a changed host key was accepted")
    except HostKeyMismatch:
        pass


def test_become_with_sudo_password_from_environment(lab, make_inventory, cli):
    password = lab.sudo_password_path.read_text().strip()
    inv = make_inventory(vars={"ansible_user": "deploy", "become": True})
    without = cli("exec", inv, "--json", "--", "id -u")
    assert without.returncode == 4 and "PROVISION_SUDO_PASSWORD" in without.stdout
    done = cli("exec", inv, "--", "id -un; cat -", env={"PROVISION_SUDO_PASSWORD": password},
               input="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(f"{h.name} | root" in done.stdout for h in lab.hosts)
    assert password not in done.stdout + done.stderr
    wrong = cli("exec", inv, "--", "id -un", env={"PROVISION_SUDO_PASSWORD": "wrong"})
    assert wrong.returncode == 3 and password not in wrong.stdout + wrong.stderr


HOSTILE = ["; touch /tmp/pwned", "$(touch /tmp/pwned)", "`touch /tmp/pwned`",
           "' ; touch /tmp/pwned '", '" ; touch /tmp/pwned "', "a b\ttouch /tmp/pwned"]


def test_hostile_strings_are_never_executed(lab, make_inventory, cli, tmp_path):
    host = lab.hosts[0].name
    lab.sh(host, "rm -f /tmp/pwned")
    # In paths and free-form values (quoted) they are written literally, never run.
    for text in HOSTILE:
        inv = make_inventory(vars={"probe_dir": f"/opt/probe/{text.replace('/', '_')}",
                                   "probe_note": text}, hosts=[host])
        done = cli("setup", inv, *PROBE)
        assert done.returncode == 0, done.stdout + done.stderr
        note = lab.sh(host, "cat /opt/probe/*/settings").stdout
        assert f"note={text}\n" in note
        lab.sh(host, "rm -rf /opt/probe")
    # In names, addresses, users and ports they are rejected before any connection.
    base = yaml.safe_load(lab.inventory_path.read_text())
    for field in ("ansible_host", "ansible_user", "ansible_port", "nccl_socket_ifname"):
        for text in HOSTILE + ["x\ny"]:
            data = yaml.safe_load(yaml.safe_dump(base))
            data["all"]["hosts"][host][field] = text
            path = tmp_path / "hostile.yaml"
            path.write_text(yaml.safe_dump(data))
            done = cli("exec", path, "--limit", host, "--", "true")
            assert done.returncode == 2, (field, text, done.stdout)
            assert field in done.stderr
    assert lab.sh(host, "test -e /tmp/pwned", check=False).returncode != 0


def test_many_parallel_connections_are_fast(lab, make_inventory, cli):
    """Not a timing test: checks --forks 1 still completes and reports every host in order."""
    done = cli("exec", make_inventory(), "--forks", "1", "--json", "--", "hostname")
    assert [h["host"] for h in json.loads(done.stdout)["hosts"]] == [h.name for h in lab.hosts]


def test_ssh_config_alias_user_key_and_proxyjump(lab, cli, tmp_path):
    """A host known only by its ~/.ssh/config alias, reachable only through a jump host."""
    jump, target = lab.hosts[0], lab.hosts[1]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host jumpbox\n  HostName {jump.address}\n  User root\n  IdentityFile {lab.key_path}\n"
        f"Host target\n  HostName {target.address}\n  User root\n"
        f"  IdentityFile {lab.key_path}\n  ProxyJump jumpbox\n")
    known = tmp_path / "known_hosts"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"all:\n  vars: {{ssh_known_hosts: {known}}}\n  hosts:\n    target:\n")
    # The controller cannot reach the target's sshd directly, only the jump host can.
    lab.sh(target.name, "nft add table inet jumptest && nft add chain inet jumptest input "
                        "'{ type filter hook input priority 0; policy accept; }' && "
                        f"nft add rule inet jumptest input ip saddr != {jump.address} "
                        "tcp dport 22 drop")
    try:
        done = cli("exec", inventory, "--connect-timeout", "5", "--", "hostname",
                   env={"HOME": str(home)})
    finally:
        lab.sh(target.name, "nft delete table inet jumptest")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"target | {target.name}" in done.stdout
    # Both hops' keys were checked and recorded, not blindly accepted.
    assert sorted(line.split()[0] for line in known.read_text().splitlines()) == \
        sorted([jump.address, target.address])
