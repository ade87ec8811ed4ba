"""Lab clusters for the benchmarks: bring-up, the test doubles, an inventory where every role
applies, and teardown (always, even on errors: use `cluster(...)` as a context manager)."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import yaml

from provision.lab import OVERLAY_DIRS, Lab

REPO = Path(__file__).resolve().parents[1]
ROLES_DIR = REPO / "roles"
DOUBLES = REPO / "tests" / "doubles"
# Names and subnets no test session of the other developers uses (they use 10.213-10.225).
LAB_NAME = os.environ.get("PROVISION_BENCH_LAB_NAME", "pbench")
LAB_SUBNET = os.environ.get("PROVISION_BENCH_LAB_SUBNET", "10.226.0.0/24")
# The roles a full `provision setup` runs; the benchmark runs whichever of them exist.
EXPECTED_ROLES = ("preflight", "nvidia", "ntp", "firewall", "nfs", "conda")
NFS_HELPER = "/usr/sbin/mount.nfs"
NFS_EXPORT = "/srv/export"
NFS_MOUNT_POINT = "/mnt/shared"
INSTALLER_NAME = "Miniconda3-py311_24.7.1-0-Linux-x86_64.sh"
CACHE = Path(os.environ.get("PROVISION_BENCH_CACHE",
                            Path.home() / ".cache" / "provision-bench"))


def lab_root() -> Path:
    """Like the lab tests: the repo's .lab/, unless the checkout is under an overlaid dir."""
    if any(Path(d) == REPO or Path(d) in REPO.parents for d in OVERLAY_DIRS):
        return Path("/srv/provision-labs")
    return REPO / ".lab"


def present_roles() -> list[str]:
    return [r for r in EXPECTED_ROLES if (ROLES_DIR / r / "role.yml").is_file()]


def missing_roles() -> list[str]:
    return [r for r in EXPECTED_ROLES if r not in present_roles()]


def installer() -> tuple[Path, str]:
    """The Miniconda installer double, installing a venv of this Python (which has torch)."""
    text = (DOUBLES / "miniconda-installer.sh").read_text()
    text = text.replace("\nBASE_PYTHON=python3\n", f"\nBASE_PYTHON={sys.executable}\n", 1)
    path = CACHE / "installer" / INSTALLER_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path, hashlib.sha256(text.encode()).hexdigest()


def role_vars(lab: Lab) -> dict:
    """Vars that make every present role applicable in the lab (the lab inventory already has
    gpus: 0, so nvidia skips, and the ntp vars: host 1 serves time, chronyd runs with -x)."""
    roles = present_roles()
    extra: dict = {}
    if "nfs" in roles:
        extra.update(nfs_server=lab.hosts[0].name, nfs_export=NFS_EXPORT,
                     nfs_mount_point=NFS_MOUNT_POINT)
    if "conda" in roles:
        path, sha = installer()
        extra.update(conda_installer_path=str(path), conda_installer_sha256=sha)
    if "preflight" in roles:
        extra.update(preflight_min_free_gb=1)
    return extra


def write_inventory(lab: Lab, path: Path, training: list[str] | None = None,
                    extra_vars: dict | None = None, roles: bool = True) -> Path:
    """The lab's own inventory plus role_vars (unless not `roles`), and a training group of
    `training`."""
    document = yaml.safe_load(lab.inventory_path.read_text())
    top = document["all"]
    if roles:
        top["vars"].update(role_vars(lab))
    top["vars"].update(extra_vars or {})
    if training is not None:
        top["children"]["training"] = {"hosts": {name: {} for name in training}}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def prepare_hosts(lab: Lab) -> None:
    """The doubles and the NFS export, inside every host (through its namespaces, not SSH)."""
    double = (DOUBLES / "mount.nfs").read_text()
    roles = present_roles()

    def prepare(index_host):
        index, host = index_host
        script = []
        if "nfs" in roles:
            script.append(f"cat > {NFS_HELPER} && chmod 755 {NFS_HELPER}")
            if index == 0:
                script.append(f"mkdir -p {NFS_EXPORT}")
        if script:
            lab.sh(host.name, " && ".join(script), input=double)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(prepare, enumerate(lab.hosts)))


@contextmanager
def cluster(size: int, training: int | None = None, log=print) -> Iterator[Lab]:
    """A fresh lab of `size` hosts, prepared; always torn down afterwards."""
    directory = lab_root() / LAB_NAME
    Lab(LAB_NAME, directory).down()          # whatever an interrupted run left
    lab = Lab(LAB_NAME, directory, LAB_SUBNET)
    try:
        log(f"lab {LAB_NAME}: bringing up {size} hosts on {LAB_SUBNET}")
        lab.up(size, training=training)
        prepare_hosts(lab)
        yield lab
    finally:
        log(f"lab {LAB_NAME}: down")
        lab.down()
