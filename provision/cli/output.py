"""How results look on a terminal: live task lines, host-prefixed output, the recap table."""

from __future__ import annotations

import threading

import click

from provision.plan import EXIT_INTERRUPTED, HostResult, Status, TaskResult

COLOURS = {Status.OK: "green", Status.CHANGED: "yellow", Status.FAILED: "red",
           Status.SKIPPED: "cyan", Status.UNREACHABLE: "magenta", Status.INTERRUPTED: "yellow"}
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


def task_text(result: TaskResult, check: bool, show_diff: bool) -> str:
    """A task's line, with its diff and the end of a failure's output."""
    lines = [f"{status_word(result.status, check)} {result.host} [{result.role}] {result.task}: "
             f"{result.message}"]
    if show_diff and result.diff:
        lines.append("".join(f"    {line}" for line in
                             result.diff.splitlines(keepends=True)).rstrip())
    if result.status is Status.FAILED and result.output:
        lines += [f"    {result.host} | {line}"
                  for line in result.output.strip().splitlines()[-10:]]
    return "\n".join(lines)


def traceback_lines(result: TaskResult) -> list[str]:
    """Where an unexpected error was raised (shown with -v)."""
    return [f"    {result.host} | {line}" for line in (result.traceback or "").rstrip().splitlines()]


def task_line(result: TaskResult, check: bool, show_diff: bool, verbose: bool = False) -> None:
    emit(task_text(result, check, show_diff))
    if verbose:
        for line in traceback_lines(result):
            emit(line, err=True)


def host_output(host: str, width: int):
    """A line callback that prefixes every line with the host name (stderr lines marked)."""
    prefix = click.style(host.ljust(width), fg="blue")

    def on_line(stream: str, line: str) -> None:
        emit(f"{prefix} | {line}", err=stream == "stderr")
    return on_line


def line_printer(width: int, colour: bool):
    """A training job's line sink: `host[rank] | line`, the rank's colour on a terminal."""
    def sink(host: str, rank: int, stream: str, line: str) -> None:
        prefix = f"{host}[{rank}]".ljust(width)
        if colour:
            prefix = click.style(prefix, fg=("cyan", "green", "yellow", "magenta", "blue")[rank % 5])
        emit(f"{prefix} | {line}", err=stream == "stderr")
    return sink


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
        elif r.interrupted:
            emit(click.style(f"INTERRUPTED {r.host}: {r.interrupted}", fg="yellow"), err=True)


def readiness(results: list[HostResult]) -> dict[str, dict[str, str]]:
    """host -> role -> "ready", "skipped", "not set up: ..." or "FAILED: ..." (from a check run);
    a host nothing was checked on is NOT CHECKED, never ready."""
    table: dict[str, dict[str, str]] = {}
    for r in results:
        row = table.setdefault(r.host, {})
        if r.unreachable:
            row["ssh"] = f"UNREACHABLE: {r.unreachable}"
            continue
        if r.interrupted:
            row["run"] = f"INTERRUPTED: {r.interrupted}"
            continue
        if not r.tasks:
            row["tasks"] = "NOT CHECKED: no task ran on this host"
            continue
        for role in dict.fromkeys(t.role for t in r.tasks):
            tasks = [t for t in r.tasks if t.role == role]
            failed = [t for t in tasks if t.status is Status.FAILED]
            pending = [t for t in tasks if t.status is Status.CHANGED]
            if failed:
                row[role] = f"FAILED: {failed[0].message}"
            elif pending:
                row[role] = f"not set up: {len(pending)} to change ({pending[0].task})"
            elif all(t.status is Status.SKIPPED for t in tasks):
                row[role] = "skipped"
            else:
                row[role] = "ready"
    return table


def readiness_exit_code(results: list[HostResult]) -> int:
    """0 when every host is ready, 130 if the run was interrupted, 4 if any host is unreachable,
    else 3 (also when there is no host, or a host nothing was checked on: ready is never the
    default)."""
    if any(r.interrupted for r in results):
        return EXIT_INTERRUPTED
    if any(r.unreachable for r in results):
        return 4
    if not results or any(not r.tasks for r in results):
        return 3
    if any(t.status in (Status.FAILED, Status.CHANGED) for r in results for t in r.tasks):
        return 3
    return 0


def readiness_table(table: dict[str, dict[str, str]]) -> None:
    roles = list(dict.fromkeys(role for row in table.values() for role in row))
    width = max([len("HOST")] + [len(h) for h in table])
    cells = {h: {role: row.get(role, "-").split(":")[0] for role in roles}
             for h, row in table.items()}
    widths = {role: max([len(role)] + [len(c[role]) for c in cells.values()]) for role in roles}
    colour = {"ready": "green", "skipped": "cyan", "FAILED": "red", "not set up": "yellow",
              "UNREACHABLE": "magenta", "INTERRUPTED": "yellow", "NOT CHECKED": "red"}
    emit("HOST".ljust(width) + "  " + "  ".join(r.ljust(widths[r]) for r in roles))
    for host, row in cells.items():
        emit(host.ljust(width) + "  " + "  ".join(
            click.style(row[r].ljust(widths[r]), fg=colour.get(row[r])) for r in roles))
    problems = [(h, role, text) for h, row in table.items() for role, text in row.items()
                if ":" in text]
    for host, role, text in problems:
        emit(f"{host} {role}: {text}", err=True)
    # From the table's own rows: "-" (a role another host has) must not make a host unready.
    ready = sum(all(text in ("ready", "skipped") for text in row.values())
                for row in table.values())
    emit(f"{ready}/{len(table)} host(s) ready")
