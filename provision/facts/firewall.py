"""What filters a host's incoming traffic (ufw, firewalld, nftables, iptables) and its rules.

One fact reads every tool the host has, in one snippet; the pure parsers below turn each tool's
output into small records. Rules provision creates carry TAG in their comment (nftables, iptables,
ufw) so they can be told apart from everyone else's and never confused with them.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from provision.facts.base import Fact

TAG = "provision-training"
SECTION = "@@provision-firewall "
# iptables-nft keeps its tables in nftables under these names; they belong to iptables.
IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}
IPTABLES_CHAINS = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}


# -- nftables ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NftChain:
    family: str
    table: str
    name: str
    hook: str | None       # None for a regular (non-base) chain
    policy: str | None


@dataclass(frozen=True)
class NftRule:
    family: str
    table: str
    chain: str
    handle: int
    comment: str | None
    verdicts: frozenset[str]   # accept, drop, reject, jump, ... found in the rule


@dataclass(frozen=True)
class NftRuleset:
    chains: tuple[NftChain, ...]
    rules: tuple[NftRule, ...]

    def rules_of(self, chain: NftChain) -> list[NftRule]:
        return [r for r in self.rules
                if (r.family, r.table, r.chain) == (chain.family, chain.table, chain.name)]

    def input_chains(self) -> list[NftChain]:
        """Base chains on the input hook of the ip, ip6 and inet families."""
        return [c for c in self.chains if c.hook == "input" and c.family in ("ip", "ip6", "inet")]

    def is_iptables_table(self, family: str, table: str) -> bool:
        """A table iptables-nft made (heuristic: its names; nft 1.0.6 does not flag them)."""
        return family in ("ip", "ip6") and table in IPTABLES_TABLES and any(
            c.name in IPTABLES_CHAINS
            for c in self.chains if (c.family, c.table) == (family, table))

    def drops_input(self, chain: NftChain) -> bool:
        return chain.policy == "drop" or any(
            r.verdicts & {"drop", "reject"} for r in self.rules_of(chain))


def _verdicts(value) -> set[str]:
    """The statement keys of a rule's JSON expression (accept, drop, jump, ...), recursively."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("accept", "drop", "reject", "jump", "goto", "return", "queue"):
                found.add(key)
            found |= _verdicts(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _verdicts(inner)
    return found


def parse_nft_json(text: str) -> NftRuleset:
    """`nft -j list ruleset` output."""
    items = json.loads(text)["nftables"]
    chains, rules = [], []
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains.append(NftChain(c["family"], c["table"], c["name"], c.get("hook"),
                                   c.get("policy")))
        elif "rule" in item:
            r = item["rule"]
            rules.append(NftRule(r["family"], r["table"], r["chain"], int(r["handle"]),
                                 r.get("comment"), frozenset(_verdicts(r.get("expr", [])))))
    return NftRuleset(tuple(chains), tuple(rules))


# -- iptables ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IptablesFilter:
    """The filter table as `iptables-save -t filter` prints it."""

    backend: str                          # "nf_tables" or "legacy", from `iptables -V`
    policies: tuple[tuple[str, str], ...]  # (chain, policy or "-") in save order
    rules: tuple[str, ...]                # the "-A CHAIN ..." lines, in order
    save: str                             # the save output without its timestamped comments

    def policy(self, chain: str) -> str | None:
        return dict(self.policies).get(chain)

    def chain_rules(self, chain: str) -> list[str]:
        return [r for r in self.rules if r.split()[1] == chain]

    def filters_input(self) -> bool:
        """Whether INPUT is in use: a drop policy or any rule (ours too, so that once provision
        chose iptables it sticks with it after the baseline that made it choose is gone)."""
        return self.policy("INPUT") not in (None, "ACCEPT") or bool(self.chain_rules("INPUT"))

    def drops_input(self) -> bool:
        return self.policy("INPUT") not in (None, "ACCEPT") or any(
            re.search(r" -j (DROP|REJECT)\b", r) for r in self.chain_rules("INPUT"))


def parse_iptables(text: str) -> IptablesFilter:
    """`iptables -V` on the first line, then `iptables-save -t filter` output."""
    version, _, save = text.partition("\n")
    backend = "legacy" if "legacy" in version else "nf_tables"
    policies, rules, kept = [], [], []
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        kept.append(line)
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            policies.append((name, policy))
        elif line.startswith("-A "):
            rules.append(line)
    return IptablesFilter(backend, tuple(policies), tuple(rules),
                          "\n".join(kept) + ("\n" if kept else ""))


# -- ufw -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UfwRule:
    to: str            # "29500/tcp", "40000:40100/tcp", "Anywhere", ...
    action: str        # "ALLOW IN", "DENY IN", ...
    source: str        # "10.0.0.1", "Anywhere", ...
    v6: bool
    comment: str | None


@dataclass(frozen=True)
class UfwStatus:
    active: bool
    default_incoming: str | None
    rules: tuple[UfwRule, ...]


def parse_ufw_status(text: str) -> UfwStatus:
    """`ufw status verbose` output."""
    active = False
    incoming = None
    rules = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("Status:"):
            active = line.split(":", 1)[1].strip() == "active"
        elif line.startswith("Default:"):
            match = re.search(r"(\w+) \(incoming\)", line)
            incoming = match.group(1) if match else None
        elif line.startswith("--"):
            in_table = True
        elif in_table and line.strip():
            body, _, comment = line.partition(" # ")
            # Columns are padded with at least two spaces; "(v6)" marks IPv6 duplicates.
            columns = re.split(r"\s{2,}", body.strip())
            if len(columns) < 3:
                raise ValueError(f"unexpected ufw rule line: {line!r}")
            to, action, source = columns[0], columns[1], columns[2]
            v6 = to.endswith(" (v6)") or source.endswith(" (v6)")
            rules.append(UfwRule(to.removesuffix(" (v6)"), action, source.removesuffix(" (v6)"),
                                 v6, comment.strip() or None))
    return UfwStatus(active, incoming, tuple(rules))


# -- firewalld -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FirewalldZone:
    name: str
    target: str
    rich_rules: tuple[str, ...]


def parse_firewalld_zone(text: str) -> FirewalldZone:
    """`firewall-cmd [--permanent] --list-all` output (the default zone)."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError("empty firewall-cmd --list-all output")
    name = lines[0].split()[0]
    target, rich, in_rich = "default", [], False
    for line in lines[1:]:
        key, sep, value = line.strip().partition(":")
        if line.startswith("\t") and in_rich:
            rich.append(line.strip())
            continue
        in_rich = False
        if sep and key == "target":
            target = value.strip()
        elif sep and key == "rich rules":
            in_rich = True
            if value.strip():
                rich.append(value.strip())
    return FirewalldZone(name, target, tuple(rich))


@dataclass(frozen=True)
class Firewalld:
    runtime: FirewalldZone
    permanent: FirewalldZone


# -- the fact ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FirewallInfo:
    """Each tool's state; None where the host lacks the tool (or, firewalld, it is not running)."""

    ufw: UfwStatus | None = None
    firewalld: Firewalld | None = None
    nft: NftRuleset | None = None
    iptables: IptablesFilter | None = None


def _section(name: str, script: str) -> str:
    return f"echo {shlex.quote(SECTION + name)}; {script}"


@dataclass(frozen=True)
class FirewallState(Fact):
    """Everything the firewall role decides on, from every tool present, in one snippet."""

    def command(self) -> str:
        return "; ".join([
            # ufw's own test for "inactive" (its chains are not loaded: iptables says 1) without
            # starting ufw, a Python program: ~50 ms of CPU per host on every run.
            "if command -v ufw >/dev/null; then " + _section(
                "ufw", "iptables -n -L ufw-user-input >/dev/null 2>&1; "
                "if [ $? -eq 1 ]; then echo 'Status: inactive'; else ufw status verbose; fi")
            + "; fi",
            "if command -v firewall-cmd >/dev/null && firewall-cmd --state >/dev/null 2>&1; then "
            + _section("firewalld", "firewall-cmd --list-all") + "; "
            + _section("firewalld-permanent", "firewall-cmd --permanent --list-all") + "; fi",
            "if command -v nft >/dev/null; then " + _section("nft", "nft -j list ruleset") + "; fi",
            "if command -v iptables-save >/dev/null; then "
            + _section("iptables", "iptables -V; iptables-save -t filter") + "; fi",
            "true"])

    def parse(self, stdout: str, rc: int) -> FirewallInfo:
        sections: dict[str, list[str]] = {}
        current = None
        for line in stdout.splitlines():
            if line.startswith(SECTION):
                current = sections.setdefault(line[len(SECTION):], [])
            elif current is not None:
                current.append(line)
        text = {name: "\n".join(lines) for name, lines in sections.items()}
        if "nft" in text and not text["nft"].strip():
            raise ValueError("`nft list ruleset` printed nothing: it needs root (set become: true)")
        return FirewallInfo(
            ufw=parse_ufw_status(text["ufw"]) if "ufw" in text else None,
            firewalld=Firewalld(parse_firewalld_zone(text["firewalld"]),
                                parse_firewalld_zone(text["firewalld-permanent"]))
            if "firewalld" in text else None,
            nft=parse_nft_json(text["nft"]) if "nft" in text else None,
            iptables=parse_iptables(text["iptables"]) if "iptables" in text else None)
