"""Open the training ports (TCP) to the cluster's addresses only, with whatever filters the host.

Backends, picked from the FirewallState fact unless `backend` names one: ufw when active, firewalld
when running, iptables when its INPUT chain is in use, else nftables, else iptables. Every rule
provision makes carries TAG (plus a fingerprint of the wanted sources and ports) in its comment,
so a re-run recognises its own rules, replaces them when the wanted state changed, and never
touches anyone else's. Rules only ever accept the cluster or drop non-cluster sources on the
training ports, so SSH (or any other port) is never affected.

Longer than ~300 lines because it speaks four firewalls (nftables, iptables, ufw,
firewalld), each with its own rule syntax and persistence, behind one plan.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from provision.facts.files import PathInfo, PathState
from provision.facts.system import Os, ServiceState
from provision.facts.firewall import (TAG, FirewallInfo, FirewallState, IptablesFilter,
                                      NftRuleset, UfwRule, UfwStatus)
from provision.operations.base import (Change, Command, FactValues, Failure, HostContext,
                                       NoChange, operation)
from provision.operations.files import write_file_script
from provision.settings import Setting

BACKENDS = ("auto", "nftables", "iptables", "ufw", "firewalld")
NFT_TABLE = "provision_training"
IPT_CHAIN = "PROVISION-TRAINING"
NFT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
OWN_CHAIN_RULES = 3   # loopback return, IPv4 drop, IPv6 drop: see nft_rules_file

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Wanted:
    """The training ports and the networks allowed to reach them, normalised."""

    ports: tuple[tuple[int, int], ...]     # merged (first, last) ranges
    v4: tuple[ipaddress.IPv4Network, ...]  # collapsed: nft refuses overlapping intervals
    v6: tuple[ipaddress.IPv6Network, ...]

    @property
    def tag(self) -> str:
        spec = " ".join([*map(str, self.ports), *map(str, self.v4), *map(str, self.v6)])
        return f"{TAG} {hashlib.sha256(spec.encode()).hexdigest()[:12]}"

    def port_texts(self, separator: str) -> list[str]:
        return [str(a) if a == b else f"{a}{separator}{b}" for a, b in self.ports]

    def opened(self) -> str:
        """What is open to whom, for messages."""
        return f"TCP {', '.join(self.port_texts('-'))} open to {_sources(self)} only"


def parse_ports(values: list) -> tuple[tuple[int, int], ...]:
    """["29500", "40000-40100", 29400] -> merged, sorted (first, last) ranges."""
    ranges = []
    for value in values:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", str(value).strip())
        first, last = (int(match.group(1)), int(match.group(2) or match.group(1))) if match \
            else (0, -1)
        if not (match and 1 <= first <= last <= 65535):
            raise ValueError(f"port {value!r} is not a port (1-65535) or a range like 40000-40100")
        ranges.append((first, last))
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple((a, b) for a, b in merged)


def parse_sources(values: list) -> tuple[tuple, tuple]:
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ValueError(
                f"firewall source {value!r} is not an IP address or network: firewall rules "
                "need addresses; give the hosts IP addresses or set cluster_cidr") from None
    v4 = tuple(ipaddress.collapse_addresses(n for n in networks if n.version == 4))
    v6 = tuple(ipaddress.collapse_addresses(n for n in networks if n.version == 6))
    return v4, v6


def _source_text(network: Network) -> str:
    """An address without /32 (/128), as the firewall tools print it back."""
    return str(network.network_address) if network.num_addresses == 1 else str(network)


def choose_backend(info: FirewallInfo, wanted: str) -> str | None:
    if wanted != "auto":
        return wanted
    if info.ufw and info.ufw.active:
        return "ufw"
    if info.firewalld:
        return "firewalld"
    if info.iptables and info.iptables.filters_input():
        return "iptables"
    if info.nft:
        return "nftables"
    return "iptables" if info.iptables else None


# -- nftables ------------------------------------------------------------------------------------

def _nft_accept_chains(ruleset: NftRuleset) -> list:
    """Every other table's input base chain that drops or rejects (iptables-nft's excepted): a
    packet must be accepted by every input chain, so each of those gets our tagged accept rule
    at its top. Chains that accept everything need none, which keeps the state stable when the
    boot configuration brings such a table back (Debian's default `inet filter`)."""
    return [c for c in ruleset.input_chains() if c.table != NFT_TABLE
            and not ruleset.is_iptables_table(c.family, c.table) and ruleset.drops_input(c)]


def nft_rules_file(wanted: Wanted, chains: list) -> str:
    ports = ", ".join(wanted.port_texts("-"))
    tag = f'comment "{wanted.tag}"'
    v4 = ", ".join(map(str, wanted.v4))
    v6 = ", ".join(map(str, wanted.v6))
    accept = f"tcp dport {{ {ports} }} accept {tag}"
    lines = [
        "# Managed by provision (role firewall); replaced as a whole on every change.",
        "# The training ports, TCP, from the cluster only. Every input base chain must accept a",
        "# packet, so our own table drops these ports from other sources and one tagged accept",
        "# rule sits at the top of each other table's input chain (`add table/chain` keep this",
        "# file loadable at boot should such a table be gone: they then create empty ones).",
        f"table inet {NFT_TABLE} {{}}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        f"\tset cluster4 {{ type ipv4_addr; flags interval;{_elements(v4)} }}",
        f"\tset cluster6 {{ type ipv6_addr; flags interval;{_elements(v6)} }}",
        f"\tset ports {{ type inet_service; flags interval; elements = {{ {ports} }}; }}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        f"\t\tiifname \"lo\" return {tag}",
        f"\t\tmeta nfproto ipv4 tcp dport @ports ip saddr != @cluster4 drop {tag}",
        f"\t\tmeta nfproto ipv6 tcp dport @ports ip6 saddr != @cluster6 drop {tag}",
        "\t}",
        "}"]
    for chain in chains:
        where = f"{chain.family} {chain.table} {chain.name}"
        lines += [f"add table {chain.family} {chain.table}", f"add chain {where}"]
        if chain.family in ("ip", "inet") and v4:
            lines.append(f"insert rule {where} ip saddr {{ {v4} }} {accept}")
        if chain.family in ("ip6", "inet") and v6:
            lines.append(f"insert rule {where} ip6 saddr {{ {v6} }} {accept}")
    return "\n".join(lines) + "\n"


def _elements(networks: str) -> str:
    return f" elements = {{ {networks} }};" if networks else ""


def _nft_live_ok(ruleset: NftRuleset, wanted: Wanted, chains: list) -> bool:
    ours = [c for c in ruleset.chains
            if (c.family, c.table, c.name) == ("inet", NFT_TABLE, "input")]
    if not ours or [r.comment for r in ruleset.rules_of(ours[0])] != [wanted.tag] * OWN_CHAIN_RULES:
        return False
    per_chain = (int(c.family in ("ip", "inet") and bool(wanted.v4))
                 + int(c.family in ("ip6", "inet") and bool(wanted.v6)) for c in chains)
    expected = {(c.family, c.table, c.name): n for c, n in zip(chains, per_chain)}
    tagged = _nft_tagged_elsewhere(ruleset)
    if any(r.comment != wanted.tag for r in tagged):
        return False
    found: dict[tuple, int] = {}
    for r in tagged:
        found[(r.family, r.table, r.chain)] = found.get((r.family, r.table, r.chain), 0) + 1
    return found == {k: n for k, n in expected.items() if n}


def plan_nftables(args: dict, info: FirewallInfo, wanted: Wanted, facts: FactValues):
    ruleset = info.nft
    if ruleset is None:
        return Failure("nftables was chosen but the host has no `nft`: install nftables, or "
                       "set firewall_backend to the firewall it runs")
    if info.iptables and info.iptables.backend == "legacy" and info.iptables.drops_input():
        return Failure("iptables (legacy) also drops input here, and an nftables accept cannot "
                       "get through it: set firewall_backend: iptables, or move those rules")
    chains = _nft_accept_chains(ruleset)
    if any(ruleset.is_iptables_table(c.family, c.table) and ruleset.drops_input(c)
           for c in ruleset.input_chains()):
        return Failure("iptables (nf_tables) drops input here and provision adds no nft rules "
                       "to iptables' tables: set firewall_backend: iptables")
    bad = [f"{c.family} {c.table} {c.name}" for c in chains
           if not (NFT_NAME.fullmatch(c.table) and NFT_NAME.fullmatch(c.name))]
    if bad:
        return Failure(f"cannot name nftables chain(s) {', '.join(bad)} safely in a rules file")
    path, conf = args["nftables_file"], args["nftables_conf"]
    if '"' in path:
        return Failure(f"nftables_file {path!r} cannot be included from {conf}: it has a '\"'")
    content = nft_rules_file(wanted, chains)
    include = f'include "{path}"'
    conf_info: PathInfo | None = facts[PathState(conf, True)]
    conf_text = (conf_info.content or b"").decode() if conf_info else "#!/usr/sbin/nft -f\n"
    live_ok = _nft_live_ok(ruleset, wanted, chains)
    file_ok = _same(facts[PathState(path, True)], content)
    conf_ok = include in conf_text.splitlines()
    # Debian ships nftables.service disabled: without it the conf (and our include) is never
    # loaded at boot. It is only enabled, not started: starting it reloads the whole conf.
    systemd = facts[Os()].systemd
    boot_ok = not systemd or facts[ServiceState(NFT_UNIT)][0]
    if live_ok and file_ok and conf_ok and boot_ok:
        return NoChange(f"nftables: {wanted.opened()}")
    commands = []
    if not live_ok:
        # One nft transaction: our stale accept rules go and the new ones come in, atomically.
        stale = [f"delete rule {r.family} {r.table} {r.chain} handle {r.handle}"
                 for r in _nft_tagged_elsewhere(ruleset)]
        commands.append(Command(["nft", "-f", "-"], stdin="\n".join([*stale, content]).encode()))
    if not file_ok:
        commands += [Command(["mkdir", "-p", "--", _parent(path)]),
                     Command(write_file_script(path, {"mode": "0644"}), stdin=content.encode())]
    if not conf_ok:
        separator = "" if conf_text.endswith("\n") or not conf_text else "\n"
        new_conf = f"{conf_text}{separator}{include}\n"
        mode = {"mode": conf_info.mode if conf_info else "0755"}   # Debian's is an nft script
        commands.append(Command(write_file_script(conf, mode, backup=conf_info is not None),
                                stdin=new_conf.encode()))
    if not boot_ok:
        commands.append(Command(["systemctl", "enable", NFT_UNIT]))
    return Change(f"nftables: make {wanted.opened()}"
                  + _updating((live_ok, "live rules"), (file_ok, path), (conf_ok, conf),
                              (boot_ok, f"{NFT_UNIT} enabled at boot")),
                  tuple(commands))


def _nft_tagged_elsewhere(ruleset: NftRuleset) -> list:
    """Our accept rules in other tables' chains."""
    return [r for r in ruleset.rules
            if r.table != NFT_TABLE and (r.comment or "").startswith(TAG)]


# -- iptables ------------------------------------------------------------------------------------

def iptables_chain_rules(wanted: Wanted) -> list[str]:
    """Our chain's rules, exactly as iptables-save prints them (compared as text)."""
    comment = f'-m comment --comment "{wanted.tag}"'
    rules = [f"-A {IPT_CHAIN} -i lo {comment} -j RETURN"]
    for network in wanted.v4:
        for port in wanted.port_texts(":"):
            rules.append(f"-A {IPT_CHAIN} -s {network} -p tcp -m tcp --dport {port} {comment} "
                         "-j ACCEPT")
    rules += [f"-A {IPT_CHAIN} -p tcp -m tcp --dport {port} {comment} -j DROP"
              for port in wanted.port_texts(":")]
    return rules


def _iptables_jump(wanted: Wanted) -> str:
    return f'-A INPUT -m comment --comment "{wanted.tag}" -j {IPT_CHAIN}'


def _is_ours(line: str) -> bool:
    return line == f":{IPT_CHAIN} - [0:0]" or line.startswith(f":{IPT_CHAIN} ") or \
        line.startswith(f"-A {IPT_CHAIN} ") or line.endswith(f"-j {IPT_CHAIN}")


def iptables_saved_rules(base: str, wanted: Wanted) -> str:
    """`base` (a saved ruleset) with our chain and INPUT jump replaced: ours first in INPUT."""
    lines = [line for line in base.splitlines() if not _is_ours(line)]
    ours = [_iptables_jump(wanted), *iptables_chain_rules(wanted)]
    if "*filter" not in lines:
        lines += ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                  ":OUTPUT ACCEPT [0:0]", "COMMIT"]
    start = lines.index("*filter")
    end = next(i for i in range(start, len(lines)) if lines[i] == "COMMIT")
    last_decl = max([i for i in range(start, end) if lines[i].startswith(":")], default=start)
    lines[last_decl + 1:last_decl + 1] = [f":{IPT_CHAIN} - [0:0]", *ours]
    return "\n".join(lines) + "\n"


def plan_iptables(args: dict, info: FirewallInfo, wanted: Wanted, facts: FactValues):
    table: IptablesFilter | None = info.iptables
    if table is None:
        return Failure("iptables was chosen but the host has no `iptables-save`: install "
                       "iptables, or set firewall_backend to the firewall it runs")
    if wanted.v6:
        return Failure("IPv6 cluster addresses need firewall_backend: nftables (the iptables "
                       "backend manages IPv4 only)")
    if info.nft and any(info.nft.drops_input(c) for c in _nft_accept_chains(info.nft)):
        return Failure("nftables tables also drop input here, and an iptables accept cannot get "
                       "through them: set firewall_backend: nftables")
    chain = iptables_chain_rules(wanted)
    jump = _iptables_jump(wanted)
    jumps = [r for r in table.chain_rules("INPUT") if r.endswith(f"-j {IPT_CHAIN}")]
    live_ok = table.chain_rules(IPT_CHAIN) == chain and jumps == [jump] and \
        table.chain_rules("INPUT")[0] == jump
    path = args["iptables_rules_file"]
    saved: PathInfo | None = facts[PathState(path, True)]
    base = (saved.content or b"").decode() if saved else table.save
    content = iptables_saved_rules(base, wanted)
    file_ok = _same(saved, content)
    if live_ok and file_ok:
        return NoChange(f"iptables: {wanted.opened()}")
    commands = []
    if not live_ok:
        # --noflush keeps every other rule; declaring our chain empties it; one commit.
        script = ["*filter", f":{IPT_CHAIN} - [0:0]", *chain,
                  *("-D" + j[2:] for j in jumps), "-I" + jump[2:].replace("INPUT", "INPUT 1", 1),
                  "COMMIT"]
        restore = "iptables-legacy-restore" if table.backend == "legacy" else "iptables-restore"
        commands.append(Command([restore, "--noflush"], stdin=("\n".join(script) + "\n").encode()))
    if not file_ok:
        commands += [Command(["mkdir", "-p", "--", _parent(path)]),
                     Command(write_file_script(path, {"mode": saved.mode if saved else "0640"},
                                               backup=saved is not None),
                             stdin=content.encode())]
    return Change(f"iptables: make {wanted.opened()}"
                  + _updating((live_ok, "live rules"), (file_ok, path)), tuple(commands))


# -- ufw -----------------------------------------------------------------------------------------

def ufw_wanted(wanted: Wanted) -> tuple[list[tuple], list[tuple]]:
    """(IPv4, IPv6) rule lists as `ufw status` shows them: (to, action, from), top first."""
    ports = [f"{p}/tcp" for p in wanted.port_texts(":")]
    denies = [(p, "DENY IN", "Anywhere") for p in ports]
    allow4 = [(p, "ALLOW IN", _source_text(n)) for n in wanted.v4 for p in ports]
    allow6 = [(p, "ALLOW IN", _source_text(n)) for n in wanted.v6 for p in ports]
    return allow4 + denies, allow6 + denies


def _ufw_key(rule: UfwRule) -> tuple:
    return (rule.to, rule.action, rule.source)


def _ufw_top_is(rules: list[UfwRule], want: list[tuple], tag: str) -> bool:
    """The first rules are exactly `want`, with the current tag, and no other rule is ours."""
    head = rules[:len(want)]
    tagged = [r for r in rules if (r.comment or "").startswith(TAG)]
    return [_ufw_key(r) for r in head] == want and all(r.comment == tag for r in head) \
        and len(tagged) == len(want)


def plan_ufw(args: dict, info: FirewallInfo, wanted: Wanted, facts: FactValues):
    status: UfwStatus | None = info.ufw
    if status is None or not status.active:
        return Failure("ufw was chosen but it is not active here: run `ufw enable` (after "
                       "`ufw allow ssh`), or set firewall_backend to the firewall it runs")
    want4, want6 = ufw_wanted(wanted)
    v4_rules = [r for r in status.rules if not r.v6]
    v6_rules = [r for r in status.rules if r.v6]
    # ufw shows no IPv6 rules at all when its IPV6 setting is off: nothing to compare there.
    ok = _ufw_top_is(v4_rules, want4, wanted.tag) and (
        _ufw_top_is(v6_rules, want6, wanted.tag) or not (v6_rules or wanted.v6))
    if ok:
        return NoChange(f"ufw: {wanted.opened()}")
    commands = []
    seen = set()
    for rule in status.rules:    # ours, old or current: removed and added back in order
        if (rule.comment or "").startswith(TAG) and _ufw_key(rule) not in seen:
            seen.add(_ufw_key(rule))
            commands.append(Command(["ufw", "--force", "delete", *_ufw_spec(*_ufw_key(rule))]))
    # `prepend` puts a rule on top (of its IP version's list): add the wanted lists bottom up.
    denies = [r for r in want4 if r[1] == "DENY IN"]
    allows = [r for r in want4 + want6 if r[1] == "ALLOW IN"]
    for rule in (allows + denies)[::-1]:
        commands.append(Command(["ufw", "prepend", *_ufw_spec(*rule), "comment", wanted.tag]))
    return Change(f"ufw: make {wanted.opened()}", tuple(commands))


def _ufw_spec(to: str, action: str, source: str) -> list[str]:
    port = to.removesuffix("/tcp")
    verb = action.split()[0].lower()
    return [verb, "proto", "tcp", "from", "any" if source == "Anywhere" else source,
            "to", "any", "port", port]


# -- firewalld -----------------------------------------------------------------------------------

def firewalld_rules(wanted: Wanted) -> list[str]:
    """Rich rules as firewall-cmd prints them back (compared as text)."""
    return [f'rule family="ipv{n.version}" source address="{_source_text(n)}" '
            f'port port="{port}" protocol="tcp" accept'
            for n in (*wanted.v4, *wanted.v6) for port in wanted.port_texts("-")]


def plan_firewalld(args: dict, info: FirewallInfo, wanted: Wanted, facts: FactValues):
    state = info.firewalld
    if state is None:
        return Failure("firewalld was chosen but it is not running: start it, or set "
                       "firewall_backend to the firewall this host runs")
    if state.runtime.target.upper() == "ACCEPT":
        return Failure(f"firewalld zone {state.runtime.name} accepts everything (target ACCEPT), "
                       "so the training ports would be open to every source: set its target "
                       "to default")
    # Rich rules carry no comment: provision adds exactly these rules and never removes any,
    # as it cannot tell a rule it made from the same rule made by hand.
    commands = []
    for permanent, zone in ((False, state.runtime), (True, state.permanent)):
        for rule in firewalld_rules(wanted):
            if rule not in zone.rich_rules:
                commands.append(Command(["firewall-cmd", *(["--permanent"] if permanent else []),
                                         f"--zone={zone.name}", f"--add-rich-rule={rule}"]))
    if not commands:
        return NoChange(f"firewalld: TCP {', '.join(wanted.port_texts('-'))} open to "
                        f"{_sources(wanted)} (zone {state.runtime.name})")
    return Change(f"firewalld (zone {state.runtime.name}, runtime and permanent): open TCP "
                  f"{', '.join(wanted.port_texts('-'))} to {_sources(wanted)}", tuple(commands))


# -- the operation -------------------------------------------------------------------------------

def _same(info: PathInfo | None, content: str) -> bool:
    return info is not None and info.sha256 == hashlib.sha256(content.encode()).hexdigest()


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _sources(wanted: Wanted) -> str:
    return ", ".join(_source_text(n) for n in (*wanted.v4, *wanted.v6))


def _updating(*parts: tuple[bool, str]) -> str:
    return f" (updating {', '.join(what for ok, what in parts if not ok)})"


PLANNERS = {"nftables": plan_nftables, "iptables": plan_iptables, "ufw": plan_ufw,
            "firewalld": plan_firewalld}


NFT_UNIT = "nftables.service"


def _facts(args: dict) -> list:
    return [FirewallState(), PathState(args["nftables_file"], True),
            PathState(args["nftables_conf"], True), PathState(args["iptables_rules_file"], True),
            Os(), ServiceState(NFT_UNIT)]


@operation("firewall_open",
           [Setting("ports", "list"), Setting("sources", "list"),
            Setting("backend", "str", choices=BACKENDS), Setting("nftables_file", "abspath"),
            Setting("nftables_conf", "abspath"), Setting("iptables_rules_file", "abspath")],
           required=("ports", "sources", "nftables_file", "nftables_conf", "iptables_rules_file"),
           facts=_facts)
def firewall_open(args: dict, facts: FactValues, ctx: HostContext):
    """TCP `ports` accept `sources` and drop everyone else, persistently, in the host's firewall."""
    if not args["sources"]:
        return Failure("no addresses to open the training ports to: put the training hosts in "
                       "the `training` group or set cluster_cidr")
    try:
        v4, v6 = parse_sources(args["sources"])
        wanted = Wanted(parse_ports(args["ports"]), v4, v6)
    except ValueError as exc:
        return Failure(str(exc))
    info: FirewallInfo = facts[FirewallState()]
    backend = choose_backend(info, args.get("backend", "auto"))
    if backend is None:
        return Failure("no firewall tool found (ufw, firewalld, nft, iptables): install nftables")
    return PLANNERS[backend](args, info, wanted, facts)
