"""Where setup's and check's task results go, by where they are read.

On a terminal: the live view (provision/cli/live.py), CHANGED and FAILED lines above it, OK and
SKIPPED ones only with -v. Off a terminal (CI, a pipe, a log file): plain lines, as greppable as
ever. --quiet: FAILED lines only. --json: nothing until the report.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import click

from provision.cli.output import task_line, task_text, traceback_lines
from provision.plan import Status, TaskResult
from provision.session import Progress


class TaskOutput:
    def __init__(self, check: bool, diff: bool, verbose: bool, quiet: bool, as_json: bool,
                 every_task: bool, terminal: bool | None = None):
        """`every_task`: off a terminal, print every task's line (setup), or only with -v
        (check, whose table says it all)."""
        self.check, self.diff, self.verbose = check, diff, verbose
        self.quiet, self.as_json, self.every_task = quiet, as_json, every_task
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self._view = None

    def __call__(self, result: TaskResult) -> None:
        """The runner's listener: hears every result, from every host's thread."""
        if self._view is not None:
            self._view.finished(result)
        elif self._plain_line(result):
            task_line(result, self.check, self.diff, self.verbose)

    def _plain_line(self, result: TaskResult) -> bool:
        if self.as_json:
            return False
        if self.quiet:
            return result.status is Status.FAILED
        if self.verbose:
            return True
        return self.every_task and result.status is not Status.SKIPPED

    @contextmanager
    def watching(self, roles: list[str], hosts: list[str]) -> Iterator[Progress | None]:
        """The live view for the run's length, where there is a person to see it."""
        if not self.terminal or self.as_json or self.quiet:
            yield None
            return
        from rich.console import Console   # only here: a plain run does not pay for rich
        from rich.text import Text

        from provision.cli.live import LiveView

        def line(result: TaskResult) -> Text:
            extra = traceback_lines(result) if self.verbose else []
            return Text.from_ansi("\n".join([task_text(result, self.check, self.diff), *extra]))

        with LiveView(Console(), roles, hosts, line, self.verbose) as view:
            self._view = view
            try:
                yield view
            finally:
                self._view = None


def quiet_option(command):
    return click.option("--quiet", "-q", is_flag=True,
                        help="Only failures and the recap (for scripts).")(command)
