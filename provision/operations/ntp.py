"""Time sync: each host's clock is synchronised (chronyd, ntpd or systemd-timesyncd) within a
limit; chrony waits for its first sync after a (re)start; clocks agree across hosts.

The skew across hosts is measured from the controller, over the connections the run has open
(one more remote command per host): each host's clock is read a few times in that command, and
the reading with the shortest round trip counts, placed at the middle of its round trip,
(t_send + t_receive) / 2 on the controller's clock: the host's clock differs from the
controller's by `remote - middle`, give or take half the round trip, and the controller's own
error cancels out of the spread between hosts. train's pre-launch check uses the same readings.
"""

from __future__ import annotations

import math
import shlex
import statistics
import time
from dataclasses import dataclass

import paramiko

from provision.checks import CheckContext, cluster_check
from provision.errors import HostUnreachable
from provision.facts.ntp import CHRONY_SOURCE_STATES, CHRONYD, DAEMONS, ClockState, TimeSync
from provision.operations.base import (Change, Command, FactValues, Failure, HostContext,
                                       NoChange, operation)
from provision.plan import Status, TaskResult
from provision.settings import Setting


# -- clocks read from the controller, and their skew ------------------------------------------

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

# How often `chronyc waitsync` asks chronyd whether it is synchronised.
WAITSYNC_INTERVAL_S = 0.5


def _offset_text(offset_ms: float) -> str:
    return f"{offset_ms:+.3f} ms"


def clock_verdict(state: ClockState, max_offset_ms: float) -> tuple[bool, str]:
    """(fine, what to tell the user) for one host's clock against the offset limit."""
    daemon = state.daemon
    if daemon is None:
        return False, (f"no time sync daemon runs (looked for {', '.join(DAEMONS)}): set "
                       "ntp_servers to have provision configure chrony, or start the host's own "
                       "time service")
    if state.problem:
        return False, f"{daemon} runs but its state cannot be read: {state.problem}"
    if not state.synchronised:
        return False, (f"not synchronised: {daemon} has no usable time source "
                       f"({state.sources_text()}); check that the sources are reachable from "
                       "this host (UDP port 123) and that they serve time")
    offset = state.offset_ms
    if offset is not None and abs(offset) > max_offset_ms:
        where = "ahead of" if offset > 0 else "behind"
        return False, (f"clock is {abs(offset):.3f} ms {where} its reference ({state.source}, "
                       f"per {daemon}), more than ntp_max_offset_ms {max_offset_ms:g}: the daemon "
                       "is still correcting it, or may not (chronyd -x); wait, or step the clock "
                       "(chronyc makestep)")
    if state.source == "local clock":
        text = (f"{daemon} serves its own clock at stratum {state.stratum} (no better source: "
                "this host is the time reference)")
    else:
        text = f"{daemon} synchronised to {state.source}"
        if state.stratum is not None:
            text += f" (stratum {state.stratum})"
        text += (f", offset {_offset_text(offset)}" if offset is not None
                 else ", offset not reported")
    if state.also_running:
        text += f"; warning: {', '.join(state.also_running)} runs too and may fight it"
    return True, text


@operation("ntp_check", [Setting("max_offset_ms", "float", min=0)], required=("max_offset_ms",),
           facts=lambda a: [TimeSync()])
def ntp_check(args: dict, facts: FactValues, ctx: HostContext):
    """The clock is synchronised (chronyd, ntpd or systemd-timesyncd), within max_offset_ms."""
    fine, text = clock_verdict(facts[TimeSync()], args["max_offset_ms"])
    return NoChange(text) if fine else Failure(text)


def _sources_summary_awk() -> str:
    """awk program: `chronyc -n -c sources` lines as one 'ADDRESS STATE, ...' line."""
    words = " ".join(f'if ($2 == "{char}") w = "{word}";'
                     for char, word in CHRONY_SOURCE_STATES.items())
    return '{ w = "state " $2; ' + words + ' printf "%s%s %s", (NR > 1 ? ", " : ""), $3, w }'


SOURCES_SUMMARY_AWK = _sources_summary_awk()


def waitsync_script(timeout_s: float, max_offset_ms: float) -> str:
    """sh: wait until chronyd is synchronised with at most max_offset_ms left to correct; on
    timeout, fail with a line that says so and what state chronyd's sources are in."""
    tries = max(1, math.ceil(timeout_s / WAITSYNC_INTERVAL_S))
    return (f"chronyc -n waitsync {tries} {max_offset_ms / 1000:.6f} 0 {WAITSYNC_INTERVAL_S} "
            ">/dev/null 2>&1 && exit 0\n"
            f"sources=$(chronyc -n -c sources 2>/dev/null | awk -F, '{SOURCES_SUMMARY_AWK}')\n"
            f'echo "chronyd did not synchronise within {timeout_s:g} s (ntp_sync_timeout_s); '
            'its sources: ${sources:-none}" >&2\n'
            "exit 1\n")


@operation("chrony_waitsync", [Setting("timeout_s", "float", min=1),
                               Setting("max_offset_ms", "float", min=0)],
           required=("timeout_s", "max_offset_ms"), facts=lambda a: [TimeSync()])
def chrony_waitsync(args: dict, facts: FactValues, ctx: HostContext):
    """chronyd is synchronised, waiting up to timeout_s for it (`chronyc waitsync`), e.g.
    after a restart; fails with the state of its sources when it does not synchronise in time."""
    state = facts[TimeSync()]
    if state.daemon == CHRONYD and state.synchronised and not state.problem and (
            state.offset_ms is None or abs(state.offset_ms) <= args["max_offset_ms"]):
        return NoChange(f"chronyd is synchronised to {state.source}")
    return Change(f"wait up to {args['timeout_s']:g} s for chronyd to synchronise",
                  (Command(waitsync_script(args["timeout_s"], args["max_offset_ms"])),))


# -- across hosts ----------------------------------------------------------------------------------

def skew_results(readings: list[ClockReading], max_skew_ms: float,
                 role: str, task: str) -> list[TaskResult]:
    verdict = skew_verdict(readings, max_skew_ms)
    summary = (f"spread {verdict.spread_ms:.3f} ms ±{verdict.uncertainty_ms:.3f} ms across "
               f"{len(readings)} hosts (ntp_max_skew_ms {max_skew_ms:g})")
    if verdict.uncertainty_ms > max_skew_ms / 2:
        summary += ("; warning: the round trips from the controller are too slow to measure "
                    "a skew this small reliably")
    results = []
    for reading in readings:
        off = reading.offset_ms - verdict.median_ms
        if reading.host in verdict.outliers:
            where = "ahead of" if off > 0 else "behind"
            results.append(TaskResult(
                reading.host, role, task, Status.FAILED,
                f"clock is {abs(off):.3f} ms {where} the median of the cluster "
                f"(±{reading.uncertainty_ms:.3f} ms): {summary}; is it synchronised to the "
                f"same servers as {verdict.reference}? compare `chronyc sources` on both"))
        else:
            results.append(TaskResult(
                reading.host, role, task, Status.OK,
                f"clock {_offset_text(reading.offset_ms)} from the controller's "
                f"(±{reading.uncertainty_ms:.3f} ms); {summary}"))
    return results


# The host answers every line the controller sends with its time: the shell is started before
# the first sample, so a sample's round trip is the network's and a `date`, not an SSH channel's
# set-up and a login shell's start (hundreds of ms on a loaded host, almost all before `date`).
CLOCK_SCRIPT = "echo ready; while read -r _; do date +%s.%N; done"
CLOCK_SAMPLES = 4
CLOCK_TIMEOUT_S = 10.0


def read_clock(session, samples: int = CLOCK_SAMPLES,
               timeout: float = CLOCK_TIMEOUT_S) -> ClockReading:
    """One remote command on the open connection that answers `samples` pings with the host's
    time; the sample with the shortest round trip is kept (the one that says the most)."""
    host = session.connection.host.name
    session.round_trips += 1
    try:
        channel = session.connection.open().open_session(timeout=timeout)
        try:
            channel.settimeout(timeout)
            channel.exec_command(shlex.join(["sh", "-c", CLOCK_SCRIPT]))
            answers = channel.makefile("rb")
            for _ in range(100):       # a login script may print before the command runs
                line = answers.readline()
                if not line or line.strip() == b"ready":
                    break
            if line.strip() != b"ready":
                raise ValueError("cannot read the clock: the command did not start")
            readings = []
            for _ in range(samples):
                sent = time.time_ns()
                channel.sendall(b"\n")
                line = answers.readline()
                received = time.time_ns()
                readings.append(ClockReading(
                    host, sent, parse_remote_ns(line.decode(errors="replace")), received))
            channel.shutdown_write()
            return min(readings, key=lambda r: r.uncertainty_ms)
        finally:
            channel.close()
    except (OSError, EOFError, paramiko.SSHException) as exc:   # socket.timeout is an OSError
        raise HostUnreachable(f"{host}: reading the clock failed: {exc or type(exc).__name__}") \
            from None


@cluster_check("ntp_skew")
def ntp_skew(ctx: CheckContext) -> list[TaskResult]:
    """Clocks agree across hosts within ntp_max_skew_ms, as read from the controller.

    Reading the clocks costs a remote command per host. Check mode (`provision check`, `setup
    --check`) always reads them: verifying is what it is for. A setup run reads them after it
    changed something, and leaves them be when it changed nothing on any host (its one round
    trip per host is the facts batch alone), so that a run with nothing to do stays one round
    trip: every host's own check has just passed, each within ntp_max_offset_ms of its source.
    """
    sessions, role = ctx.sessions, ctx.role
    task = "clocks agree across hosts"

    def skip(reason: str) -> list[TaskResult]:
        return [TaskResult(name, role.name, task, Status.SKIPPED, reason) for name in sessions]
    if len(sessions) < 2:
        return skip("a single host: no other clock to compare with")
    if not ctx.check_mode and not any(t.status is Status.CHANGED
                                  for s in sessions.values() for t in s.tasks):
        return skip("nothing changed on any host this run and every host's own clock check "
                    "passed; the clocks are compared after a change, and by `provision check`")
    limit = min(float(ctx.variables[name]["ntp_max_skew_ms"]) for name in sessions)

    def read(name: str) -> ClockReading | TaskResult:
        try:
            return read_clock(sessions[name])
        except (ValueError, HostUnreachable) as exc:
            return TaskResult(name, role.name, task, Status.FAILED, str(exc))
    outcomes = ctx.map(read, sessions)
    failed = [o for o in outcomes if isinstance(o, TaskResult)]
    readings = [o for o in outcomes if isinstance(o, ClockReading)]
    if len(readings) < 2:
        return failed + [TaskResult(r.host, role.name, task, Status.SKIPPED,
                                    "no other host's clock could be read to compare with")
                         for r in readings]
    return failed + skew_results(readings, limit, role.name, task)
