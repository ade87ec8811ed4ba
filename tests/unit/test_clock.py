"""Time sync: TimeSync parsed from real chronyc output (and ntpq/timedatectl in their formats),
the per-host verdict, the wait for chrony, the chrony.conf template, and the skew arithmetic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provision.facts.ntp import (ClockState, TimeSource, TimeSync, parse_chrony, parse_ntpq,
                                   parse_timedatectl, parse_timespan_ms, split_sections)
from provision.errors import HostUnreachable
from provision.inventory import Group, Host, Inventory
from provision.operations import REGISTRY, Change, Failure, HostContext, NoChange, ntp
from provision.operations.files import render_template
from provision.operations.ntp import (SOURCES_SUMMARY_AWK, ClockReading, clock_verdict,
                                      parse_remote_ns, skew_results, skew_verdict,
                                      waitsync_script)
from provision.plan import Status, TaskResult
from provision.roles import check_context, load_role

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clock"
HOST = Host(name="n1", address="10.0.0.1")


def captured(case: str) -> ClockState:
    folder = FIXTURES / case
    return TimeSync().parse((folder / "stdout").read_text(), int((folder / "rc").read_text()))


def sources_csv(case: str) -> str:
    return split_sections((FIXTURES / case / "stdout").read_text())[1]["sources"][0]


# -- parsing -----------------------------------------------------------------------------------

def test_every_fixture_is_tested():
    cases = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert cases == set(EXPECTED_VERDICTS)


def test_chrony_client_synchronised():
    state = captured("chrony-client-synced")
    assert (state.daemon, state.synchronised, state.source, state.stratum) == \
        ("chronyd", True, "10.221.0.11", 9)
    assert state.offset_ms == pytest.approx(0.001606)           # "0.000001606 seconds fast"
    assert state.sources == (TimeSource("10.221.0.11", "selected", 0o75),)
    assert state.problem is None and state.also_running == ()


def test_chrony_local_stratum_server():
    state = captured("chrony-local-server")
    assert (state.synchronised, state.source, state.stratum, state.offset_ms, state.sources) == \
        (True, "local clock", 8, 0.0, ())


def test_chrony_source_unreachable():
    state = captured("chrony-source-unreachable")
    assert (state.daemon, state.synchronised, state.source, state.stratum) == \
        ("chronyd", False, None, None)
    assert state.sources == (TimeSource("10.221.0.11", "unreachable", 0),)
    assert state.sources_text() == "10.221.0.11 unreachable"


def test_chrony_offset_above_limit_is_parsed_with_its_sign():
    state = captured("chrony-offset-too-large")
    assert state.synchronised and state.source == "10.221.0.14"
    assert state.offset_ms == pytest.approx(-2557.405472)       # "seconds slow of NTP time"


def test_chrony_not_answering_is_a_problem_not_a_crash():
    state = captured("chrony-not-answering")
    assert (state.daemon, state.synchronised) == ("chronyd", False)
    assert state.problem == "chronyc tracking failed: 506 Cannot talk to daemon"


def test_no_daemon():
    assert captured("no-daemon") == ClockState(None, False)


def test_ntpd_synchronised_with_wrapped_ipv6_peer():
    state = captured("ntpd-synced")
    assert (state.daemon, state.synchronised, state.source, state.stratum) == \
        ("ntpd", True, "10.0.0.1", 2)
    assert state.offset_ms == pytest.approx(0.034)       # ntpq: the peer is 0.034 ms behind us
    assert [(s.name, s.state, s.reach) for s in state.sources] == [
        ("10.0.0.1", "selected", 255), ("10.0.0.2", "candidate", 255),
        ("2001:db8::123", "candidate", 255), ("10.0.0.3", "outlier", 255)]


def test_ntpd_starting_is_not_synchronised():
    state = captured("ntpd-starting")
    assert (state.synchronised, state.source) == (False, None)
    assert state.sources_text() == "10.0.0.1 rejected, 10.0.0.2 rejected"


def test_ntpd_offset_above_limit():
    assert captured("ntpd-offset-too-large").offset_ms == pytest.approx(-412.337)


def test_ntpq_failure():
    state = parse_ntpq("ntpq: read: Connection refused\n", 1)
    assert state.problem == "ntpq -pn failed: ntpq: read: Connection refused"


def test_timesyncd_synchronised():
    state = captured("timesyncd-synced")
    assert (state.daemon, state.synchronised, state.source, state.stratum) == \
        ("systemd-timesyncd", True, "10.0.0.1", 3)
    assert state.offset_ms == pytest.approx(1.004)       # server - local was -1.004ms


def test_timesyncd_unsynchronised():
    state = captured("timesyncd-unsynchronised")
    assert (state.synchronised, state.sources) == \
        (False, (TimeSource("10.0.0.1", "not synchronised"),))


def test_timedatectl_without_systemd():
    # Real output of `timedatectl show` on a host without systemd (this machine).
    state = parse_timedatectl("System has not been booted with systemd as init system (PID 1). "
                              "Can't operate.\nFailed to connect to bus: Host is down\n", 1)
    assert state.problem.startswith("timedatectl show failed: System has not been booted")


@pytest.mark.parametrize("text,ms", [("+1.004ms", 1.004), ("-213us", -0.213), ("+2.5s", 2500),
                                     ("-1min 2.5s", -62500), ("15ns", 0.000015), ("n/a", None)])
def test_systemd_time_spans(text, ms):
    assert parse_timespan_ms(text) == (pytest.approx(ms) if ms is not None else None)


def test_chronyd_preferred_and_the_others_reported():
    stdout = ("@@ running chronyd\n@@ running systemd-timesyncd\n@@ tracking\n" +
              split_sections((FIXTURES / "chrony-client-synced" / "stdout").read_text())[1]
              ["tracking"][0] + "@@ rc 0\n")
    state = TimeSync().parse(stdout, 0)
    assert state.daemon == "chronyd" and state.also_running == ("systemd-timesyncd",)
    assert "warning: systemd-timesyncd runs too" in clock_verdict(state, 100)[1]


def test_chrony_tracking_alone_still_parses():
    tracking = split_sections((FIXTURES / "chrony-client-synced" / "stdout").read_text())[1]
    state = parse_chrony(*tracking["tracking"])
    assert state.synchronised and state.sources == ()


def test_fact_command_runs_under_sh():
    # Whatever runs on this machine, the snippet is valid sh and its output parses.
    done = subprocess.run(["sh", "-c", TimeSync().command()], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert isinstance(TimeSync().parse(done.stdout, done.returncode), ClockState)


# -- the per-host verdict ----------------------------------------------------------------------

EXPECTED_VERDICTS = {
    "chrony-client-synced": (True, "chronyd synchronised to 10.221.0.11 (stratum 9), "
                                   "offset +0.002 ms"),
    "chrony-local-server": (True, "chronyd serves its own clock at stratum 8"),
    "chrony-source-unreachable": (False, "not synchronised: chronyd has no usable time source "
                                         "(10.221.0.11 unreachable)"),
    "chrony-offset-too-large": (False, "clock is 2557.405 ms behind its reference (10.221.0.14, "
                                       "per chronyd), more than ntp_max_offset_ms 100"),
    "chrony-not-answering": (False, "chronyd runs but its state cannot be read: chronyc "
                                    "tracking failed: 506 Cannot talk to daemon"),
    "no-daemon": (False, "no time sync daemon runs (looked for chronyd, ntpd, "
                         "systemd-timesyncd)"),
    "ntpd-synced": (True, "ntpd synchronised to 10.0.0.1 (stratum 2), offset +0.034 ms"),
    "ntpd-starting": (False, "not synchronised: ntpd has no usable time source (10.0.0.1 "
                             "rejected, 10.0.0.2 rejected)"),
    "ntpd-offset-too-large": (False, "clock is 412.337 ms behind its reference (10.0.0.1, per "
                                     "ntpd), more than ntp_max_offset_ms 100"),
    "timesyncd-synced": (True, "systemd-timesyncd synchronised to 10.0.0.1 (stratum 3), "
                               "offset +1.004 ms"),
    "timesyncd-unsynchronised": (False, "not synchronised: systemd-timesyncd has no usable time "
                                        "source (10.0.0.1 not synchronised)"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED_VERDICTS))
def test_ntp_check_verdict(case):
    fine, text = EXPECTED_VERDICTS[case]
    outcome = REGISTRY["ntp_check"].plan({"max_offset_ms": 100}, {TimeSync(): captured(case)},
                                         HostContext(HOST))
    assert isinstance(outcome, NoChange if fine else Failure), outcome
    assert text in outcome.reason


def test_offset_limit_is_inclusive_and_configurable():
    state = captured("ntpd-offset-too-large")          # 412.337 ms behind
    assert clock_verdict(state, 412.337)[0]
    assert not clock_verdict(state, 412.3)[0]
    assert clock_verdict(captured("chrony-offset-too-large"), 3000)[0]


def test_timesyncd_without_offset_is_judged_on_sync_alone():
    state = ClockState("systemd-timesyncd", True, None, "10.0.0.1")
    assert clock_verdict(state, 0) == (True, "systemd-timesyncd synchronised to 10.0.0.1, "
                                             "offset not reported")


# -- waiting for chrony ------------------------------------------------------------------------

def test_waitsync_not_needed_when_synchronised():
    outcome = REGISTRY["chrony_waitsync"].plan(
        {"timeout_s": 60, "max_offset_ms": 100}, {TimeSync(): captured("chrony-client-synced")},
        HostContext(HOST))
    assert outcome == NoChange("chronyd is synchronised to 10.221.0.11")


@pytest.mark.parametrize("case", ["chrony-source-unreachable", "chrony-not-answering",
                                  "chrony-offset-too-large", "no-daemon"])
def test_waitsync_waits_otherwise(case):
    outcome = REGISTRY["chrony_waitsync"].plan(
        {"timeout_s": 7, "max_offset_ms": 50}, {TimeSync(): captured(case)}, HostContext(HOST))
    assert isinstance(outcome, Change)
    assert outcome.description == "wait up to 7 s for chronyd to synchronise"
    script = outcome.commands[0].run
    # 14 tries 0.5 s apart, done once at most 50 ms of correction is left.
    assert script.startswith("chronyc -n waitsync 14 0.050000 0 0.5 ")


def test_waitsync_timeout_message_names_the_sources_states():
    # The summary the timeout message carries, from real `chronyc -n -c sources` lines.
    lines = sources_csv("chrony-client-synced") + sources_csv("chrony-source-unreachable") + \
        "#,x,PPS0,0,4,377,3,0,0,0\n^,~,10.9.9.9,3,6,377,3,0,0,0\n^,%,10.8.8.8,3,6,377,3,0,0,0\n"
    done = subprocess.run(["awk", "-F,", SOURCES_SUMMARY_AWK], input=lines, capture_output=True,
                          text=True, timeout=10, check=True)
    assert done.stdout == ("10.221.0.11 selected, 10.221.0.11 unreachable, PPS0 falseticker, "
                           "10.9.9.9 too variable, 10.8.8.8 state %")
    assert "did not synchronise within 7 s" in waitsync_script(7, 100)


# -- the configuration template ----------------------------------------------------------------

def render(host: Host, **host_vars) -> str:
    role = load_role("ntp")
    variables = {**role.variables(host_vars), "inventory_hostname": host.name, "host": host}
    return render_template(role.path, "chrony.conf.j2", variables)


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_template_client():
    text = render(Host(name="n2", address="10.0.0.12"), ntp_servers=["10.0.0.11", "ntp.example"])
    assert directives(text) == ["server 10.0.0.11 iburst", "server ntp.example iburst",
                                "driftfile /var/lib/chrony/chrony.drift", "makestep 1 3",
                                "rtcsync", "pidfile /run/chrony/chronyd.pid"]


def test_template_cluster_time_server_skips_itself():
    # The same ntp_servers for every host: the server leaves out its own address and name.
    host = Host(name="n1", address="10.0.0.11")
    text = render(host, ntp_servers=["10.0.0.11", "n1", "upstream.example"],
                  ntp_local_stratum=8, ntp_allow=["10.0.0.0/24", "fd00::/64"])
    assert directives(text) == ["server upstream.example iburst", "local stratum 8",
                                "allow 10.0.0.0/24", "allow fd00::/64",
                                "driftfile /var/lib/chrony/chrony.drift", "makestep 1 3",
                                "rtcsync", "pidfile /run/chrony/chronyd.pid"]


@pytest.mark.skipif(not shutil.which("chronyd"), reason="chronyd is not installed here")
def test_rendered_configurations_are_accepted_by_chronyd(tmp_path):
    # chronyd -p parses the file as chronyd would (an unknown directive is fatal) and exits.
    for text in (render(Host(name="n2", address="10.0.0.12"), ntp_servers=["10.0.0.11"]),
                 render(Host(name="n1", address="10.0.0.11"), ntp_servers=["10.0.0.11"],
                        ntp_local_stratum=8, ntp_allow=["10.0.0.0/24"])):
        path = tmp_path / "chrony.conf"
        path.write_text(text)
        done = subprocess.run([shutil.which("chronyd"), "-p", "-f", str(path)],
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
        assert directives(done.stdout) == directives(text)


# -- skew across hosts -------------------------------------------------------------------------

def reading(host: str, offset_ms: float, rtt_ms: float = 1.0) -> ClockReading:
    """A reading whose host clock is `offset_ms` off the controller's, with this round trip."""
    sent = 1_800_000_000 * 10**9
    received = sent + int(rtt_ms * 1e6)
    return ClockReading(host, sent, sent + int(rtt_ms * 1e6) // 2 + int(offset_ms * 1e6),
                        received)


def test_reading_arithmetic():
    r = ClockReading("h", sent_ns=1_000_000_000, remote_ns=1_007_000_000,
                     received_ns=1_004_000_000)
    # Mid round trip is 1.002 s on the controller; the host said 1.007 s.
    assert (r.offset_ms, r.uncertainty_ms) == (pytest.approx(5.0), pytest.approx(2.0))


def test_remote_time_parsing():
    assert parse_remote_ns("1795759525.206509025\n") == 1795759525206509025
    with pytest.raises(ValueError, match="needs GNU date"):
        parse_remote_ns("1795759525.N\n")      # busybox date has no %N


def test_skew_within_limit():
    readings = [reading("a", 0.2, 0.8), reading("b", -0.1, 1.2), reading("c", 0.05, 0.9)]
    verdict = skew_verdict(readings, 50)
    assert verdict.spread_ms == pytest.approx(0.3)
    assert verdict.uncertainty_ms == pytest.approx(0.4 + 0.6)    # a's and b's half round trips
    assert verdict.outliers == frozenset() and verdict.reference == "c"
    results = skew_results(readings, 50, "ntp", "clocks agree")
    assert {r.status for r in results} == {Status.OK}
    assert "spread 0.300 ms ±1.000 ms across 3 hosts (ntp_max_skew_ms 50)" in results[0].message
    assert "warning" not in results[0].message


def test_skew_above_limit_fails_the_host_that_is_off():
    readings = [reading("a", 1.0), reading("b", -2.0), reading("c", 612.5), reading("d", 0.0)]
    results = {r.host: r for r in skew_results(readings, 250, "ntp", "clocks agree")}
    assert {h for h, r in results.items() if r.status is Status.FAILED} == {"c"}
    message = results["c"].message
    assert message.startswith("clock is 612.000 ms ahead of the median of the cluster")
    assert "spread 614.500 ms ±1.000 ms across 4 hosts (ntp_max_skew_ms 250)" in message
    assert "same servers as a" in message       # the host nearest the median (0.5 ms)
    assert results["a"].status is Status.OK


def test_skew_split_cluster_fails_both_sides():
    # Two groups following different servers 400 ms apart: no side is "the" right one.
    readings = [reading("a", 0), reading("b", 1), reading("c", 400), reading("d", 401)]
    verdict = skew_verdict(readings, 250)
    assert verdict.outliers == frozenset("abcd")


def test_slow_round_trips_are_flagged():
    readings = [reading("a", 0, 300), reading("b", 10, 280)]
    message = skew_results(readings, 250, "ntp", "t")[0].message
    assert "±290.000 ms" in message and "too slow to measure" in message


# -- the cluster check, around its clock readings ----------------------------------------------

class FakeSession:
    """A host whose run made `round_trips` round trips: more than the one facts batch means a
    task changed something there (HostSession.tasks then holds a CHANGED result)."""

    def __init__(self, name: str, round_trips: int):
        self.name, self.round_trips = name, round_trips
        self.tasks = ([TaskResult(name, "ntp", "chrony configuration", Status.CHANGED, "")]
                      if round_trips > 1 else [])


def run_skew_check(monkeypatch, round_trips: dict[str, int], check_mode: bool,
                   offsets: dict[str, float | Exception], **inventory_vars):
    """ntp_skew over fake sessions whose clock readings are given (or fail)."""

    def read_clock(session):
        value = offsets[session.name]
        if isinstance(value, Exception):
            raise value
        return reading(session.name, value)
    monkeypatch.setattr(ntp, "read_clock", read_clock)
    hosts = {n: Host(name=n, address="10.0.0.1", vars=dict(inventory_vars)) for n in round_trips}
    inventory = Inventory(Path("inventory.yaml"), hosts,
                          {"all": Group("all", list(hosts), [], {})})
    sessions = {n: FakeSession(n, trips) for n, trips in round_trips.items()}
    results = ntp.ntp_skew(check_context(sessions, inventory, load_role("ntp"),
                                                check_mode))
    return {r.host: r for r in results}


def test_skew_check_skips_a_run_that_changed_nothing(monkeypatch):
    results = run_skew_check(monkeypatch, {"a": 1, "b": 1}, False, {})
    assert {r.status for r in results.values()} == {Status.SKIPPED}
    assert results["a"].message.startswith("nothing changed on any host this run")


def test_skew_check_reads_after_a_change_and_in_check_mode(monkeypatch):
    for trips, check_mode in (({"a": 3, "b": 1}, False), ({"a": 1, "b": 1}, True)):
        results = run_skew_check(monkeypatch, trips, check_mode, {"a": 0.5, "b": 400.0})
        assert {h: r.status for h, r in results.items()} == \
            {"a": Status.FAILED, "b": Status.FAILED}         # 399.5 ms apart, limit 250


def test_skew_check_limit_comes_from_the_inventory(monkeypatch):
    results = run_skew_check(monkeypatch, {"a": 1, "b": 1}, True, {"a": 0.5, "b": 400.0},
                             ntp_max_skew_ms=500)
    assert {r.status for r in results.values()} == {Status.OK}
    assert "(ntp_max_skew_ms 500)" in results["a"].message


def test_skew_check_a_host_that_cannot_be_read(monkeypatch):
    results = run_skew_check(monkeypatch, {"a": 1, "b": 1, "c": 1}, True, {
        "a": 0.1, "b": HostUnreachable("b: reading the clock failed: closed"), "c": 0.2})
    assert (results["b"].status, results["b"].message) == \
        (Status.FAILED, "b: reading the clock failed: closed")
    assert results["a"].status is results["c"].status is Status.OK
    assert "across 2 hosts" in results["a"].message
    alone = run_skew_check(monkeypatch, {"a": 1, "b": 1}, True,
                           {"a": 0.1, "b": ValueError("cannot read the clock: x")})
    assert alone["a"].status is Status.SKIPPED and alone["b"].status is Status.FAILED


def test_skew_check_single_host(monkeypatch):
    results = run_skew_check(monkeypatch, {"a": 5}, True, {})
    assert results["a"].status is Status.SKIPPED
