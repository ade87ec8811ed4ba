"""Clock skew across hosts, read from the controller (the ntp role's cross-host check and
train's pre-launch check).

A host's clock is read between two controller times; the reading is placed at the middle of
that round trip, (t_send + t_receive) / 2 on the controller's clock. The host's clock then
differs from the controller's by `remote - middle`, give or take half the round trip; the
controller's own error cancels out of the spread between hosts.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockReading:
    """A host's clock read from the controller: remote time between two controller times (ns)."""

    host: str
    sent_ns: int
    remote_ns: int
    received_ns: int

    @property
    def offset_ms(self) -> float:
        """The host's clock minus the controller's, taking the reading at mid round trip."""
        return (2 * self.remote_ns - self.sent_ns - self.received_ns) / 2e6   # exact until here

    @property
    def uncertainty_ms(self) -> float:
        """Half the round trip: the reading happened somewhere inside it."""
        return (self.received_ns - self.sent_ns) / 2 / 1e6


def parse_remote_ns(stdout: str) -> int:
    """`date +%s.%N` as integer nanoseconds (ValueError when the date has no %N, e.g. busybox)."""
    seconds, _, fraction = stdout.strip().partition(".")
    if not seconds.isdigit() or len(fraction) != 9 or not fraction.isdigit():
        raise ValueError(f"unexpected clock reading {stdout.strip()[:40]!r} (needs GNU date)")
    return int(seconds) * 10**9 + int(fraction)


@dataclass(frozen=True)
class SkewVerdict:
    spread_ms: float
    uncertainty_ms: float        # of the spread: the extreme hosts' half round trips together
    outliers: frozenset[str]     # hosts whose clock is off the pack when the spread is too wide
    reference: str               # the host whose clock is closest to the median
    median_ms: float


def skew_verdict(readings: list[ClockReading], max_skew_ms: float) -> SkewVerdict:
    """The spread of the hosts' clocks, and which hosts make it exceed `max_skew_ms`: those more
    than half the limit from the median (there is at least one when the spread exceeds it)."""
    offsets = {r.host: r.offset_ms for r in readings}
    uncertainty = {r.host: r.uncertainty_ms for r in readings}
    high = max(offsets, key=lambda h: offsets[h])
    low = min(offsets, key=lambda h: offsets[h])
    spread = offsets[high] - offsets[low]
    median = statistics.median(offsets.values())
    outliers = frozenset(h for h, o in offsets.items() if abs(o - median) > max_skew_ms / 2) \
        if spread > max_skew_ms else frozenset()
    reference = min(offsets, key=lambda h: abs(offsets[h] - median))
    return SkewVerdict(spread, uncertainty[high] + uncertainty[low], outliers, reference, median)
