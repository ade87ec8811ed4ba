"""Figures 1-3: no-op `provision setup` against an equivalent ansible-playbook, per lab size.

Per size, on one fresh lab: a first `provision setup` that configures everything (repeated once
if it did not converge: on the very first run an NFS client may mount before the server's export
exists), then N timed no-op runs of provision (wall time from process start to exit, round trips
per host from --json), the profile (Python start-up, connect + one command), and N timed runs of
the Ansible playbook after one warm-up run (which also opens the ControlPersist masters).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

from bench import cluster as clusters
from bench.proc import timed

HERE = Path(__file__).resolve().parent
ANSIBLE_DIR = HERE / "ansible"
VENV = clusters.CACHE / "venv-ansible"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"\s+skipped=(\d+)", re.MULTILINE)
NFT_RULES_FILE = "/etc/nftables.d/provision-training.nft"
PROVISION = [sys.executable, "-m", "provision"]


def ansible_playbook() -> Path:
    """ansible-core in a venv of its own (never a dependency of provision), installed once."""
    binary = VENV / "bin" / "ansible-playbook"
    if not binary.exists():
        import subprocess
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True)
    return binary


def ansible_version() -> str:
    done = timed([str(VENV / "bin" / "ansible-playbook"), "--version"], timeout=60)
    return done.stdout.splitlines()[0] if done.returncode == 0 else "unknown"


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """host -> counts from ansible-playbook's PLAY RECAP."""
    keys = ("ok", "changed", "unreachable", "failed", "skipped")
    return {m[1]: dict(zip(keys, map(int, m.groups()[1:]))) for m in RECAP.finditer(text)}


def write_ansible_inventory(lab, provision_inventory: Path, path: Path) -> Path:
    """provision's (Ansible-shaped) inventory plus what the playbook needs: SSH options, the
    nftables file provision wrote on each host, the lock hash."""
    document = yaml.safe_load(provision_inventory.read_text())
    top = document["all"]
    env_file = clusters.REPO / "environment.yml"
    top["vars"].update(
        ansible_ssh_common_args=f"-o UserKnownHostsFile={lab.known_hosts_path} "
                                "-o StrictHostKeyChecking=yes",
        conda_env_file=str(env_file),
        conda_lock_sha256=hashlib.sha256(env_file.read_bytes()).hexdigest())
    training = set(top.get("children", {}).get("training", {}).get("hosts", {}) or top["hosts"])
    for name, host_vars in top["hosts"].items():
        if name in training:
            host_vars["nft_rules"] = lab.sh(name, f"cat {NFT_RULES_FILE}").stdout
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def provision_run(inventory: Path, forks: int) -> dict:
    done = timed([*PROVISION, "setup", str(inventory), "--json", "--forks", str(forks)])
    run: dict = {"wall_s": done.seconds, "returncode": done.returncode}
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        run["error"] = (done.stdout + done.stderr)[-2000:]
        return run
    hosts = report["hosts"]
    run["round_trips"] = {h["host"]: h.get("round_trips") for h in hosts}
    run["changed"] = sum(h["counts"]["changed"] for h in hosts)
    run["failed"] = sum(h["counts"]["failed"] + h["counts"]["unreachable"] for h in hosts)
    if done.returncode != 0:
        run["error"] = "; ".join(f"{h['host']}: {t['task']}: {t['message'][:200]}"
                                 for h in hosts for t in h["tasks"]
                                 if t["status"] in ("failed", "unreachable"))[:2000] \
            or done.stderr[-2000:]
    return run


def ansible_run(inventory: Path, forks: int, workdir: Path) -> dict:
    env = {"ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_FORKS": str(forks),
           "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"), "ANSIBLE_NOCOLOR": "1"}
    done = timed([str(VENV / "bin" / "ansible-playbook"), "-i", str(inventory),
                  str(ANSIBLE_DIR / "playbook.yml")], env=env, cwd=str(ANSIBLE_DIR))
    recap = parse_recap(done.stdout)
    run: dict = {"wall_s": done.seconds, "returncode": done.returncode,
           "changed": sum(c["changed"] for c in recap.values()),
           "failed": sum(c["failed"] + c["unreachable"] for c in recap.values()),
           "tasks_ok_per_host": max((c["ok"] for c in recap.values()), default=0)}
    if done.returncode != 0 or not recap:
        run["error"] = (done.stdout + done.stderr)[-3000:]
    return run


def profile_runs(inventory: Path, forks: int) -> dict:
    """Where provision's time goes: Python start-up (import and --help); start-up + inventory +
    one SSH connection and one trivial command per host (`exec -- true`); and a no-op
    `setup --role R` per role (start-up + connect + that role's facts, plans, cluster checks)."""
    startup = timed([*PROVISION, "setup", "--help"])
    connect = timed([*PROVISION, "exec", str(inventory), "--forks", str(forks), "--json",
                     "--", "true"])
    roles = {}
    for role in clusters.present_roles():
        done = timed([*PROVISION, "setup", str(inventory), "--role", role, "--json",
                      "--forks", str(forks)])
        roles[role] = done.seconds if done.returncode == 0 else None
    return {"startup_s": startup.seconds, "exec_true_s": connect.seconds,
            "exec_returncode": connect.returncode, "role_s": roles}


def measure_size(size: int, runs: int, forks: int, with_ansible: bool, workdir: Path,
                 log) -> dict:
    """Every setup figure for one lab size."""
    result: dict = {"size": size, "forks": forks, "roles": clusters.present_roles(),
                    "provision": [], "ansible": [], "profile": [], "first_runs": []}
    with clusters.cluster(size, log=log) as lab:
        inventory = clusters.write_inventory(lab, workdir / f"inventory-{size}.yaml")
        for attempt in range(3):
            first = provision_run(inventory, forks)
            result["first_runs"].append(first)
            log(f"  {size} hosts: configuring run {attempt + 1}: {first['wall_s']:.1f} s, "
                f"exit {first['returncode']}")
            if first["returncode"] == 0 and first.get("changed") == 0:
                break
        else:
            if first["returncode"] != 0:
                result["error"] = f"setup does not converge: {first.get('error', '')}"
                return result
        for index in range(runs):
            run = provision_run(inventory, forks)
            result["provision"].append(run)
            trips = list((run.get("round_trips") or {}).values())
            log(f"  {size} hosts: provision no-op run {index + 1}: {run['wall_s']:.2f} s, "
                f"round trips/host {max(trips) if trips else '?'}, changed {run.get('changed')}")
            if run["returncode"] != 0:
                result["error"] = run.get("error", "provision setup failed")
        for index in range(runs):
            result["profile"].append(profile_runs(inventory, forks))
        if with_ansible:
            ansible_playbook()
            ansible_inventory = write_ansible_inventory(
                lab, inventory, workdir / f"ansible-inventory-{size}.yaml")
            warm = ansible_run(ansible_inventory, forks, workdir)
            result["ansible_warmup"] = warm
            log(f"  {size} hosts: ansible warm-up: {warm['wall_s']:.1f} s, "
                f"changed {warm['changed']}, exit {warm['returncode']}")
            if warm["returncode"] != 0:
                result["error"] = f"ansible-playbook failed: {warm.get('error', '')}"
                return result
            for index in range(runs):
                run = ansible_run(ansible_inventory, forks, workdir)
                result["ansible"].append(run)
                log(f"  {size} hosts: ansible no-op run {index + 1}: {run['wall_s']:.2f} s, "
                    f"changed {run['changed']}")
                if run["returncode"] != 0:
                    result["error"] = run.get("error", "ansible-playbook failed")
            # Both tools enforce the same state: provision must still find nothing to change.
            after = provision_run(inventory, forks)
            result["provision_after_ansible"] = after
            if after.get("changed"):
                log(f"  {size} hosts: provision changed {after['changed']} task(s) after "
                    "Ansible: the playbook's state differs")
    return result
