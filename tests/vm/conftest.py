"""The VM tier (marker `vm`): real Debian 12 VMs brought up by the project's own vagrant/Vagrantfile
(vagrant-libvirt, QEMU software emulation) on a private bridge, 10.230.0.0/24 by default.

Needs root, qemu-system-x86, qemu-utils, debootstrap, vagrant, vagrant-libvirt and libvirt (see
vagrant/README.md); skipped with the reason otherwise. The image and the box are built from
Debian's packages on first use and cached in $PROVISION_VM_CACHE (default /var/cache/provision-vm).
The whole cluster is destroyed at the end of the session, whatever happened.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from vmcluster import CACHE, VmCluster, missing_tools  # noqa: E402

_cluster: VmCluster | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.vm)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "VM tests need root (a bridge, libvirt, debootstrap); run pytest as root"
    missing = missing_tools()
    if missing:
        return (f"VM tests need {', '.join(missing)}: apt-get install qemu-system-x86 qemu-utils "
                f"debootstrap vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients")
    if not list(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-libvirt-*")) \
            and "vagrant-libvirt" not in os.popen("vagrant plugin list 2>/dev/null").read():
        return "VM tests need the vagrant-libvirt plugin (apt-get install vagrant-libvirt)"
    return None


@pytest.fixture(scope="session")
def vm_cluster(tmp_path_factory) -> VmCluster:
    global _cluster
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    cluster = _cluster = VmCluster(tmp_path_factory.mktemp("vm"))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def pytest_terminal_summary(terminalreporter) -> None:
    """The tier's measured phases (reported, never asserted)."""
    if _cluster and _cluster.timings:
        terminalreporter.section("VM tier timings")
        for label, seconds in _cluster.timings.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {label}")
