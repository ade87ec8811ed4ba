"""What a person sees of setup (issue 13), on the session lab: on a terminal (a real pty) the
live view, with only changes and failures printed above it; off a terminal, plain task lines
that a log keeps greppable; --quiet, failures and the recap only."""

from __future__ import annotations

import re

TASK_LINE = re.compile(r"(OK|CHANGED|FAILED|SKIPPED|UNREACHABLE) \S+ \[\w+\] ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")     # what a terminal draws with


def test_off_a_terminal_every_task_is_a_plain_line(make_inventory, cli, lab):
    done = cli("setup", make_inventory(), "--role", "preflight")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not ANSI.search(done.stdout + done.stderr) and "━" not in done.stdout
    lines = [line for line in done.stdout.splitlines() if TASK_LINE.match(line)]
    assert {line.split()[1] for line in lines if line.startswith("OK ")} == \
        {h.name for h in lab.hosts}
    assert "RECAP" in done.stdout


def test_quiet_prints_the_recap_only_when_nothing_failed(make_inventory, cli):
    done = cli("setup", make_inventory(), "--role", "preflight", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if TASK_LINE.match(line)]
    assert "RECAP" in done.stdout


def test_on_a_terminal_setup_shows_the_live_view_and_no_ok_lines(make_inventory, lab, terminal):
    code, screen = terminal("setup", make_inventory(), "--role", "preflight")
    assert code == 0, screen
    text = ANSI.sub("", screen)
    count = len(lab.hosts)
    assert re.search(rf"preflight +━+ +{count}/{count} +changed 0 +failed 0", text), text
    assert not re.search(r"^OK \S+ \[preflight\]", text, re.M), text
    assert "RECAP" in text and "\x1b[" in screen          # the recap in colour
