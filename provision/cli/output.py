"""How results look on a terminal: live task lines, host-prefixed output, the recap table."""

from __future__ import annotations

import sys
import threading

import click

from provision.plan import HostResult, Status, TaskResult

COLOURS = {Status.OK: "green", Status.CHANGED: "yellow", Status.FAILED: "red",
           Status.SKIPPED: "cyan", Status.UNREACHABLE: "magenta"}
_LOCK = threading.Lock()


def emit(text: str, err: bool = False) -> None:
    """Print one line; lines from parallel hosts never interleave mid-line."""
    with _LOCK:
        click.echo(text, err=err)


def status_word(status: Status, check: bool = False) -> str:
    word = status.value.upper()
    if check and status is Status.CHANGED:
        word = "WOULD CHANGE"
    return click.style(word, fg=COLOURS[status], bold=status is Status.FAILED)


def task_line(result: TaskResult, check: bool, show_diff: bool) -> None:
    emit(f"{status_word(result.status, check)} {result.host} [{result.role}] {result.task}: "
         f"{result.message}")
    if show_diff and result.diff:
        emit("".join(f"    {line}" for line in result.diff.splitlines(keepends=True)).rstrip())
    if result.status is Status.FAILED and result.output:
        for line in result.output.strip().splitlines()[-10:]:
            emit(f"    {result.host} | {line}")


def host_output(host: str, width: int):
    """A line callback that prefixes every line with the host name (stderr lines marked)."""
    prefix = click.style(host.ljust(width), fg="blue")

    def on_line(stream: str, line: str) -> None:
        emit(f"{prefix} | {line}", err=stream == "stderr")
    return on_line


def recap(results: list[HostResult]) -> None:
    if not results:
        return
    width = max(len(r.host) for r in results)
    emit("")
    emit("RECAP " + "-" * 60)
    for r in results:
        counts = "  ".join(
            click.style(f"{s.value}={r.count(s)}", fg=COLOURS[s] if r.count(s) else None)
            for s in Status)
        emit(f"{r.host.ljust(width)} : {counts}")
    for r in results:
        if r.unreachable:
            emit(click.style(f"UNREACHABLE {r.unreachable}", fg="magenta"), err=True)


def is_terminal() -> bool:
    return sys.stdout.isatty()
