"""The verdict: each case is a cluster's pairwise figures and the findings they must give.

Figures are Gbit/s per direction ("a>b") and round trips in ms; `links` lists every pair of
`nodes` not given explicitly at the healthy figures. Expected findings are (kind, nodes).
"""

from __future__ import annotations

import itertools

import pytest

from provision.netcheck.verdict import (LATENCY_FLOOR_MS, RETEST_PER_NODE, Link, better_of, judge,
                                        rate, three_digits, to_retest)

HEALTHY = (9.4, 9.4, 0.05)   # a->b Gbit/s, b->a Gbit/s, RTT ms


def cluster(n: int, special: dict[str, tuple], problems: dict[str, str] | None = None,
            jitter: bool = True) -> tuple[list[str], list[Link]]:
    nodes = [f"n{i}" for i in range(1, n + 1)]
    links = []
    for index, (a, b) in enumerate(itertools.combinations(nodes, 2)):
        forward, backward, rtt = special.get(f"{a}-{b}", HEALTHY)
        # A few percent of noise, as real measurements have.
        wobble = 1 + (0.04 * ((index % 5) - 2) if jitter else 0)
        problem = (problems or {}).get(f"{a}-{b}")
        links.append(Link(a, b, None if problem else forward * 1e9 * wobble,
                          None if problem else backward * 1e9 / wobble, rtt * wobble, problem))
    return nodes, links


def slow_node(node: str, n: int, sends=0.02, receives=0.02) -> dict[str, tuple]:
    """Every link of `node` at the given rates (Gbit/s) in its own two directions."""
    special = {}
    for a, b in itertools.combinations([f"n{i}" for i in range(1, n + 1)], 2):
        if node == a:
            special[f"{a}-{b}"] = (sends, receives, 0.05)
        elif node == b:
            special[f"{a}-{b}"] = (receives, sends, 0.05)
    return special


def high_latency_node(node: str, n: int, rtt: float = 20.05) -> dict[str, tuple]:
    return {key: (9.4, 9.4, rtt) for key in slow_node(node, n)}


CASES = {
    "healthy 2 nodes": (2, {}, None, []),
    "healthy 5 nodes": (5, {}, None, []),
    "healthy 64 nodes": (64, {}, None, []),
    # One slow node of three takes two of the three links: the median of all links would be
    # slow; the median of each node's best link is not.
    "slow node of 3": (3, slow_node("n3", 3), None, [("slow-node", ("n3",))]),
    "slow node of 4": (4, slow_node("n2", 4), None, [("slow-node", ("n2",))]),
    "slow node of 8": (8, slow_node("n8", 8), None, [("slow-node", ("n8",))]),
    "node slow only when sending": (5, slow_node("n4", 5, sends=0.02, receives=9.4), None,
                                    [("slow-node", ("n4",))]),
    "one slow link, both ways": (4, {"n1-n3": (0.02, 0.02, 0.05)}, None,
                                 [("slow-link", ("n1", "n3"))]),
    "one slow link, one way, is also asymmetric": (
        3, {"n2-n3": (9.4, 0.02, 0.05)}, None,
        [("slow-link", ("n2", "n3")), ("asymmetric", ("n2", "n3"))]),
    "two slow links on one node of 5 is not a slow node": (
        5, {"n1-n2": (1.0, 1.0, 0.05), "n1-n3": (1.0, 1.0, 0.05)}, None,
        [("slow-link", ("n1", "n2")), ("slow-link", ("n1", "n3"))]),
    "above the threshold is fine": (4, {"n1-n2": (5.5, 5.5, 0.05)}, None, []),
    "asymmetric but not slow": (4, {"n1-n2": (30.0, 9.4, 0.05)}, None,
                                [("asymmetric", ("n1", "n2"))]),
    "high latency node": (4, high_latency_node("n4", 4), None, [("latency-node", ("n4",))]),
    "high latency link": (4, {"n2-n3": (9.4, 9.4, 5.0)}, None, [("latency-link", ("n2", "n3"))]),
    # Twice the LAN reference, but only a fraction of a millisecond: noise, not a finding.
    "latency under the floor": (4, {"n2-n3": (9.4, 9.4, 0.05 + LATENCY_FLOOR_MS * 0.9)}, None,
                                []),
    "unmeasured link": (4, {}, {"n1-n2": "n1 -> n2: connection refused"},
                        [("unmeasured-link", ("n1", "n2"))]),
    "a node no peer can measure": (
        4, {}, {f"n{i}-n4": "connection refused" for i in (1, 2, 3)},
        [("unmeasured-node", ("n4",))]),
    "two nodes, their link unmeasured": (2, {}, {"n1-n2": "timed out"},
                                         [("unmeasured-node", ("n1",)),
                                          ("unmeasured-node", ("n2",))]),
    # With n4 out of the figures, the others are judged among themselves.
    "a dead node and a slow link": (
        5, {"n1-n2": (0.02, 0.02, 0.05)}, {f"n{i}-n5": "gone" for i in (1, 2, 3, 4)},
        [("unmeasured-node", ("n5",)), ("slow-link", ("n1", "n2"))]),
}


@pytest.mark.parametrize("name", CASES)
def test_findings(name):
    n, special, problems, expected = CASES[name]
    nodes, links = cluster(n, special, problems)
    verdict = judge(nodes, links, 0.5)
    assert [(f.kind, f.nodes) for f in verdict.findings] == expected
    assert verdict.flagged == bool(expected)


def test_reference_is_the_median_of_each_nodes_fastest_link():
    nodes, links = cluster(3, slow_node("n3", 3), jitter=False)
    verdict = judge(nodes, links, 0.5)
    assert verdict.reference_bps == pytest.approx(9.4e9)
    assert verdict.reference_rtt_ms == pytest.approx(0.05)


def test_slow_node_message_names_the_direction():
    nodes, links = cluster(5, slow_node("n4", 5, sends=9.4, receives=0.02))
    (finding,) = judge(nodes, links, 0.5).findings
    assert "(receiving)" in finding.message and "NIC, cable or switch port" in finding.message
    # The slow figure of each of its links is marked for the heatmap: what it receives.
    assert sorted(finding.cells) == [(peer, "n4") for peer in ("n1", "n2", "n3", "n5")]


def test_a_slow_link_marks_its_slow_directions_only():
    nodes, links = cluster(4, {"n1-n3": (0.02, 9.4, 0.05)})
    slow, asymmetric = judge(nodes, links, 0.5).findings
    assert slow.cells == asymmetric.cells == (("n1", "n3"),)


def test_asymmetric_marks_only_the_slow_direction():
    nodes, links = cluster(4, {"n1-n2": (30.0, 9.4, 0.05)})
    (finding,) = judge(nodes, links, 0.5).findings
    assert finding.cells == (("n2", "n1"),)


def test_a_lower_threshold_tolerates_more():
    nodes, links = cluster(4, {"n1-n3": (3.0, 3.0, 0.05)})
    assert judge(nodes, links, 0.5).flagged
    assert not judge(nodes, links, 0.25).flagged


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.2])
def test_threshold_must_be_a_fraction(threshold):
    with pytest.raises(ValueError):
        judge(*cluster(3, {}), threshold)


@pytest.mark.parametrize("bps, text", [
    (9.41e9, "9.41 Gbit/s"), (14e9, "14.0 Gbit/s"), (19.8e6, "19.8 Mbit/s"),
    (143e6, "143 Mbit/s"), (512e3, "512 kbit/s"), (12, "12.0 bit/s")])
def test_rate(bps, text):
    assert rate(bps) == text


def test_three_digits_of_zero_and_tiny_values():
    assert three_digits(0) == "0" and three_digits(0.000123) == "0.000123"


def test_a_dip_that_a_retest_does_not_see_again_is_no_finding():
    nodes, links = cluster(4, {"n1-n3": (0.5, 9.4, 0.05)})
    verdict = judge(nodes, links, 0.5)
    assert to_retest(verdict, links) == [("n1", "n3")]
    retest = Link("n1", "n3", 9.3e9, 0.3e9, 0.04)
    combined = [better_of(l, retest) if (l.a, l.b) == ("n1", "n3") else l for l in links]
    assert not judge(nodes, combined, 0.5).flagged
    link = next(l for l in combined if (l.a, l.b) == ("n1", "n3"))
    assert (link.forward_bps, link.rtt_ms) == (9.3e9, 0.04) and link.backward_bps > 9e9


def test_a_slow_node_is_retested_on_a_few_of_its_links_only():
    nodes, links = cluster(8, slow_node("n8", 8))
    pairs = to_retest(judge(nodes, links, 0.5), links)
    assert len(pairs) == RETEST_PER_NODE and all("n8" in pair for pair in pairs)


def test_a_retest_that_measures_what_failed_clears_the_problem():
    failed = Link("n1", "n2", problem="n1 -> n2: timed out")
    assert better_of(failed, Link("n1", "n2", 9e9, 9e9, 0.05)).measured
    assert better_of(failed, Link("n1", "n2", problem="refused")).problem == "refused"
    # what a dead node leaves is not worth measuring again
    nodes, links = cluster(4, {}, {f"n{i}-n4": "gone" for i in (1, 2, 3)})
    assert to_retest(judge(nodes, links, 0.5), links) == []
