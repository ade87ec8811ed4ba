"""The relay's schedule: who sends to whom, round by round, in a simulated fleet."""

from __future__ import annotations

import math

import pytest

from provision.relay.schedule import CONTROLLER, PEER, WAIT, Schedule


def everyone(holder: str, receiver: str) -> bool:
    return holder != receiver


def rounds(schedule: Schedule, hosts: list[str], fails=lambda choice, receiver: False):
    """Every host that can start a transfer does, then all of them end: one round. Returns the
    rounds' transfers as (source, receiver) lists, the controller as 'controller'."""
    waiting, history = list(hosts), []
    while waiting:
        started = []
        for receiver in waiting:
            choice = schedule.choose(receiver)
            if choice.kind != WAIT:
                started.append((receiver, choice))
        assert started, f"nobody can start: {waiting} wait forever"
        for receiver, choice in started:
            failed = fails(choice, receiver)
            schedule.finish(receiver, choice, not failed, holder_failed=failed)
            if not failed:
                waiting.remove(receiver)
        history.append([(c.holder or CONTROLLER, r) for r, c in started])
    return history


@pytest.mark.parametrize("count", [1, 2, 3, 4, 16, 64, 200])
def test_the_controller_sends_once_and_the_holders_double_every_round(count):
    hosts = [f"h{i}" for i in range(count)]
    history = rounds(Schedule(everyone), hosts)
    sources = [source for transfers in history for source, _ in transfers]
    assert sources.count(CONTROLLER) == 1 and history[0] == [(CONTROLLER, "h0")]
    assert len(history) == 1 + math.ceil(math.log2(count))
    assert sorted(r for transfers in history for _, r in transfers) == sorted(hosts)


def test_each_holder_serves_one_peer_at_a_time():
    schedule = Schedule(everyone)
    schedule.finish("a", schedule.choose("a"), True)
    assert schedule.choose("b").holder == "a"
    assert schedule.choose("c").kind == WAIT          # a is busy with b; b may serve c soon


def test_a_failed_holder_is_not_offered_again_and_the_controller_steps_in():
    schedule = Schedule(everyone)
    schedule.finish("a", schedule.choose("a"), True)
    to_b = schedule.choose("b")
    schedule.finish("b", to_b, False, holder_failed=True)     # a died while serving b
    assert schedule.choose("b", frozenset({"a"})).kind == CONTROLLER
    assert schedule.choose("c").kind == WAIT                   # b is receiving: c waits for it


def test_a_receiver_that_cannot_use_peers_waits_for_the_controller_only():
    schedule = Schedule(everyone)
    first = schedule.choose("a")
    assert schedule.choose("b", controller_only=True).kind == WAIT
    schedule.finish("a", first, True)
    assert schedule.choose("b", controller_only=True).kind == CONTROLLER


def test_hosts_no_peer_may_serve_get_their_own_copy_in_turn():
    # "out" is outside the cluster: nobody's training ports are open to it.
    def allowed(holder: str, receiver: str) -> bool:
        return holder != receiver and receiver != "out"

    history = rounds(Schedule(allowed), ["a", "out", "b", "c"])
    sources = {receiver: source for transfers in history for source, receiver in transfers}
    assert sources["out"] == CONTROLLER and sources["a"] == CONTROLLER
    assert [sources[h] for h in ("b", "c")].count(CONTROLLER) == 0


def test_a_holder_may_not_serve_itself_nor_a_host_it_may_not_serve():
    schedule = Schedule(lambda holder, receiver: (holder, receiver) == ("a", "b"))
    schedule.finish("a", schedule.choose("a"), True)
    assert schedule.choose("c").kind == CONTROLLER
    assert schedule.choose("b").kind == PEER


def test_a_deferring_host_leaves_the_controller_to_one_that_may_serve():
    schedule = Schedule(lambda holder, receiver: holder != receiver and holder != "out")
    assert schedule.choose("out", defer=True).kind == WAIT
    assert schedule.choose("a").kind == CONTROLLER
