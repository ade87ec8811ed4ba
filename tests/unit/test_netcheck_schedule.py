"""The pairwise schedule: a round-robin tournament (circle method) and the --quick ring."""

from __future__ import annotations

import itertools

import pytest

from provision.netcheck.schedule import disjoint_rounds, pairs_of, plan_steps, ring, tournament


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


@pytest.mark.parametrize("n", range(0, 12))
def test_tournament_meets_every_pair_once_with_each_node_in_one_pair_per_round(n):
    rounds = tournament(names(n))
    # n-1 rounds; an odd n needs n (each node sits out one round: the bye).
    assert len(rounds) == (0 if n < 2 else n - 1 if n % 2 == 0 else n)
    met = [frozenset(pair) for pairs in rounds for pair in pairs]
    assert sorted(map(sorted, met)) == sorted(map(sorted, map(frozenset, itertools.combinations(
        names(n), 2))))
    for pairs in rounds:
        busy = [node for pair in pairs for node in pair]
        assert len(busy) == len(set(busy))
        assert len(pairs) == n // 2


def test_tournament_with_a_bye_leaves_out_each_node_once():
    rounds = tournament(names(5))
    idle = [set(names(5)) - {node for pair in pairs for node in pair} for pairs in rounds]
    assert sorted(node for left_out in idle for node in left_out) == names(5)


@pytest.mark.parametrize("n, expected", [
    (0, []),
    (1, []),
    (2, [("n0", "n1")]),
    (3, [("n0", "n1"), ("n1", "n2"), ("n2", "n0")]),
    (4, [("n0", "n1"), ("n1", "n2"), ("n2", "n3"), ("n3", "n0")]),
])
def test_ring_pairs_each_node_with_the_next(n, expected):
    assert ring(names(n)) == expected


def test_a_round_is_round_trips_then_one_direction_then_the_other():
    (round_steps,) = plan_steps(names(2), quick=False)
    assert [[(t.kind, t.source, t.target) for t in step] for step in round_steps] == [
        [("rtt", "n0", "n1")], [("bw", "n0", "n1")], [("bw", "n1", "n0")]]


def test_quick_is_one_round_of_two_transfer_steps_whatever_the_size():
    for n in (3, 4, 7, 64):
        (steps,) = plan_steps(names(n), quick=True)
        rtt, forward, backward = steps
        assert len(forward) == len(backward) == n
        # every node sends one stream and receives one in each transfer step
        for step in (forward, backward):
            assert sorted(t.source for t in step) == sorted(t.target for t in step) \
                == sorted(names(n))


def test_full_plan_for_64_nodes_is_63_rounds():
    rounds = plan_steps(names(64), quick=False)
    assert len(rounds) == 63 and len(pairs_of(rounds)) == 64 * 63 // 2


def test_disjoint_rounds_never_put_a_node_in_two_pairs_of_a_round():
    pairs = [("a", "b"), ("a", "c"), ("c", "d"), ("b", "d"), ("a", "d")]
    rounds = disjoint_rounds(pairs)
    assert sorted(pairs_of(rounds)) == sorted(pairs)
    for steps in rounds:
        busy = [node for t in steps[0] for node in (t.source, t.target)]
        assert len(busy) == len(set(busy))
    # a star of pairs on one node: one round each
    assert len(disjoint_rounds([("a", x) for x in "bcde"])) == 4
    assert disjoint_rounds([]) == []
