"""The verdict on the pairwise figures: slow nodes and links, asymmetric links, high latency.

The reference a link is compared with is the median, over the nodes, of each node's fastest
link (for latency: each node's quickest). A node's best link is what its NIC can do, so this is
the healthy speed for as long as fewer than half of the nodes are bad. The plain median of all
links is not: one slow node takes 2 of the 3 links of a 3-node cluster, and 3 of 6 at 4 nodes,
and the median would call the slow links normal.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

# A round trip is high only when it is also this much above the reference: on a LAN the
# reference is a tenth of a millisecond, and twice that is noise, not a bad link.
LATENCY_FLOOR_MS = 1.0

FindingKind = Literal["unmeasured-node", "unmeasured-link", "slow-node", "slow-link",
                      "asymmetric", "latency-node", "latency-link"]


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    forward_bps: float | None = None     # a -> b
    backward_bps: float | None = None    # b -> a
    rtt_ms: float | None = None          # round trip (pairwise.round_trip)
    problem: str | None = None           # why the link could not be measured (fully)

    @property
    def measured(self) -> bool:
        return self.problem is None and self.forward_bps is not None \
            and self.backward_bps is not None

    @property
    def bps(self) -> float:
        """A link is as fast as its slower direction."""
        return min(self.forward_bps, self.backward_bps)  # type: ignore[type-var]

    def touches(self, node: str) -> bool:
        return node in (self.a, self.b)

    def figure_from(self, node: str) -> float:
        return self.forward_bps if node == self.a else self.backward_bps  # type: ignore[return-value]

    def figure_to(self, node: str) -> float:
        return self.backward_bps if node == self.a else self.forward_bps  # type: ignore[return-value]


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    nodes: tuple[str, ...]               # the node, or the link's two nodes
    message: str
    cells: tuple[tuple[str, str], ...] = ()   # (sender, receiver) figures it is about

    def as_dict(self) -> dict:
        return {"kind": self.kind, "nodes": list(self.nodes), "message": self.message}


@dataclass(frozen=True)
class Verdict:
    threshold: float                     # a fraction, 0.5 for 50 %
    reference_bps: float | None
    reference_rtt_ms: float | None
    findings: tuple[Finding, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.findings)


def three_digits(value: float) -> str:
    """Three significant digits, trailing zeros kept: 14.0, 2.31, 0.0200, 143."""
    if value == 0:
        return "0"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def rate(bps: float) -> str:
    """A throughput for people: 9.41 Gbit/s, 19.8 Mbit/s."""
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{three_digits(bps / scale)} {unit}"
    return f"{three_digits(bps)} bit/s"


def _cells(link: Link) -> tuple[tuple[str, str], ...]:
    return ((link.a, link.b), (link.b, link.a))


def _slow_cells(link: Link, limit: float) -> tuple[tuple[str, str], ...]:
    """The link's directions below `limit`."""
    return tuple(cell for cell, bps in zip(_cells(link), (link.forward_bps, link.backward_bps))
                 if bps < limit)


def _node_reference(nodes: list[str], links: list[Link], value, best) -> float | None:
    """Median over the nodes of each node's best link figure."""
    bests = [best(value(link) for link in links if link.touches(node)) for node in nodes
             if any(link.touches(node) for link in links)]
    return statistics.median(bests) if bests else None


def _bad_nodes(nodes: list[str], links: list[Link], bad: set[tuple[str, str]]) -> list[str]:
    """Nodes with at least two links, every one of them bad: the node is the cause."""
    found = []
    for node in nodes:
        own = [link for link in links if link.touches(node)]
        if len(own) >= 2 and all((link.a, link.b) in bad for link in own):
            found.append(node)
    return found


def _unmeasured(nodes: list[str], links: list[Link]) -> tuple[list[Finding], set[str]]:
    failed = [link for link in links if not link.measured]
    keys = {(link.a, link.b) for link in failed}
    dead = set(_bad_nodes(nodes, links, keys))
    # Two nodes with one link between them: the node-level rule above needs two links.
    if len(nodes) == 2 and failed:
        dead = set(nodes)
    findings = []
    for node in nodes:
        if node in dead:
            reason = next(link.problem for link in failed if link.touches(node))
            findings.append(Finding("unmeasured-node", (node,),
                                    f"{node}: no link could be measured ({reason})"))
    for link in failed:
        if not (dead & {link.a, link.b}):
            findings.append(Finding("unmeasured-link", (link.a, link.b),
                                    f"{link.a} - {link.b}: not measured ({link.problem})",
                                    _cells(link)))
    return findings, dead


def _throughput(nodes: list[str], links: list[Link], threshold: float
                ) -> tuple[float | None, list[Finding]]:
    reference = _node_reference(nodes, links, lambda link: link.bps, max)
    if reference is None:
        return None, []
    limit = threshold * reference
    slow = {(link.a, link.b) for link in links if link.bps < limit}
    slow_nodes = _bad_nodes(nodes, links, slow)
    findings = []
    for node in slow_nodes:
        own = [link for link in links if link.touches(node)]
        sends = statistics.median(link.figure_from(node) for link in own)
        receives = statistics.median(link.figure_to(node) for link in own)
        way = ("sending and receiving" if sends < limit and receives < limit
               else "sending" if sends < limit else "receiving")
        findings.append(Finding(
            "slow-node", (node,),
            f"{node}: every link is slow ({way}): sends {rate(sends)}, receives "
            f"{rate(receives)} (median over its {len(own)} links), reference {rate(reference)}: "
            "its NIC, cable or switch port",
            tuple(cell for link in own for cell in _slow_cells(link, limit))))
    for link in links:
        if any(link.touches(node) for node in slow_nodes):
            continue
        if (link.a, link.b) in slow:
            findings.append(Finding(
                "slow-link", (link.a, link.b),
                f"{link.a} - {link.b}: {link.a} -> {link.b} {rate(link.forward_bps)}, "
                f"{link.b} -> {link.a} {rate(link.backward_bps)}; below {threshold:.0%} of the "
                f"reference {rate(reference)}", _slow_cells(link, limit)))
        if link.bps < threshold * max(link.forward_bps, link.backward_bps):
            slower = (link.a, link.b) if link.forward_bps < link.backward_bps else (link.b, link.a)
            findings.append(Finding(
                "asymmetric", (link.a, link.b),
                f"{link.a} - {link.b}: {link.a} -> {link.b} {rate(link.forward_bps)} but "
                f"{link.b} -> {link.a} {rate(link.backward_bps)}", (slower,)))
    return reference, findings


def _latency(nodes: list[str], links: list[Link], threshold: float
             ) -> tuple[float | None, list[Finding]]:
    timed = [link for link in links if link.rtt_ms is not None]
    reference = _node_reference(nodes, timed, lambda link: link.rtt_ms, min)
    if reference is None:
        return None, []
    high = {(link.a, link.b) for link in timed
            if link.rtt_ms > reference / threshold and link.rtt_ms - reference > LATENCY_FLOOR_MS}
    high_nodes = _bad_nodes(nodes, timed, high)
    findings = []
    for node in high_nodes:
        own = [link.rtt_ms for link in timed if link.touches(node)]
        findings.append(Finding(
            "latency-node", (node,),
            f"{node}: high latency on every link: round trip {statistics.median(own):.2f} ms "
            f"(median over its {len(own)} links), reference {reference:.2f} ms",
            tuple(cell for link in timed if link.touches(node) for cell in _cells(link))))
    for link in timed:
        if (link.a, link.b) in high and not any(link.touches(n) for n in high_nodes):
            findings.append(Finding(
                "latency-link", (link.a, link.b),
                f"{link.a} - {link.b}: round trip {link.rtt_ms:.2f} ms, reference "
                f"{reference:.2f} ms", _cells(link)))
    return reference, findings


# A node finding is confirmed on this many of its links: enough to tell a bad NIC from a
# moment's dip, without measuring every link of a bad node twice.
RETEST_PER_NODE = 3


def to_retest(verdict: Verdict, links: list[Link]) -> list[tuple[str, str]]:
    """The links a finding is about, measured again before the verdict stands: a transient dip
    (another job's burst, a busy CPU on a shared host) must not be reported as a bad link."""
    pairs: list[tuple[str, str]] = []
    for finding in verdict.findings:
        if len(finding.nodes) == 2:
            pairs.append(finding.nodes)         # type: ignore[arg-type]
        elif finding.kind != "unmeasured-node":
            node = finding.nodes[0]
            pairs += [(l.a, l.b) for l in links if l.touches(node)][:RETEST_PER_NODE]
    return list(dict.fromkeys(pairs))


def better_of(first: Link, second: Link) -> Link:
    """Two measurements of one link combined: the faster figure of each direction and the
    quicker round trip (a link cannot be faster than it is, only seem slower)."""
    def best(x, y, pick):
        values = [v for v in (x, y) if v is not None]
        return pick(values) if values else None

    forward = best(first.forward_bps, second.forward_bps, max)
    backward = best(first.backward_bps, second.backward_bps, max)
    problem = None if forward is not None and backward is not None else \
        (second.problem or first.problem)
    return Link(first.a, first.b, forward, backward, best(first.rtt_ms, second.rtt_ms, min),
                problem)


def judge(nodes: list[str], links: list[Link], threshold: float) -> Verdict:
    """The verdict on the links among `nodes` (the nodes whose measuring program ran).

    `threshold` is a fraction: a link below threshold x reference is slow, a direction below
    threshold x the other direction is asymmetric, a round trip above reference / threshold
    (and LATENCY_FLOOR_MS above it) is high.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    findings, dead = _unmeasured(nodes, links)
    alive = [node for node in nodes if node not in dead]
    measured = [link for link in links if link.measured]
    reference_bps, slow = _throughput(alive, measured, threshold)
    reference_rtt, late = _latency(alive, measured, threshold)
    return Verdict(threshold, reference_bps, reference_rtt, tuple(findings + slow + late))
