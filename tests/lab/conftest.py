"""The session's lab cluster: real namespaces, mounts and sshd on this machine (needs root).

Every test under tests/lab/ is marked `lab`. The lab lives under the repository's .lab/
(gitignored), not under /tmp, /var, /etc... which every lab host replaces with its own. Names and
subnets move with PROVISION_TEST_LAB_NAME / _SUBNET / _SCRATCH_NAME / _SCRATCH_SUBNET when another
session on this machine already uses them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from provision.lab import OVERLAY_DIRS, Lab

INSTALLER_DOUBLE = Path(__file__).resolve().parents[1] / "doubles" / "miniconda-installer.sh"
LAB_HOSTS = 4          # the last host stays out of the training group: a host outside the cluster
TRAINING_HOSTS = 3
LAB_NAME = os.environ.get("PROVISION_TEST_LAB_NAME", "plabt")
LAB_SUBNET = os.environ.get("PROVISION_TEST_LAB_SUBNET", "10.214.0.0/24")
# For tests that bring up and tear down a lab of their own.
SCRATCH_NAME = os.environ.get("PROVISION_TEST_LAB_SCRATCH_NAME", "plabs")
SCRATCH_SUBNET = os.environ.get("PROVISION_TEST_LAB_SCRATCH_SUBNET", "10.214.1.0/24")
def _lab_root() -> Path:
    """The repo's .lab/, unless the checkout is under a directory each lab host overlays with
    its own (a lab's layers cannot live inside their own overlay): then /srv/provision-labs."""
    if "PROVISION_TEST_LAB_ROOT" in os.environ:
        return Path(os.environ["PROVISION_TEST_LAB_ROOT"])
    repo = Path(__file__).resolve().parents[2]
    if any(Path(d) == repo or Path(d) in repo.parents for d in OVERLAY_DIRS):
        return Path("/srv/provision-labs")
    return repo / ".lab"


LAB_ROOT = _lab_root()
NOT_ROOT = "lab tests need root (network namespaces, a bridge, mounts); run pytest as root"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)


def fresh_lab(name: str, subnet: str) -> Lab:
    """A Lab object for `name` with nothing left of an earlier, interrupted session."""
    Lab(name, LAB_ROOT / name).down()
    return Lab(name, LAB_ROOT / name, subnet)


@pytest.fixture(scope="session")
def lab() -> Lab:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    the_lab = fresh_lab(LAB_NAME, LAB_SUBNET)
    try:
        the_lab.up(LAB_HOSTS, training=TRAINING_HOSTS)
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def scratch_lab() -> Lab:
    """A second lab, not up yet, for a test that brings it up, breaks it or takes it down."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    the_lab = fresh_lab(SCRATCH_NAME, SCRATCH_SUBNET)
    try:
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def make_inventory(lab: Lab, tmp_path: Path):
    """Write an inventory for the session lab: its hosts (or some of them), extra `all` vars,
    extra host vars and extra groups. Returns its path."""
    import yaml

    def make(vars: dict | None = None, hosts: list[str] | None = None,
             host_vars: dict[str, dict] | None = None, groups: dict[str, list[str]] | None = None,
             name: str = "inventory.yaml") -> Path:
        base = yaml.safe_load(lab.inventory_path.read_text())["all"]
        chosen = hosts or [h.name for h in lab.hosts]
        training = [h.name for h in lab.hosts[:lab.training or len(lab.hosts)]]
        data = {"all": {
            "vars": {**base["vars"], **(vars or {})},
            "hosts": {h: {**base["hosts"][h], **(host_vars or {}).get(h, {})} for h in chosen},
            "children": {"training": {"hosts": {h: {} for h in training if h in chosen}},
                         **{g: {"hosts": {h: {} for h in members}}
                            for g, members in (groups or {}).items()}}}}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
    return make


def run_provision(*args: str, timeout: float = 300, env: dict | None = None,
                  input: str | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "provision", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def installer_double(tmp_path_factory) -> Path:
    """The Miniconda installer double, installing a venv of this Python (which has torch): a
    lab host's plain PATH has only the system's python3."""
    path = tmp_path_factory.mktemp("installer") / "Miniconda3-py311_24.7.1-0-Linux-x86_64.sh"
    path.write_text(INSTALLER_DOUBLE.read_text().replace(
        "\nBASE_PYTHON=python3\n", f"\nBASE_PYTHON={sys.executable}\n", 1))
    return path


def run_on_a_terminal(*args, columns: int = 120) -> tuple[int, str]:
    """The CLI on a real pseudo-terminal, as a person runs it: its exit code and screen text."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "provision", *map(str, args)],
                               stdin=follower, stdout=follower, stderr=follower, env=env,
                               close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError as exc:       # EIO: the terminal's other side is closed
            if exc.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(600), b"".join(chunks).decode(errors="replace")


@pytest.fixture
def terminal():
    """run_on_a_terminal, for tests: terminal("setup", inventory) -> (exit code, screen)."""
    return run_on_a_terminal


@pytest.fixture
def cli():
    """run_provision, for tests: cli("setup", inventory, "--check")."""
    return run_provision
