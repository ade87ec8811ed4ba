"""The conda role against real SSH hosts, with the Miniconda installer double as
conda_installer_path; every effect is checked inside the hosts, without SSH."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import pytest
import torch

from provision.operations.conda import DEFAULT_ENV_FILE

PREFIX = "/opt/miniconda3"
ENV = f"{PREFIX}/envs/train"
CONDA = ["--role", "conda", "--json"]


@pytest.fixture
def training(lab) -> list[str]:
    names = [h.name for h in lab.hosts[:3]]
    for name in names:
        lab.sh(name, f"rm -rf {PREFIX}")
    return names


def conda_vars(installer: Path, **extra) -> dict:
    return {"conda_installer_path": str(installer),
            "conda_installer_sha256": hashlib.sha256(installer.read_bytes()).hexdigest(),
            **extra}


def run(cli, inventory, *args) -> tuple[int, dict[str, dict]]:
    done = cli("setup", inventory, *CONDA, *args)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON report: {done.stdout}{done.stderr}")
    return done.returncode, {h["host"]: h for h in report["hosts"]}


def tasks(host_report: dict) -> dict[str, tuple[str, str]]:
    return {t["task"]: (t["status"], t["message"]) for t in host_report["tasks"]}


def test_check_on_fresh_hosts_reports_and_changes_nothing(lab, training, installer_double,
                                                          make_inventory, cli):
    # The lab's own directory is mounted back into each host when the checkout lies under /tmp:
    # it is the machine's, not the host's, so it is left out.
    listing = f"find /opt /tmp -path {lab.dir.resolve()} -prune -o -print | sort"
    before = {h: lab.sh(h, listing).stdout for h in training}
    code, hosts = run(cli, make_inventory(vars=conda_vars(installer_double), hosts=training),
                      "--check")
    assert code == 0
    for name in training:
        got = tasks(hosts[name])
        assert got["Miniconda installed"][0] == "changed"
        assert got["training environment"] == ("changed", got["training environment"][1])
        assert got["training environment"][1].startswith(f"create environment {ENV}")
        assert got["environment versions"][0] == "skipped"
        assert lab.sh(name, listing).stdout == before[name]


def test_wrong_checksum_is_refused_and_nothing_installed(lab, training, installer_double,
                                                         make_inventory, cli):
    inventory = make_inventory(vars=conda_vars(installer_double, conda_installer_sha256="0" * 64),
                               hosts=training[:1])
    code, hosts = run(cli, inventory)
    assert code == 3
    status, message = tasks(hosts[training[0]])["Miniconda installed"]
    assert status == "failed" and "refusing to install" in message
    assert lab.sh(training[0], f"test -e {PREFIX}", check=False).returncode == 1


def test_setup_builds_the_env_once_and_reports_its_versions(lab, training, installer_double,
                                                           make_inventory, cli):
    inventory = make_inventory(vars=conda_vars(installer_double), hosts=training)
    code, hosts = run(cli, inventory)
    assert code == 0, hosts
    lock = hashlib.sha256(DEFAULT_ENV_FILE.read_bytes()).hexdigest()
    for name in training:
        got = tasks(hosts[name])
        assert [got[t][0] for t in ("Miniconda installed", "channel mirrors",
                                    "training environment")] == ["changed", "skipped", "changed"]
        probe = lab.sh(name, f"{ENV}/bin/python -c 'import torch; print(torch.__version__)'")
        assert probe.stdout.strip() == torch.__version__
        assert lab.sh(name, f"cat {ENV}/.provision-lock-sha256").stdout == lock + "\n"
        assert lab.sh(name, f"{PREFIX}/bin/conda --version").stdout.strip() == "conda 24.7.1"
        assert tasks(hosts[name])["environment versions"] == (
            "ok", (f"python {platform.python_version()}, torch {torch.__version__}, "
                   f"torch CUDA {torch.version.cuda or 'none'}, NCCL none, "
                   f"cuda.is_available() {torch.cuda.is_available()}, lock {lock[:12]}"))
    code, again = run(cli, inventory)
    assert code == 0
    for name in training:
        assert again[name]["counts"]["changed"] == 0
        # One batch of facts; the version check reads what the build recorded in it.
        assert again[name]["round_trips"] == 1


def test_lock_change_interrupted_build_and_differing_hosts(lab, training, installer_double,
                                                          make_inventory, cli, tmp_path):
    lock = tmp_path / "environment.yml"
    lock.write_bytes(DEFAULT_ENV_FILE.read_bytes())
    inventory = make_inventory(vars=conda_vars(installer_double, conda_env_file=str(lock)),
                               hosts=training)
    assert run(cli, inventory)[0] == 0
    first, rest = training[0], training[1:]
    lock.write_text(lock.read_text().replace("  - tqdm=4.66.5\n", ""))
    # The double's channel breaks numpy's link step on one host: conda dies mid-transaction.
    lab.sh(first, f"echo 'broken numpy' > {PREFIX}/.double-channel")
    code, hosts = run(cli, inventory)
    assert code == 3
    status, message = tasks(hosts[first])["training environment"]
    assert status == "failed" and "LinkError" in message
    assert lab.sh(first, f"test -e {ENV}/.provision-lock-sha256", check=False).returncode == 1
    for name in rest:
        assert tasks(hosts[name])["training environment"][1].startswith(
            f"update environment {ENV}"), hosts[name]
        assert lab.sh(name, f"ls {ENV}/conda-meta").stdout.count("tqdm-") == 0   # pruned
    lab.sh(first, f"rm {PREFIX}/.double-channel")
    code, hosts = run(cli, inventory)
    assert code == 0
    assert "did not finish" in tasks(hosts[first])["training environment"][1]
    assert [hosts[n]["counts"]["changed"] for n in rest] == [0, 0]
    # A host built from another lock: the cross-host check names the difference.
    other = tmp_path / "other.yml"
    other.write_text(lock.read_text() + "  - tqdm=4.66.5\n")
    inventory = make_inventory(vars=conda_vars(installer_double, conda_env_file=str(lock)),
                               hosts=training, host_vars={first: {"conda_env_file": str(other)}},
                               name="differing.yaml")
    code, hosts = run(cli, inventory)
    assert code == 3
    for name in training:
        status, message = tasks(hosts[name])["environment versions"]
        assert status == "failed" and "training hosts differ in lock_sha256" in message
