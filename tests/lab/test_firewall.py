"""The firewall role against real nftables and real iptables in each lab host, proved by TCP
connects between hosts: a training host gets through, the host outside the cluster does not.

Each test installs a hardened baseline (input dropped, SSH allowed) so that nothing connects
before the role runs, and removes every rule and file it made at the end: later lab tests train
across the training hosts on port 29500.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

RULES_FILE = "/etc/nftables.d/provision-training.nft"
NFT_BASELINE = """table inet baseline {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    tcp dport 22 accept
  }
}
"""
IPTABLES_BASELINE = ("iptables -P INPUT DROP; "
                     "iptables -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT; "
                     "iptables -A INPUT -i lo -j ACCEPT; "
                     "iptables -A INPUT -p tcp --dport 22 -j ACCEPT")
LISTENER = ("import socket, sys\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(64)\n"
            "while True: s.accept()[0].close()\n")
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)"
# Undoes everything either test may have made in a host, whichever backend it used.
CLEANUP = (f"nft delete table inet provision_training 2>/dev/null; "
           f"nft delete table inet baseline 2>/dev/null; "
           f"iptables -P INPUT ACCEPT; iptables -F INPUT; "
           f"iptables -F PROVISION-TRAINING 2>/dev/null; "
           f"iptables -X PROVISION-TRAINING 2>/dev/null; "
           f"rm -f {RULES_FILE} /etc/iptables/rules.v4 /etc/iptables/rules.v4.provision-backup; "
           f"rmdir /etc/nftables.d /etc/iptables 2>/dev/null; "
           f"if [ -e /etc/nftables.conf.provision-backup ]; then "
           f"mv /etc/nftables.conf.provision-backup /etc/nftables.conf; "
           f"else sed -i '\\|provision-training|d' /etc/nftables.conf; fi; true")


def connects(lab, source: str, target: str, port: int) -> bool:
    done = lab.sh(source, f"python3 -c '{CONNECT}' {lab.host(target).address} {port}",
                  check=False, timeout=10)
    return done.returncode == 0


@contextmanager
def listening(lab, host: str, ports: list[int]):
    pids = [lab.sh(host, f"python3 -c \"{LISTENER}\" {port} >/dev/null 2>&1 & echo $!")
            .stdout.strip() for port in ports]
    try:
        lab.sh(host, "for i in $(seq 50); do ss -Htln | grep -q ':29500 ' && exit 0; "
                     "sleep 0.1; done; exit 1")
        yield
    finally:
        lab.sh(host, f"kill {' '.join(pids)}", check=False)


# iptables by `iptables -S`, as iptables-nft creates its empty built-in chains lazily.
SNAPSHOT = ("nft -s list ruleset inet; iptables -S; ip6tables -S; "
            "cat /etc/nftables.conf; "
            "ls /etc/nftables.d /etc/iptables /etc/ufw 2>&1; grep ENABLED /etc/ufw/ufw.conf; true")


@pytest.fixture
def hosts(lab):
    """(target, other training host, host outside the cluster), cleaned before and after:
    each host must end as the test found it."""
    names = [h.name for h in lab.hosts]
    found = {}
    for name in names:
        lab.sh(name, CLEANUP)
        found[name] = lab.sh(name, SNAPSHOT).stdout
    yield names[0], names[1], names[3]
    for name in names:
        lab.sh(name, CLEANUP)
        assert lab.sh(name, SNAPSHOT).stdout == found[name], f"{name} was not left as found"


def setup(cli, inventory, *extra):
    done = cli("setup", inventory, "--role", "firewall", "--json", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return {h["host"]: h for h in json.loads(done.stdout)["hosts"]}


def assert_open_to_cluster_only(lab, target, peer, outsider):
    assert connects(lab, peer, target, 29500)
    assert connects(lab, peer, target, 40050)           # inside the extra range
    assert not connects(lab, outsider, target, 29500)
    assert not connects(lab, outsider, target, 40050)


def assert_second_run_changes_nothing(cli, inventory, training):
    second = setup(cli, inventory, "--limit", ",".join(training))
    for name in training:
        assert second[name]["counts"]["changed"] == 0, second[name]
        assert second[name]["round_trips"] == 1


def test_nftables_opens_training_ports_to_the_cluster_only(lab, make_inventory, cli, hosts):
    target, peer, outsider = hosts
    training = [h.name for h in lab.hosts[:3]]
    for name in training:
        lab.sh(name, f"nft -f - <<'EOF'\n{NFT_BASELINE}EOF")
    inventory = make_inventory(vars={"firewall_extra_ports": ["40000-40100"]})
    with listening(lab, target, [29500, 40050]):
        assert not connects(lab, peer, target, 29500)
        assert not connects(lab, outsider, target, 29500)

        before = lab.sh(target, "nft -s list ruleset; cat /etc/nftables.conf").stdout
        checked = setup(cli, inventory, "--check")
        assert checked[target]["status"] == "changed"
        assert lab.sh(target, "nft -s list ruleset; cat /etc/nftables.conf").stdout == before
        assert lab.sh(target, f"[ ! -e {RULES_FILE} ]", check=False).returncode == 0

        first = setup(cli, inventory)
        assert {first[n]["status"] for n in training} == {"changed"}
        assert first[outsider]["status"] == "skipped"
        assert_open_to_cluster_only(lab, target, peer, outsider)
        assert "tcp dport 22 accept" in lab.sh(target, "nft list table inet baseline").stdout
        assert_second_run_changes_nothing(cli, inventory, training)

        # Our rules stand on their own once the baseline that needed the accept rule is gone.
        lab.sh(target, "nft delete table inet baseline")
        assert_open_to_cluster_only(lab, target, peer, outsider)

        # A reboot: the boot configuration alone brings the rules back.
        assert f'include "{RULES_FILE}"' in lab.sh(target, "cat /etc/nftables.conf").stdout
        lab.sh(target, "nft flush ruleset; nft -f /etc/nftables.conf")
        try:
            assert_open_to_cluster_only(lab, target, peer, outsider)
        finally:
            lab.sh(target, "nft flush ruleset")   # what the boot configuration loaded too


def test_iptables_opens_training_ports_to_the_cluster_only(lab, make_inventory, cli, hosts):
    target, peer, outsider = hosts
    training = [h.name for h in lab.hosts[:3]]
    for name in training:
        lab.sh(name, IPTABLES_BASELINE)
    inventory = make_inventory(vars={"firewall_extra_ports": ["40000-40100"]})
    with listening(lab, target, [29500, 40050]):
        assert not connects(lab, peer, target, 29500)

        before = lab.sh(target, "iptables-save | grep -v '^#'; nft -s list ruleset").stdout
        checked = setup(cli, inventory, "--check")
        assert checked[target]["status"] == "changed"
        assert lab.sh(target, "iptables-save | grep -v '^#'; nft -s list ruleset").stdout == before

        first = setup(cli, inventory)
        assert {first[n]["status"] for n in training} == {"changed"}
        assert "iptables" in json.dumps(first[target])
        assert_open_to_cluster_only(lab, target, peer, outsider)
        # Nothing of ours went to nftables: iptables was what this host ran.
        assert "provision_training" not in lab.sh(target, "nft list tables").stdout
        assert_second_run_changes_nothing(cli, inventory, training)

        # The baseline goes; our chain and its jump stay.
        lab.sh(target, "iptables -P INPUT ACCEPT; iptables-save | grep '^-A INPUT' | "
                       "grep -v PROVISION-TRAINING | sed 's/^-A/-D/' | "
                       "while read -r rule; do eval iptables $rule; done")
        assert_open_to_cluster_only(lab, target, peer, outsider)

        # A reboot: the saved rules alone bring everything back, ours first in INPUT.
        lab.sh(target, "iptables -F; iptables -X; iptables -P INPUT ACCEPT; "
                       "iptables-restore < /etc/iptables/rules.v4")
        assert_open_to_cluster_only(lab, target, peer, outsider)
        assert "PROVISION-TRAINING" in lab.sh(target, "iptables -S INPUT 1").stdout


def test_ufw_opens_training_ports_to_the_cluster_only(lab, make_inventory, cli, hosts):
    target, peer, outsider = hosts
    if lab.sh(target, "command -v ufw", check=False).returncode != 0:
        pytest.skip("ufw is not installed on this machine (the Makefile's APT_PACKAGES)")
    inventory = make_inventory(vars={"firewall_extra_ports": ["40000-40100"]})
    # ufw keeps its state under /etc/ufw: saved here, in the host's private /tmp, and put back.
    lab.sh(target, "rm -rf /tmp/ufw-saved && cp -a /etc/ufw /tmp/ufw-saved && "
                   "ufw allow 22/tcp >/dev/null && ufw --force enable >/dev/null")
    try:
        with listening(lab, target, [29500, 40050]):
            assert not connects(lab, peer, target, 29500)
            first = setup(cli, inventory, "--limit", target)
            assert first[target]["status"] == "changed"
            assert_open_to_cluster_only(lab, target, peer, outsider)
            status = lab.sh(target, "ufw status").stdout
            assert "22/tcp" in status and status.count("provision-training") >= 4
            assert_second_run_changes_nothing(cli, inventory, [target])
    finally:
        lab.sh(target, "ufw --force disable >/dev/null; rm -rf /etc/ufw && "
                       "cp -a /tmp/ufw-saved /etc/ufw && rm -rf /tmp/ufw-saved; "
                       "for tool in iptables ip6tables; do "
                       "chains=$($tool-save | sed -n 's/^:\\(ufw6*-[^ ]*\\).*/\\1/p'); "
                       "for c in $chains INPUT OUTPUT FORWARD; do $tool -F $c; done; "
                       "for c in $chains; do $tool -X $c; done; done")
