"""The relay on real hosts: a cold setup sends the installer across the controller's link about
once (counted by the lab bridge's own TX counter, not by the tool), every host runs exactly that
installer, nothing is left behind; a host killed mid-relay leaves the others complete and is
completed by a re-run; `conda_installer_source: hosts` has each host download it itself."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from provision.lab import Lab, processes
from provision.relay.scripts import AGENT

PREFIX = "/opt/miniconda3"
INSTALLER_MB = 24          # big enough that SSH's own traffic is a small part of the count
RECORD = f"{PREFIX}/.installer-sha256"
TARGET_RATIO = 1.5


@pytest.fixture(scope="module")
def big_installer(installer_double, tmp_path_factory) -> Path:
    """The installer double, padded (like the real one, with a payload the shell never reads)
    and recording its own sha256 in the prefix, so each host says which installer it ran."""
    text = installer_double.read_text()
    venv = '"$BASE_PYTHON" -m venv --without-pip --system-site-packages "$PREFIX"\n'
    end = "\nexit 0\n@@CONDA_DOUBLE@@\n"
    assert venv in text and end in text, "the installer double changed: update this test"
    noise = os.urandom(INSTALLER_MB << 19).hex()       # as incompressible as text gets
    padding = "".join(f"# {noise[i:i + 96]}\n" for i in range(0, len(noise), 96))
    text = text.replace(venv, f"sha256sum \"$0\" | cut -d' ' -f1 > {RECORD}\n{venv}", 1)
    path = tmp_path_factory.mktemp("big") / installer_double.name
    path.write_text(text.replace(end, f"\nexit 0\n{padding}@@CONDA_DOUBLE@@\n", 1))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bridge_tx(lab: Lab) -> int:
    """Bytes the controller sent into the lab: its side of the bridge."""
    return int(Path(f"/sys/class/net/{lab.bridge}/statistics/tx_bytes").read_text())


def wipe(lab: Lab, names: list[str]) -> None:
    for name in names:
        lab.sh(name, f"rm -rf {PREFIX} /opt/.provision-relay")


def setup_json(cli, *args, timeout: float = 600) -> tuple[int, dict]:
    done = cli("setup", *args, "--json", timeout=timeout)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON report: {done.stdout}{done.stderr}")


def installed_with(lab: Lab, name: str) -> str:
    return lab.sh(name, f"cat {RECORD} 2>/dev/null || :").stdout.strip()


def assert_nothing_left(lab: Lab, names: list[str], port: int = 29500) -> None:
    for name in names:
        assert lab.sh(name, "test -e /opt/.provision-relay", check=False).returncode == 1, name
        assert lab.sh(name, f"ss -Htln 'sport = :{port}'").stdout.strip() == "", name
        assert not relay_processes(lab, name), name


def init_pids(lab: Lab) -> dict[str, int]:
    return {status.name: status.init_pid for status in lab.status()}


def relay_processes(lab: Lab, name: str) -> list[int]:
    namespace = processes.pid_namespace(init_pids(lab)[name])
    return [pid for pid in processes.pids() if is_agent(processes.cmdline(pid))
            and processes.pid_namespace(pid) == namespace]


def serving_host(namespaces: dict[str, str]) -> str | None:
    """The host whose relay program is serving a peer right now, if any."""
    for pid in processes.pids():
        if is_agent(processes.cmdline(pid), "serve"):
            host = next((n for n, ns in namespaces.items()
                         if ns == processes.pid_namespace(pid)), None)
            if host is not None:
                return host
    return None


def is_agent(argv: list[str], mode: str | None = None) -> bool:
    return len(argv) > 5 and argv[4] == AGENT and (mode is None or argv[5] == mode)


def test_a_cold_setup_sends_the_installer_once_and_leaves_nothing(lab, make_inventory, cli,
                                                                  big_installer):
    names = [h.name for h in lab.hosts]          # three training hosts and one outside
    wipe(lab, names)
    sha256 = sha256_of(big_installer)
    inventory = make_inventory(vars={"conda_installer_path": str(big_installer),
                                     "conda_installer_sha256": sha256,
                                     "cluster_cidr": str(lab.subnet)})
    before = bridge_tx(lab)
    code, report = setup_json(cli, inventory, "--role", "firewall", "--role", "conda")
    sent = bridge_tx(lab) - before
    assert code == 0, report
    size = big_installer.stat().st_size
    ratio = sent / size
    print(f"controller TX {sent} bytes for a {size}-byte installer on {len(names)} hosts: "
          f"{ratio:.3f}x")
    assert ratio < TARGET_RATIO, json.dumps(report["transfers"])
    (installer,) = [t for t in report["transfers"] if t["sha256"] == sha256]
    assert installer["controller_bytes"] == size and len(installer["from_controller"]) == 1
    assert sorted(installer["from_controller"] + list(installer["from_peers"])) == sorted(names)
    # The host outside the training group received, but serves nobody: no port was opened on it.
    outside = lab.hosts[-1].name
    assert outside not in installer["from_peers"].values()
    for name in names:
        assert installed_with(lab, name) == sha256, name
    assert_nothing_left(lab, names)
    code, again = setup_json(cli, inventory, "--role", "conda")
    assert code == 0 and again["transfers"] == []


def scratch_inventory(lab: Lab, path: Path, installer: Path) -> Path:
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["all"]["vars"].update(conda_installer_path=str(installer),
                                   conda_installer_sha256=sha256_of(installer))
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_a_host_killed_mid_relay_leaves_the_others_complete_and_a_rerun_completes_it(
        scratch_lab, big_installer, tmp_path, cli):
    scratch_lab.up(4)
    names = [h.name for h in scratch_lab.hosts]
    inventory = scratch_inventory(scratch_lab, tmp_path / "inventory.yaml", big_installer)
    setup = subprocess.Popen([sys.executable, "-m", "provision", "setup", str(inventory),
                              "--role", "conda", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    inits = init_pids(scratch_lab)
    namespaces = {name: processes.pid_namespace(pid) for name, pid in inits.items()}
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and setup.poll() is None and time.monotonic() < deadline:
        victim = serving_host(namespaces)
    assert victim is not None, "no host ever served a peer"
    os.kill(inits[victim], signal.SIGKILL)      # the whole host at once, mid-transfer
    stdout, stderr = setup.communicate(timeout=600)
    hosts = {h["host"]: h for h in json.loads(stdout)["hosts"]}
    assert hosts[victim]["status"] in ("unreachable", "failed"), hosts[victim]
    sha256 = sha256_of(big_installer)
    for name in names:
        if name != victim:
            assert hosts[name]["status"] in ("ok", "changed"), hosts[name]
            assert installed_with(scratch_lab, name) == sha256, name

    scratch_lab.up(4)                            # the host boots again, its disk as it was
    code, report = setup_json(cli, inventory, "--role", "conda")
    assert code == 0, report
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts[victim]["counts"]["changed"] >= 1
    assert [hosts[n]["counts"]["changed"] for n in names if n != victim] == [0] * 3
    assert installed_with(scratch_lab, victim) == sha256
    assert_nothing_left(scratch_lab, names)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:
        self.requests.append(self.path)


def test_hosts_download_the_installer_themselves_when_told_to(lab, make_inventory, cli,
                                                              big_installer):
    names = [h.name for h in lab.hosts[:3]]
    wipe(lab, names)
    address = str(lab.subnet.network_address + 1)          # the controller's side of the bridge
    handler = functools.partial(_Quiet, directory=str(big_installer.parent))
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{address}:{server.server_port}/{big_installer.name}"
        sha256 = sha256_of(big_installer)
        inventory = make_inventory(hosts=names, vars={
            "conda_installer_source": "hosts", "conda_installer_url": url,
            "conda_installer_sha256": sha256})
        code, report = setup_json(cli, inventory, "--role", "conda")
    finally:
        server.shutdown()
    assert code == 0, report
    for name in names:
        assert installed_with(lab, name) == sha256
    assert _Quiet.requests.count(f"/{big_installer.name}") == len(names)
    assert [t for t in report["transfers"] if t["sha256"] == sha256] == []


def test_on_a_terminal_the_installer_push_shows_how_much_has_reached_the_host(
        scratch_lab, big_installer, tmp_path, terminal):
    scratch_lab.up(2)
    inventory = scratch_inventory(scratch_lab, tmp_path / "inventory.yaml", big_installer)
    code, screen = terminal("setup", inventory, "--role", "conda", columns=160)
    assert code == 0, screen
    size = big_installer.stat().st_size / 2**20
    sent = {int(done) for done, total in re.findall(r", \S+: (\d+)/(\d+) MB sent", screen)
            if abs(int(total) - size) <= 1}
    assert sent and max(sent) > 0, screen[-3000:]
