"""The live view of setup/check, driven with a sequence of events and a fixed clock, rendered
by rich into a recording console of a fixed width; and which lines a run prints where."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from provision.cli.live import LiveView, duration
from provision.cli.task_output import TaskOutput
from provision.plan import Status, TaskResult

ROLES = ["preflight", "ntp", "conda"]
HOSTS = ["gpu1", "gpu2", "gpu3"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def line(result: TaskResult) -> Text:
    return Text(f"{result.status.value.upper()} {result.host} [{result.role}] {result.task}")


def view(verbose: bool = False, width: int = 110):
    console = Console(record=True, width=width, force_terminal=False, color_system=None)
    clock = Clock()
    return LiveView(console, ROLES, HOSTS, line, verbose, clock), console, clock


def frame(live: LiveView, console: Console) -> list[str]:
    console.print(live.render())
    return [row.rstrip() for row in console.export_text().splitlines()]


def result(host, role, task, status):
    return TaskResult(host, role, task, status, "message")


def test_each_role_counts_hosts_done_changed_and_failed():
    live, console, clock = view()
    for host in HOSTS:
        live.started(host, "preflight", "ssh")
        live.finished(result(host, "preflight", "ssh", Status.OK))
    live.started("gpu1", "ntp", "synchronised")
    live.finished(result("gpu1", "ntp", "synchronised", Status.CHANGED))
    live.started("gpu2", "ntp", "synchronised")
    live.finished(result("gpu2", "ntp", "synchronised", Status.FAILED))
    live.host_done("gpu2")                       # failed: nothing more runs there
    live.started("gpu1", "conda", "environment")
    rows = frame(live, console)
    printed, table = rows[:2], rows[2:]
    assert printed == ["CHANGED gpu1 [ntp] synchronised", "FAILED gpu2 [ntp] synchronised"]
    preflight, ntp, conda = table
    # gpu1 moved on, gpu2 stopped; gpu3 is still on its first task
    assert preflight.startswith("preflight") and "2/3" in preflight and "ssh: 1 host" in preflight
    assert "2/3" in ntp and "changed 1" in ntp and "failed 1" in ntp
    assert "1/3" in conda and "environment: 1 host, 0s (gpu1)" in conda


def test_ok_and_skipped_lines_print_only_when_verbose():
    for verbose, expected in ((False, []), (True, ["OK gpu1 [ntp] a", "SKIPPED gpu1 [ntp] b"])):
        live, console, _ = view(verbose)
        live.finished(result("gpu1", "ntp", "a", Status.OK))
        live.finished(result("gpu1", "ntp", "b", Status.SKIPPED))
        assert console.export_text().splitlines() == expected


def test_the_slowest_hosts_task_and_its_time_are_shown():
    live, console, clock = view()
    live.started("gpu1", "conda", "environment")
    clock.now += 40
    live.started("gpu2", "conda", "environment")
    live.started("gpu3", "conda", "condarc")
    clock.now += 93
    conda = frame(live, console)[-1]
    assert "environment: 2 hosts, 2m13s (gpu1)" in conda


def test_every_host_done_fills_every_bar():
    live, console, _ = view()
    for host in HOSTS:
        live.host_done(host)
    assert all(f"3/3" in row for row in frame(live, console))


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0, 59.9, 60, 133, 3600, 7322)] == \
        ["0s", "59s", "1m00s", "2m13s", "1h00m", "2h02m"]


# -- TaskOutput: which lines a run prints, by where they are read ------------------------------


def results_through(output: TaskOutput) -> None:
    with output.watching(ROLES, HOSTS) as progress:
        if progress is not None:
            progress.started("gpu1", "ntp", "a")
        for status in (Status.OK, Status.SKIPPED, Status.CHANGED, Status.FAILED):
            output(result("gpu1", "ntp", status.value, status))
        if progress is not None:
            progress.host_done("gpu1")


def printed(capsys) -> list[str]:
    return [line.split(" [")[0] for line in capsys.readouterr().out.splitlines()
            if " gpu1 [ntp]" in line]


def test_off_a_terminal_setup_prints_plain_lines_and_check_only_when_verbose(capsys):
    results_through(TaskOutput(False, False, False, False, False, every_task=True,
                               terminal=False))
    assert printed(capsys) == ["OK gpu1", "CHANGED gpu1", "FAILED gpu1"]
    results_through(TaskOutput(False, False, True, False, False, every_task=True,
                               terminal=False))
    assert printed(capsys) == ["OK gpu1", "SKIPPED gpu1", "CHANGED gpu1", "FAILED gpu1"]
    results_through(TaskOutput(True, False, False, False, False, every_task=False,
                               terminal=False))
    assert printed(capsys) == []


def test_quiet_prints_only_failures_and_json_nothing(capsys):
    for terminal in (False, True):
        results_through(TaskOutput(False, False, False, True, False, every_task=True,
                                   terminal=terminal))
        assert printed(capsys) == ["FAILED gpu1"]
        results_through(TaskOutput(False, False, False, False, True, every_task=True,
                                   terminal=terminal))
        assert printed(capsys) == []


def test_on_a_terminal_the_live_view_shows_changes_and_failures_above_it(capsys):
    output = TaskOutput(False, False, False, False, False, every_task=True, terminal=True)
    with output.watching(ROLES, HOSTS) as progress:
        assert isinstance(progress, LiveView)
        output(result("gpu1", "ntp", "a", Status.OK))
        output(result("gpu1", "ntp", "b", Status.CHANGED))
        output(result("gpu1", "ntp", "c", Status.FAILED))
    out = capsys.readouterr().out
    assert "CHANGED gpu1 [ntp] b" in out and "FAILED gpu1 [ntp] c" in out
    assert "OK gpu1" not in out
    assert "ntp" in out and "changed 1" in out and "failed 1" in out     # the view's last frame


def test_a_file_on_its_way_shows_how_much_reached_the_host_furthest_behind():
    live, console, clock = view(width=150)
    live.started("gpu1", "conda", "Miniconda installed")
    clock.now += 1
    for host in ("gpu2", "gpu3"):
        live.started(host, "conda", "Miniconda installed")
    live.sent("gpu2", 96 << 20, 141 << 20)
    live.sent("gpu3", 12 << 20, 141 << 20)
    live.sent("gpu1", 141 << 20, 141 << 20)                     # gpu1 has it all
    clock.now += 40
    assert frame(live, console)[-1].endswith(
        "Miniconda installed: 3 hosts, 41s (gpu1), gpu3: 12/141 MB sent")
    live.sent("gpu3", 141 << 20, 141 << 20)
    live.sent("gpu2", 141 << 20, 141 << 20)
    assert frame(live, console)[-1].endswith("Miniconda installed: 3 hosts, 41s (gpu1)")
    for host in HOSTS:
        live.started(host, "conda", "training environment")
    live.sent("gpu1", 300, 900)                                 # a small file: not worth a word
    assert frame(live, console)[-1].endswith("training environment: 3 hosts, 0s (gpu1)")
