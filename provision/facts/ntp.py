"""Facts about the clock: which NTP daemon keeps it, whether it is synchronised, and its offset.

One fact, TimeSync, reads it all in the batched round trip: the running daemons, then only what
applies: `chronyc -n tracking` and `chronyc -n -c sources` (chronyd), `ntpq -pn` (ntpd),
`timedatectl show` and `timedatectl timesync-status` (systemd-timesyncd). Each tool's output is
fenced as a section (`@@ name`, its output, `@@ rc N`) and parsed here, purely.

Offsets are those of the local clock against the time the daemon believes true, in milliseconds,
positive when the local clock is ahead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provision.facts.base import Fact

CHRONYD, NTPD, TIMESYNCD = "chronyd", "ntpd", "systemd-timesyncd"
DAEMONS = (CHRONYD, NTPD, TIMESYNCD)        # in order of preference when several run
# chrony's reference ID for its own clock (`local stratum N` with no better source).
CHRONY_LOCAL_REFID = "7F7F0101"
# chronyc's source state column; chronyc -c prints the same characters.
CHRONY_SOURCE_STATES = {"*": "selected", "+": "combined", "-": "not combined",
                        "?": "unreachable", "x": "falseticker", "~": "too variable"}
# ntpq -p tally codes (the first column).
NTPQ_TALLY = {"*": "selected", "o": "selected (PPS)", "+": "candidate", "#": "backup",
              "-": "outlier", ".": "excess", "x": "falseticker", " ": "rejected"}


@dataclass(frozen=True)
class TimeSource:
    name: str           # address (-n: never a name lookup)
    state: str          # a word from CHRONY_SOURCE_STATES / NTPQ_TALLY
    reach: int | None = None    # the 8-bit reach register (0: none of the last 8 polls answered)


@dataclass(frozen=True)
class ClockState:
    daemon: str | None                 # one of DAEMONS, None when none runs
    synchronised: bool
    offset_ms: float | None = None     # None when the daemon does not report it
    source: str | None = None          # the reference followed: an address, or "local clock"
    stratum: int | None = None         # this host's stratum
    sources: tuple[TimeSource, ...] = ()
    problem: str | None = None         # the daemon runs but its state could not be read
    also_running: tuple[str, ...] = ()     # other time daemons running beside `daemon`

    def sources_text(self) -> str:
        if not self.sources:
            return "no sources configured"
        return ", ".join(f"{s.name} {s.state}" for s in self.sources)


@dataclass(frozen=True)
class TimeSync(Fact):
    """The state of whichever time daemon runs: chronyd, ntpd or systemd-timesyncd."""

    def command(self) -> str:
        # pgrep matches the kernel's 15-character process name, pidof the full one.
        return (
            'running() { pidof "$1" >/dev/null 2>&1 || '
            'pgrep -x "$(printf %.15s "$1")" >/dev/null 2>&1; }\n'
            'section() { echo "@@ $1"; shift; "$@" 2>&1; echo "@@ rc $?"; }\n'
            # Each daemon is looked up once: a pgrep scans every process.
            f"up=; for d in {' '.join(DAEMONS)}; do "
            'running $d && echo "@@ running $d" && up="$up $d "; done\n'
            f'case "$up" in *" {CHRONYD} "*) section tracking chronyc -n tracking; '
            "section sources chronyc -n -c sources;; esac\n"
            f'case "$up" in *" {NTPD} "*) section ntpq ntpq -pn;; esac\n'
            f'case "$up" in *" {TIMESYNCD} "*) section timedatectl timedatectl show; '
            "section timesync-status timedatectl timesync-status;; esac\n"
            "true")

    def parse(self, stdout: str, rc: int) -> ClockState:
        running, sections = split_sections(stdout)
        if not running:
            return ClockState(None, False)
        daemon = next(d for d in DAEMONS if d in running)
        others = tuple(d for d in running if d != daemon)
        if daemon == CHRONYD:
            state = parse_chrony(*sections.get("tracking", ("", 1)),
                                 *sections.get("sources", ("", 1)))
        elif daemon == NTPD:
            state = parse_ntpq(*sections.get("ntpq", ("", 1)))
        else:
            state = parse_timedatectl(*sections.get("timedatectl", ("", 1)),
                                      *sections.get("timesync-status", ("", 1)))
        return ClockState(state.daemon, state.synchronised, state.offset_ms, state.source,
                          state.stratum, state.sources, state.problem, others)


def split_sections(stdout: str) -> tuple[list[str], dict[str, tuple[str, int]]]:
    """TimeSync's output: (running daemons, {section: (output, exit status)})."""
    running: list[str] = []
    sections: dict[str, tuple[str, int]] = {}
    name: str | None = None
    lines: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("@@ running "):
            running.append(line.split()[2])
        elif line.startswith("@@ rc ") and name is not None:
            sections[name] = ("\n".join(lines) + ("\n" if lines else ""), int(line.split()[2]))
            name, lines = None, []
        elif line.startswith("@@ "):
            name, lines = line[3:].strip(), []
        elif name is not None:
            lines.append(line)
    return running, sections


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def _key_values(text: str, separator: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(separator)
        if sep:
            values[key.strip()] = value.strip()
    return values


def parse_chrony_sources(csv: str) -> tuple[TimeSource, ...]:
    """`chronyc -n -c sources`: mode,state,address,stratum,poll,reach(octal),..."""
    sources = []
    for line in csv.splitlines():
        fields = line.split(",")
        if len(fields) >= 6 and fields[0] in "^=#" and fields[0]:
            try:
                reach = int(fields[5], 8)
            except ValueError:
                reach = None
            sources.append(TimeSource(fields[2], CHRONY_SOURCE_STATES.get(fields[1],
                                                                          f"state {fields[1]}"),
                                      reach))
    return tuple(sources)


def parse_chrony(tracking: str, tracking_rc: int, sources_csv: str = "",
                 sources_rc: int = 0) -> ClockState:
    """`chronyc -n tracking` (human-readable) plus `chronyc -n -c sources`."""
    sources = parse_chrony_sources(sources_csv) if sources_rc == 0 else ()
    values = _key_values(tracking, " : ")
    if tracking_rc != 0 or "Leap status" not in values:
        return ClockState(CHRONYD, False, sources=sources,
                          problem=f"chronyc tracking failed: {_first_line(tracking)}")
    refid, _, name = values.get("Reference ID", "").partition(" ")
    name = name.strip("()")
    leap = values["Leap status"]
    synchronised = leap != "Not synchronised" and refid.strip("0") != ""
    offset = None
    match = re.match(r"([0-9.]+) seconds (fast|slow)", values.get("System time", ""))
    if match:
        offset = float(match.group(1)) * 1000 * (1 if match.group(2) == "fast" else -1)
    stratum = int(values["Stratum"]) if values.get("Stratum", "").isdigit() else None
    source = "local clock" if refid == CHRONY_LOCAL_REFID else (name or refid or None)
    return ClockState(CHRONYD, synchronised, offset, source if synchronised else None,
                      stratum if synchronised else None, sources)


def parse_ntpq(text: str, rc: int) -> ClockState:
    """`ntpq -pn`: the peer marked `*` (or `o`) is the one ntpd follows; offsets are in ms."""
    lines = text.splitlines()
    ruler = next((i for i, line in enumerate(lines) if line.startswith("====")), None)
    if rc != 0 or ruler is None:
        return ClockState(NTPD, False, problem=f"ntpq -pn failed: {_first_line(text)}")
    sources, chosen, wrapped = [], None, None
    for line in lines[ruler + 1:]:
        if not line.strip():
            continue
        if wrapped is not None:        # a long (IPv6) address: ntpq puts the rest on a new line
            line, wrapped = wrapped + " " + line.strip(), None
        fields = line[1:].split()
        if len(fields) == 1:
            wrapped = line
            continue
        if len(fields) < 10:
            continue
        tally, (remote, _refid, stratum, _type, _when, _poll, reach, _delay, offset,
                _jitter) = line[0], fields[:10]
        try:
            reach_value = int(reach, 8)
        except ValueError:
            reach_value = None
        sources.append(TimeSource(remote, NTPQ_TALLY.get(tally, f"tally {tally!r}"), reach_value))
        if tally in "*o" and chosen is None:
            # ntpq's offset is the peer's time minus ours; ours minus the reference's is minus it.
            chosen = (remote, -float(offset), int(stratum) + 1 if stratum.isdigit() else None)
    if chosen is None:
        return ClockState(NTPD, False, sources=tuple(sources))
    return ClockState(NTPD, True, chosen[1], chosen[0], chosen[2], tuple(sources))


UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "min": 60000.0}


def parse_timespan_ms(text: str) -> float | None:
    """systemd's signed time spans as timesync-status prints them: +1.004ms, -213us, 1min 2.5s."""
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    parts = re.findall(r"([0-9.]+)\s*(ns|us|µs|ms|min|s)", text.lstrip("+-"))
    if not parts:
        return None
    return sign * sum(float(number) * UNITS_MS[unit] for number, unit in parts)


def parse_timedatectl(show: str, show_rc: int, status: str = "",
                      status_rc: int = 1) -> ClockState:
    """`timedatectl show` (NTPSynchronized) plus `timedatectl timesync-status` (server, offset)."""
    values = _key_values(show, "=")
    if show_rc != 0 or "NTPSynchronized" not in values:
        return ClockState(TIMESYNCD, False, problem=f"timedatectl show failed: {_first_line(show)}")
    detail = _key_values(status, ":") if status_rc == 0 else {}
    server = detail.get("Server", "").split(" ")[0] or None
    stratum = int(detail["Stratum"]) + 1 if detail.get("Stratum", "").isdigit() else None
    offset = parse_timespan_ms(detail["Offset"]) if "Offset" in detail else None
    if offset is not None:
        offset = -offset      # timesyncd's offset is the server's time minus ours, like ntpq's
    sources = (TimeSource(server, "selected" if values["NTPSynchronized"] == "yes"
                          else "not synchronised"),) if server else ()
    if values["NTPSynchronized"] != "yes":
        return ClockState(TIMESYNCD, False, sources=sources)
    return ClockState(TIMESYNCD, True, offset, server, stratum, sources)
