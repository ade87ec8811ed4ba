"""Which node measures which, and when: every step is a set of transfers run at once.

A full check is a round-robin tournament (the circle method): n-1 rounds (n for an odd n, one
node sitting out each round) in which every node is in exactly one pair, so no NIC carries two
measurements at once. Each round is three steps: the pairs' round trips, then every pair's first
direction, then its second. `--quick` is a ring: every node measures its neighbour, one step per
direction, so each NIC sends one stream and receives another, as in a ring all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["rtt", "bw"]


@dataclass(frozen=True)
class Transfer:
    kind: Kind
    source: str          # the node that connects and reports
    target: str


Step = tuple[Transfer, ...]


def tournament(nodes: list[str]) -> list[list[tuple[str, str]]]:
    """Rounds of pairs in which every pair of `nodes` meets exactly once (circle method: the
    first node stays, the others rotate one place per round; None is the bye for odd n)."""
    if len(nodes) < 2:
        return []
    circle: list[str | None] = list(nodes) + ([None] if len(nodes) % 2 else [])
    size = len(circle)
    rounds = []
    for _ in range(size - 1):
        pairs = [(circle[i], circle[size - 1 - i]) for i in range(size // 2)]
        rounds.append([(a, b) for a, b in pairs if a is not None and b is not None])
        circle = [circle[0], circle[-1], *circle[1:-1]]
    return rounds


def ring(nodes: list[str]) -> list[tuple[str, str]]:
    """Each node paired with the next, the last with the first (two nodes: one pair)."""
    if len(nodes) < 2:
        return []
    if len(nodes) == 2:
        return [(nodes[0], nodes[1])]
    return [(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]


def _round_steps(pairs: list[tuple[str, str]]) -> list[Step]:
    return [tuple(Transfer("rtt", a, b) for a, b in pairs),
            tuple(Transfer("bw", a, b) for a, b in pairs),
            tuple(Transfer("bw", b, a) for a, b in pairs)]


def plan_steps(nodes: list[str], quick: bool) -> list[list[Step]]:
    """The steps of the check, grouped by round (a ring is one round)."""
    if quick:
        pairs = ring(nodes)
        return [_round_steps(pairs)] if pairs else []
    return [_round_steps(pairs) for pairs in tournament(nodes)]


def pairs_of(rounds: list[list[Step]]) -> list[tuple[str, str]]:
    """Every pair the plan measures, as (first, second) in the order it measures them."""
    return [(t.source, t.target) for steps in rounds for t in steps[0]]


def disjoint_rounds(pairs: list[tuple[str, str]]) -> list[list[Step]]:
    """Rounds for an arbitrary set of pairs (the flagged links measured again): each round
    takes, in order, every pair whose nodes no earlier pair of the round has taken."""
    left, rounds = list(pairs), []
    while left:
        busy: set[str] = set()
        chosen = []
        for a, b in left:
            if a not in busy and b not in busy:
                chosen.append((a, b))
                busy |= {a, b}
        left = [pair for pair in left if pair not in chosen]
        rounds.append(_round_steps(chosen))
    return rounds
