"""Firewall facts parsed from captured tool output (tests/fixtures/firewall) and the plans the
firewall_open operation makes from them, for each backend; the role's default sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from provision.facts.files import PathInfo, PathState
from provision.facts.system import Os, OsInfo, ServiceState
from provision.facts.firewall import (TAG, Firewalld, FirewallInfo, FirewallState,
                                      parse_firewalld_zone, parse_iptables, parse_nft_json,
                                      parse_ufw_status)
from provision.inventory import Host, load_inventory
from provision.operations import REGISTRY, Change, Failure, HostContext, NoChange
from provision.operations.firewall import (Wanted, choose_backend, iptables_saved_rules,
                                               nft_rules_file, parse_ports, parse_sources)
from provision.roles import evaluate, load_role, render
from provision.roles import template_variables

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "firewall"
ARGS = {"ports": ["29500", "40000-40100"], "sources": ["10.0.0.1", "10.0.0.2"],
        "backend": "auto", "nftables_file": "/etc/nftables.d/provision-training.nft",
        "nftables_conf": "/etc/nftables.conf", "iptables_rules_file": "/etc/iptables/rules.v4"}
DEBIAN_CONF = "#!/usr/sbin/nft -f\n\nflush ruleset\n"
CTX = HostContext(Host("n1", "10.0.0.1"))


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def wanted(ports=("29500", "40000-40100"), sources=("10.0.0.1", "10.0.0.2")) -> Wanted:
    return Wanted(parse_ports(list(ports)), *parse_sources(list(sources)))


def file_info(content: str | None, mode: str = "644") -> PathInfo | None:
    if content is None:
        return None
    data = content.encode()
    return PathInfo("file", mode, "root", "root", len(data), hashlib.sha256(data).hexdigest(), data)


def plan(info: FirewallInfo, args: dict | None = None, files: dict | None = None,
         systemd: bool = False, unit_enabled: bool = False):
    args = {**ARGS, **(args or {})}
    files = {"nftables_conf": DEBIAN_CONF, **(files or {})}
    facts = {FirewallState(): info,
             Os(): OsInfo("debian", (), "12", "x86_64", "apt", systemd),
             ServiceState("nftables.service"): (unit_enabled, False)}
    for key in ("nftables_file", "nftables_conf", "iptables_rules_file"):
        facts[PathState(args[key], True)] = file_info(files.get(key))
    return REGISTRY["firewall_open"].plan(args, facts, CTX)


def scripts(outcome: Change) -> list[str]:
    return [(c.stdin or b"").decode() for c in outcome.commands]


# -- parsers -------------------------------------------------------------------------------------

def test_nft_parser_reads_base_chains_policies_and_tagged_rules():
    baseline = parse_nft_json(text("nft-baseline-drop.json"))
    [chain] = baseline.input_chains()
    assert (chain.family, chain.table, chain.name, chain.policy) == \
        ("inet", "filter", "input", "drop")
    assert baseline.drops_input(chain)
    ours = parse_nft_json(text("nft-ours.json"))
    tagged = [r for r in ours.rules if (r.comment or "").startswith(TAG)]
    assert {(r.table, frozenset(r.verdicts)) for r in tagged} == {
        ("filter", frozenset({"accept"})), ("provision_training", frozenset({"return"})),
        ("provision_training", frozenset({"drop"}))}
    assert parse_nft_json(text("nft-empty.json")).chains == ()


def test_nft_parser_tells_iptables_nft_tables_apart():
    ruleset = parse_nft_json(text("nft-iptables-nft-tables.json"))
    assert ruleset.is_iptables_table("ip", "filter")
    assert not parse_nft_json(text("nft-baseline-drop.json")).is_iptables_table("inet", "filter")


@pytest.mark.parametrize("name, backend", [("iptables-nft-baseline.txt", "nf_tables"),
                                           ("iptables-legacy-baseline.txt", "legacy")])
def test_iptables_parser(name, backend):
    table = parse_iptables(text(name))
    assert table.backend == backend
    assert table.policy("INPUT") == "DROP" and table.filters_input() and table.drops_input()
    assert "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in table.rules
    assert "# Generated" not in table.save        # timestamps would make the saved file churn


def test_ufw_parser_reads_rules_comments_and_ipv6_duplicates():
    status = parse_ufw_status(text("ufw-status-ours.txt"))
    assert status.active and status.default_incoming == "deny"
    ours = [r for r in status.rules if r.comment and r.comment.startswith(TAG)]
    assert [(r.to, r.action, r.source, r.v6) for r in ours] == [
        ("29500/tcp", "ALLOW IN", "10.0.0.0/24", False),
        ("40000:40100/tcp", "ALLOW IN", "10.0.0.0/24", False),
        ("29500/tcp", "DENY IN", "Anywhere", False),
        ("40000:40100/tcp", "DENY IN", "Anywhere", False),
        ("29500/tcp", "DENY IN", "Anywhere", True),
        ("40000:40100/tcp", "DENY IN", "Anywhere", True)]
    assert ("8080/tcp", "192.168.1.0/24", "web admin") in \
        [(r.to, r.source, r.comment) for r in status.rules]
    assert not parse_ufw_status(text("ufw-status-inactive.txt")).active


def test_firewalld_parser():
    zone = parse_firewalld_zone(text("firewalld-list-all-ours.txt"))
    assert zone.name == "public" and zone.target == "default" and len(zone.rich_rules) == 5
    assert parse_firewalld_zone(text("firewalld-list-all-trusted.txt")).target == "ACCEPT"


def test_fact_splits_the_tools_sections():
    stdout = "\n".join(["@@provision-firewall ufw", text("ufw-status-inactive.txt"),
                        "@@provision-firewall nft", text("nft-baseline-drop.json"),
                        "@@provision-firewall iptables", text("iptables-nft-baseline.txt")])
    info = FirewallState().parse(stdout, 0)
    assert info.ufw is not None and not info.ufw.active and info.firewalld is None
    assert info.nft.input_chains() and info.iptables.policy("INPUT") == "DROP"
    with pytest.raises(ValueError, match="needs root"):
        FirewallState().parse("@@provision-firewall nft\n", 0)


# -- backend choice and inputs -------------------------------------------------------------------

def infos():
    nft = parse_nft_json(text("nft-baseline-drop.json"))
    ipt_used = parse_iptables(text("iptables-nft-baseline.txt"))
    ipt_idle = parse_iptables("iptables v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    return nft, ipt_used, ipt_idle


@pytest.mark.parametrize("case, expected", [
    ("ufw active", "ufw"), ("firewalld", "firewalld"), ("iptables in use", "iptables"),
    ("nft and idle iptables", "nftables"), ("idle iptables only", "iptables"), ("nothing", None)])
def test_backend_choice(case, expected):
    nft, ipt_used, ipt_idle = infos()
    zone = parse_firewalld_zone(text("firewalld-list-all-baseline.txt"))
    info = {"ufw active": FirewallInfo(ufw=parse_ufw_status(text("ufw-status-baseline.txt")),
                                       nft=nft, iptables=ipt_used),
            "firewalld": FirewallInfo(firewalld=Firewalld(zone, zone), nft=nft),
            "iptables in use": FirewallInfo(nft=nft, iptables=ipt_used),
            "nft and idle iptables": FirewallInfo(
                ufw=parse_ufw_status(text("ufw-status-inactive.txt")), nft=nft, iptables=ipt_idle),
            "idle iptables only": FirewallInfo(iptables=ipt_idle),
            "nothing": FirewallInfo()}[case]
    assert choose_backend(info, "auto") == expected


def test_ports_merge_and_sources_collapse():
    assert parse_ports(["40000-40100", "29500", 40050, "40101-40200"]) == \
        ((29500, 29500), (40000, 40200))
    v4, v6 = parse_sources(["10.0.0.1", "10.0.0.0/30", "fd00::1"])
    assert [str(n) for n in v4] == ["10.0.0.0/30"] and [str(n) for n in v6] == ["fd00::1/128"]


@pytest.mark.parametrize("args, message", [
    ({"sources": []}, "training` group or set cluster_cidr"),
    ({"sources": ["node1.example.com"]}, "'node1.example.com' is not an IP address"),
    ({"sources": ["10.0.0.1; rm -rf /"]}, "is not an IP address"),
    ({"ports": ["29500$(reboot)"]}, "is not a port"),
    ({"ports": ["40100-40000"]}, "is not a port"),
    ({"ports": ["70000"]}, "is not a port"),
    ({"nftables_file": '/etc/x".nft'}, "cannot be included")])
def test_bad_inputs_fail_with_the_fix(args, message):
    outcome = plan(FirewallInfo(nft=parse_nft_json(text("nft-empty.json"))), args)
    assert isinstance(outcome, Failure) and message in outcome.reason


def test_no_firewall_tool_says_what_to_install():
    outcome = plan(FirewallInfo())
    assert isinstance(outcome, Failure) and "install nftables" in outcome.reason


# -- nftables ------------------------------------------------------------------------------------

def test_nftables_first_run_applies_live_then_persists():
    outcome = plan(FirewallInfo(nft=parse_nft_json(text("nft-baseline-drop.json"))))
    assert isinstance(outcome, Change)
    live, _, rules_file, conf = scripts(outcome)
    # Live first: a file nft refuses never reaches the boot configuration.
    assert outcome.commands[0].run == ["nft", "-f", "-"]
    assert "insert rule inet filter input ip saddr { 10.0.0.1/32, 10.0.0.2/32 } " \
           "tcp dport { 29500, 40000-40100 } accept" in live
    assert "ip saddr != @cluster4 drop" in live and "delete rule" not in live
    assert rules_file == live
    assert conf == DEBIAN_CONF + 'include "/etc/nftables.d/provision-training.nft"\n'
    assert ".provision-backup" in outcome.commands[3].run         # conf edited with a backup


def test_nftables_applied_state_is_no_change():
    baseline = parse_nft_json(text("nft-baseline-drop.json"))
    content = nft_rules_file(wanted(), baseline.input_chains())
    outcome = plan(FirewallInfo(nft=parse_nft_json(text("nft-ours.json"))), files={
        "nftables_file": content,
        "nftables_conf": DEBIAN_CONF + 'include "/etc/nftables.d/provision-training.nft"\n'})
    assert isinstance(outcome, NoChange), outcome


def test_nftables_new_sources_replace_our_rule_and_nothing_else():
    outcome = plan(FirewallInfo(nft=parse_nft_json(text("nft-ours.json"))),
                   {"sources": ["10.0.0.0/24"]})
    live = scripts(outcome)[0]
    assert live.startswith("delete rule inet filter input handle 7\n")   # our old accept only
    assert live.count("delete rule") == 1 and "10.0.0.0/24" in live


def test_nftables_leaves_iptables_nft_tables_alone_and_says_when_they_block():
    outcome = plan(FirewallInfo(nft=parse_nft_json(text("nft-iptables-nft-tables.json"))),
                   {"backend": "nftables"})
    assert isinstance(outcome, Failure) and "firewall_backend: iptables" in outcome.reason


def test_nftables_refuses_table_names_it_cannot_write_safely():
    raw = text("nft-baseline-drop.json").replace('"table": "filter"', '"table": "x\\" y"')
    raw = raw.replace('"name": "filter"', '"name": "x\\" y"')
    outcome = plan(FirewallInfo(nft=parse_nft_json(raw)))
    assert isinstance(outcome, Failure) and "cannot name" in outcome.reason


# -- iptables ------------------------------------------------------------------------------------

def test_iptables_first_run_restores_without_flushing_and_saves():
    table = parse_iptables(text("iptables-nft-baseline.txt"))
    outcome = plan(FirewallInfo(iptables=table))
    assert isinstance(outcome, Change)
    assert outcome.commands[0].run == ["iptables-restore", "--noflush"]
    restore, _, saved = scripts(outcome)
    assert "-I INPUT 1 -m comment" in restore and "-D INPUT" not in restore
    assert "-A PROVISION-TRAINING -s 10.0.0.1/32 -p tcp -m tcp --dport 40000:40100" in restore
    lines = saved.splitlines()
    # Ours first among INPUT's rules; the baseline's rules kept, in their order.
    inputs = [line for line in lines if line.startswith("-A INPUT")]
    assert "PROVISION-TRAINING" in inputs[0] and inputs[1:] == table.chain_rules("INPUT")
    assert ":INPUT DROP [0:0]" in lines


def test_iptables_legacy_uses_legacy_restore():
    outcome = plan(FirewallInfo(iptables=parse_iptables(text("iptables-legacy-baseline.txt"))))
    assert outcome.commands[0].run == ["iptables-legacy-restore", "--noflush"]


def test_iptables_applied_state_is_no_change():
    table = parse_iptables(text("iptables-nft-baseline.txt"))
    saved = iptables_saved_rules(table.save, wanted())
    after = parse_iptables("iptables v1.8.9 (nf_tables)\n" + saved)
    assert isinstance(plan(FirewallInfo(iptables=after),
                           files={"iptables_rules_file": saved}), NoChange)
    # The same again with the saved file: editing is idempotent.
    assert iptables_saved_rules(saved, wanted()) == saved


def test_iptables_refuses_ipv6_and_nftables_drop_chains():
    table = parse_iptables(text("iptables-nft-baseline.txt"))
    v6 = plan(FirewallInfo(iptables=table), {"sources": ["fd00::1"]})
    assert isinstance(v6, Failure) and "nftables" in v6.reason
    both = plan(FirewallInfo(iptables=table, nft=parse_nft_json(text("nft-baseline-drop.json"))))
    assert isinstance(both, Failure) and "firewall_backend: nftables" in both.reason


# -- ufw -----------------------------------------------------------------------------------------

def test_ufw_first_run_prepends_allows_above_denies():
    outcome = plan(FirewallInfo(ufw=parse_ufw_status(text("ufw-status-baseline.txt"))))
    argvs = [c.run for c in outcome.commands]
    assert all(a[:2] == ["ufw", "prepend"] for a in argvs)
    # Prepending bottom-up: the last command's rule ends on top.
    assert argvs[-1][2:] == ["allow", "proto", "tcp", "from", "10.0.0.1", "to", "any", "port",
                             "29500", "comment", wanted().tag]
    assert argvs[0][2:10] == ["deny", "proto", "tcp", "from", "any", "to", "any", "port"]


def test_ufw_applied_state_is_no_change():
    outcome = plan(FirewallInfo(ufw=parse_ufw_status(text("ufw-status-ours.txt"))),
                   {"sources": ["10.0.0.0/24"]})
    assert isinstance(outcome, NoChange), outcome


def test_ufw_change_deletes_only_its_own_rules():
    outcome = plan(FirewallInfo(ufw=parse_ufw_status(text("ufw-status-ours.txt"))))
    deletes = [c.run for c in outcome.commands if "delete" in c.run]
    assert len(deletes) == 4 and not any("8080" in a or "22" in a for a in deletes)


def test_ufw_inactive_fails_with_the_fix():
    outcome = plan(FirewallInfo(ufw=parse_ufw_status(text("ufw-status-inactive.txt"))),
                   {"backend": "ufw"})
    assert isinstance(outcome, Failure) and "ufw enable" in outcome.reason


# -- firewalld -----------------------------------------------------------------------------------

def firewalld(runtime: str, permanent: str) -> FirewallInfo:
    return FirewallInfo(firewalld=Firewalld(parse_firewalld_zone(text(runtime)),
                                            parse_firewalld_zone(text(permanent))))


def test_firewalld_adds_rich_rules_runtime_and_permanent():
    outcome = plan(firewalld("firewalld-list-all-baseline.txt", "firewalld-list-all-ours.txt"))
    assert [c.run[1] for c in outcome.commands] == ["--zone=public"] * 4   # runtime only missing
    assert outcome.commands[0].run[2] == (
        '--add-rich-rule=rule family="ipv4" source address="10.0.0.1" port port="29500" '
        'protocol="tcp" accept')
    fresh = plan(firewalld("firewalld-list-all-baseline.txt", "firewalld-list-all-baseline.txt"))
    assert sum("--permanent" in c.run for c in fresh.commands) == 4


def test_firewalld_applied_state_is_no_change_and_accept_all_zone_fails():
    assert isinstance(plan(firewalld("firewalld-list-all-ours.txt",
                                     "firewalld-list-all-ours.txt")), NoChange)
    outcome = plan(firewalld("firewalld-list-all-trusted.txt", "firewalld-list-all-trusted.txt"))
    assert isinstance(outcome, Failure) and "target ACCEPT" in outcome.reason


# -- the role's defaults -------------------------------------------------------------------------

INVENTORY = """all:
  vars: {user: root}
  hosts:
    a: {address: 10.0.0.1}
    b: {address: 10.0.0.2}
    c: {address: 10.0.0.9}
  children:
    training: {hosts: {a: {}, b: {}}}
"""


@pytest.mark.parametrize("extra, host, expected", [
    ("", "a", ["10.0.0.1", "10.0.0.2"]),
    ("    cluster_cidr: 10.0.0.0/24\n", "a", ["10.0.0.0/24"]),
    ("    firewall_sources: [192.168.0.0/16]\n", "b", ["192.168.0.0/16"]),
    ("", "c", None)])                         # outside the training group: not touched
def test_role_sources_default_to_the_training_hosts(tmp_path, extra, host, expected):
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY.replace("  vars: {user: root}\n",
                                      "  vars:\n    user: root\n" + extra))
    inventory = load_inventory(path)
    role = load_role("firewall")
    [task] = role.tasks
    variables = template_variables(inventory, inventory.hosts[host], role)
    if expected is None:
        assert not evaluate(task.when, variables)
        return
    assert evaluate(task.when, variables)
    args = render(task.args, variables)
    assert args["sources"] == expected and args["ports"] == ["29500"]


def test_nftables_service_is_enabled_for_boot_on_systemd_hosts_never_started():
    """Debian ships nftables.service disabled: the rules file would never load at boot."""
    baseline = parse_nft_json(text("nft-baseline-drop.json"))
    files = {"nftables_file": nft_rules_file(wanted(), baseline.input_chains()),
             "nftables_conf": DEBIAN_CONF + 'include "/etc/nftables.d/provision-training.nft"\n'}
    ours = FirewallInfo(nft=parse_nft_json(text("nft-ours.json")))
    outcome = plan(ours, files=files, systemd=True)
    assert isinstance(outcome, Change)
    assert [c.run for c in outcome.commands] == [["systemctl", "enable", "nftables.service"]]
    assert "nftables.service enabled at boot" in outcome.description
    assert isinstance(plan(ours, files=files, systemd=True, unit_enabled=True), NoChange)
