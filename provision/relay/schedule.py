"""Who sends a shared file to whom: a pure bookkeeping of holders, transfers and the controller.

A host that needs the file takes, in this order: a holder that is free (each serves one peer at
a time, so the holders double every round: log2(N) rounds for N hosts); else it waits when a
busy holder or a transfer in flight may serve it soon; else the controller, which sends one copy
at a time. So the controller sends the first copy, and another only when nothing else can serve
a host (every holder it could use failed it, or no host may serve it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

PEER, CONTROLLER, WAIT = "peer", "controller", "wait"


@dataclass(frozen=True)
class Choice:
    kind: str                    # PEER, CONTROLLER or WAIT
    holder: str | None = None    # for PEER


@dataclass
class Schedule:
    may_serve: Callable[[str, str], bool]          # (holder, receiver) -> allowed
    busy: dict[str, bool] = field(default_factory=dict)   # holder -> serving now
    receiving: set[str] = field(default_factory=set)
    controller_busy: bool = False

    def choose(self, receiver: str, tried: frozenset[str] = frozenset(),
               controller_only: bool = False, defer: bool = False) -> Choice:
        """The source for `receiver` now (and marks it taken), or WAIT. `tried`: holders that
        already failed this receiver; `defer`: leave the controller to others for now (a host
        that may serve nobody should not take the one copy the controller sends)."""
        usable = [] if controller_only else [
            h for h in self.busy if h not in tried and self.may_serve(h, receiver)]
        free = [h for h in usable if not self.busy[h]]
        if free:
            self.busy[free[0]] = True
            self.receiving.add(receiver)
            return Choice(PEER, free[0])
        soon = usable or (not controller_only and any(
            self.may_serve(r, receiver) for r in self.receiving if r != receiver))
        if soon or self.controller_busy or defer:
            return Choice(WAIT)
        self.controller_busy = True
        self.receiving.add(receiver)
        return Choice(CONTROLLER)

    def finish(self, receiver: str, choice: Choice, received: bool,
               holder_failed: bool = False) -> None:
        """A transfer ended: the receiver becomes a holder if it received the file (offered only
        to the hosts it may serve); a holder that failed is no longer offered."""
        self.receiving.discard(receiver)
        if choice.kind == CONTROLLER:
            self.controller_busy = False
        elif choice.holder in self.busy:
            if holder_failed:
                del self.busy[choice.holder]
            else:
                self.busy[choice.holder] = False
        if received:
            self.busy[receiver] = False

    def drop(self, holder: str) -> None:
        self.busy.pop(holder, None)
