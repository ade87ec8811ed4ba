"""The ntp role against real chronyd on lab hosts: the first training host serves its own clock
(`local stratum 8`, `allow` the lab's subnet), the other two follow it.

chronyd runs with -x (ntp_chronyd_options) so that it serves and tracks time without touching
the machine's clock, which every lab host shares; its pidfile, socket and state are private to
each host (/run and /var are per host). Every chronyd these tests start is stopped at the end,
and the hosts get their original chrony.conf back.
"""

from __future__ import annotations

import json
import time

import pytest

PIDFILE = "/run/chrony/chronyd.pid"
CONF = "/etc/chrony/chrony.conf"


def chronyd_pid(lab, host: str) -> int | None:
    """The PID of the host's chronyd, read inside the host (its own PID namespace)."""
    out = lab.sh(host, f"pid=$(cat {PIDFILE} 2>/dev/null) && [ -d /proc/$pid ] && echo $pid; "
                       "true").stdout.strip()
    return int(out) if out else None


def stop_chronyd(lab, host: str) -> None:
    """TERM the host's chronyd (by its pidfile's PID) and wait until it has exited."""
    lab.sh(host, f"pid=$(cat {PIDFILE} 2>/dev/null) || exit 0; kill $pid 2>/dev/null; "
                 "for i in $(seq 50); do [ -d /proc/$pid ] || exit 0; sleep 0.1; done; exit 1")


def host_state(lab, host: str) -> str:
    """What the role could change on a host, read without SSH."""
    return lab.sh(host, "sha256sum /etc/chrony/* 2>/dev/null; ls -la /run/chrony 2>&1; "
                        "pidof chronyd; true").stdout


def by_host(done) -> dict[str, dict]:
    return {h["host"]: h for h in json.loads(done.stdout)["hosts"]}


def task(report: dict, name: str) -> dict:
    [found] = [t for t in report["tasks"] if t["task"] == name]
    return found


def unconfigure(lab, host: str) -> None:
    """No chronyd, and the chrony.conf the host had before the role wrote one."""
    stop_chronyd(lab, host)
    lab.sh(host, f"if [ -e {CONF}.provision-backup ]; then mv -f {CONF}.provision-backup {CONF}; "
                 "fi")


@pytest.fixture(scope="module")
def cluster(lab):
    """(server, clients): the training hosts, unconfigured before and after these tests (another
    module's full setup may have configured them; every chronyd started here is stopped)."""
    names = [h.name for h in lab.hosts[:3]]
    for name in names:
        unconfigure(lab, name)
    try:
        yield names[0], names[1:]
    finally:
        for name in names:
            unconfigure(lab, name)


@pytest.fixture
def ntp_inventory(lab, cluster, make_inventory):
    server, clients = cluster
    address = lab.host(server).address

    def make(**extra_vars):
        return make_inventory(
            vars={"ntp_servers": [address], "ntp_chronyd_options": ["-x"], **extra_vars},
            hosts=[server, *clients],
            host_vars={server: {"ntp_local_stratum": 8, "ntp_allow": [str(lab.subnet)]}})
    return make


def test_check_mode_on_unconfigured_hosts_changes_nothing(lab, cluster, ntp_inventory, cli):
    server, clients = cluster
    before = {h: host_state(lab, h) for h in (server, *clients)}
    done = cli("setup", ntp_inventory(), "--role", "ntp", "--check", "--json")
    for name, report in by_host(done).items():
        assert task(report, "chrony configuration")["status"] == "changed"    # would change
        assert task(report, "chronyd running")["status"] == "changed"
        # The check reads the host as it is now: nothing keeps its time yet.
        assert task(report, "clock synchronised")["message"].startswith(
            "no time sync daemon runs (looked for chronyd, ntpd, systemd-timesyncd)")
        assert host_state(lab, name) == before[name]
    assert done.returncode == 3


def test_cluster_synchronises_to_its_own_time_server(lab, cluster, ntp_inventory, cli):
    server, clients = cluster
    address = lab.host(server).address
    inventory = ntp_inventory()
    started = time.monotonic()
    done = cli("setup", inventory, "--role", "ntp", "--json")
    took = time.monotonic() - started
    print(f"\nntp role, first run (configure, start, wait for sync) on 3 hosts: {took:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    reports = by_host(done)
    assert task(reports[server], "clock synchronised")["message"].startswith(
        "chronyd serves its own clock at stratum 8")
    for client in clients:
        assert task(reports[client], "chrony synchronised")["status"] == "changed"   # waited
        assert task(reports[client], "clock synchronised")["message"].startswith(
            f"chronyd synchronised to {address} (stratum 9), offset ")
    # chronyc itself, run inside each host without SSH: the clients follow the server ...
    for client in clients:
        sources = lab.sh(client, "chronyc -n -c sources").stdout
        assert sources.startswith(f"^,*,{address},8,"), sources     # '*': the selected source
        tracking = lab.sh(client, "chronyc -n tracking").stdout
        assert f"({address})" in tracking and "Leap status     : Normal" in tracking
    # ... and the server answered both of them.
    served = lab.sh(server, "chronyc -n -c clients").stdout
    assert {line.split(",")[0] for line in served.splitlines()} >= \
        {lab.host(c).address for c in clients}
    # The skew across hosts, read from the controller, passes (one machine, one clock).
    for report in reports.values():
        skew = task(report, "clocks agree across hosts")
        assert skew["status"] == "ok" and "across 3 hosts (ntp_max_skew_ms 250)" in skew["message"]

    pids = {h: chronyd_pid(lab, h) for h in (server, *clients)}
    again = cli("setup", inventory, "--role", "ntp", "--json")
    assert again.returncode == 0, again.stdout
    for report in by_host(again).values():
        assert report["counts"]["changed"] == 0 and report["counts"]["failed"] == 0, report
        assert report["round_trips"] == 1
        # Nothing changed: the clocks are not read again (that would be a second round trip).
        assert task(report, "clocks agree across hosts")["status"] == "skipped"
    assert {h: chronyd_pid(lab, h) for h in pids} == pids, "nothing was restarted"
    # A check reads them: the facts batch, and one command per host reading its clock.
    checked = cli("check", inventory, "--role", "ntp", "--json")
    assert checked.returncode == 0, checked.stdout
    for report in json.loads(checked.stdout)["hosts"]:
        assert report["round_trips"] == 2 and report["counts"]["changed"] == 0
        assert task(report, "clocks agree across hosts")["status"] == "ok"


def test_client_of_a_stopped_server_is_not_synchronised(lab, cluster, ntp_inventory, cli):
    server, clients = cluster
    address, client = lab.host(server).address, clients[0]
    if chronyd_pid(lab, client) is None:          # run alone: configure the cluster first
        assert cli("setup", ntp_inventory(), "--role", "ntp").returncode == 0
    stop_chronyd(lab, server)
    stop_chronyd(lab, client)
    # The role starts the client's chronyd again and waits for it, in vain.
    inventory = ntp_inventory(ntp_sync_timeout_s=3)
    done = cli("setup", inventory, "--role", "ntp", "--limit", client, "--json")
    assert done.returncode == 3
    report = by_host(done)[client]
    assert task(report, "chronyd running")["status"] == "changed"
    waited = task(report, "chrony synchronised")
    assert waited["status"] == "failed"
    assert (f"chronyd did not synchronise within 3 s (ntp_sync_timeout_s); its sources: "
            f"{address} unreachable") in waited["message"]
    # Checked again, without waiting: the same verdict from the facts alone.
    checked = cli("setup", inventory, "--role", "ntp", "--limit", client, "--check", "--json")
    verdict = task(by_host(checked)[client], "clock synchronised")
    assert verdict["status"] == "failed"
    assert verdict["message"].startswith(
        f"not synchronised: chronyd has no usable time source ({address} unreachable)")
    # Back to normal: the server is started again, and so is the client (which otherwise
    # retries its silent server only at its next, backed-off poll).
    stop_chronyd(lab, client)
    done = cli("setup", ntp_inventory(), "--role", "ntp")
    assert done.returncode == 0, done.stdout
