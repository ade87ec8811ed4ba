"""The live view of `setup` and `check` on a terminal: one line per role, redrawn in place.

    preflight  ━━━━━━━━━━━━━━━━━━━━  16/16  changed 0  failed 0
    conda      ━━━━━━━━╸───────────   6/16  changed 6  failed 1  environment: 10 hosts, 2m13s (gpu07)
    conda      ━━╸─────────────────   1/16  changed 1  failed 0  Miniconda installed: 15 hosts, 41s (gpu02), gpu05: 96/141 MB sent

A role's bar counts the hosts done with it (or stopped before it by a failure); its last column
names the task that the slowest hosts are on and for how long (and, while a file the task needs
is on its way to them, how much has reached the host furthest behind), so a long conda build or
installer push is seen moving. CHANGED and FAILED lines print above the view as they happen, OK and SKIPPED ones only
when verbose. Off a terminal none of this is used: plain lines stay greppable.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from provision.plan import Status, TaskResult

LOUD = (Status.CHANGED, Status.FAILED, Status.UNREACHABLE)


@dataclass
class _RoleState:
    done: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class LiveView:
    """Fed by the runner's events from many threads; draws itself on `console`."""

    def __init__(self, console: Console, roles: list[str], hosts: list[str],
                 line: Callable[[TaskResult], Text], verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.roles = list(roles)
        self.hosts = list(hosts)
        self.line = line
        self.verbose = verbose
        self.clock = clock
        self._state = {role: _RoleState() for role in self.roles}
        self._current: dict[str, tuple[str, str, float]] = {}   # host -> (role, task, since)
        self._sent: dict[str, tuple[int, int]] = {}    # host -> bytes of its task's file sent, size
        self._lock = threading.Lock()
        self._live: Live | None = None

    # -- events ------------------------------------------------------------------------------
    def started(self, host: str, role: str, task: str) -> None:
        with self._lock:
            previous = self._current.get(host)
            if previous and previous[0] != role:
                self._finish_roles_before(host, role)
            self._current[host] = (role, task, self.clock())
            self._sent.pop(host, None)
        self.refresh()

    def sent(self, host: str, done: int, total: int) -> None:
        """A file going to `host` for its current task (the installer, say): how much is there."""
        with self._lock:
            self._sent[host] = (done, total)
        self.refresh()

    def finished(self, result: TaskResult) -> None:
        with self._lock:
            state = self._state.get(result.role)
            if state is not None:
                if result.status is Status.CHANGED:
                    state.changed.add(result.host)
                elif result.status is Status.FAILED:
                    state.failed.add(result.host)
        if self.verbose or result.status in LOUD:
            self.console.print(self.line(result))
        self.refresh()

    def host_done(self, host: str) -> None:
        """The host will run nothing more: every role counts it as done."""
        with self._lock:
            self._current.pop(host, None)
            for state in self._state.values():
                state.done.add(host)
        self.refresh()

    def _finish_roles_before(self, host: str, role: str) -> None:
        for name in self.roles[:self.roles.index(role)] if role in self.roles else []:
            self._state[name].done.add(host)

    # -- drawing -----------------------------------------------------------------------------
    def render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for _ in range(6):
            table.add_column(no_wrap=True)
        total = len(self.hosts)
        now = self.clock()
        with self._lock:
            for role in self.roles:
                state = self._state[role]
                on_it = [(since, host, task) for host, (r, task, since) in self._current.items()
                         if r == role]
                table.add_row(
                    Text(role, style="bold"),
                    ProgressBar(total=max(total, 1), completed=len(state.done), width=20),
                    Text(f"{len(state.done)}/{total}"),
                    Text(f"changed {len(state.changed)}",
                         style="yellow" if state.changed else "dim"),
                    Text(f"failed {len(state.failed)}", style="red" if state.failed else "dim"),
                    Text(self._slowest(on_it, now), style="dim"))
        return table

    def _slowest(self, on_it: list[tuple[float, str, str]], now: float) -> str:
        if not on_it:
            return ""
        since, host, task = min(on_it)
        count = sum(1 for _, _, t in on_it if t == task)
        text = f"{task}: {count} host{'s' if count != 1 else ''}, {duration(now - since)} ({host})"
        # Of the files still on their way to hosts on this task (1 MB or more), the one
        # furthest behind.
        sending = [(*self._sent[name], name) for _, name, t in on_it
                   if t == task and name in self._sent]
        sending = sorted(s for s in sending if s[0] < s[1] and s[1] >= 2**20)
        if sending:
            done, total, name = sending[0]
            text += f", {name}: {done / 2**20:.0f}/{total / 2**20:.0f} MB sent"
        return text

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def __enter__(self) -> "LiveView":
        # get_renderable: every redraw (4 a second) renders anew, so the timers move on their own.
        self._live = Live(console=self.console, get_renderable=self.render,
                          refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        live, self._live = self._live, None
        live.__exit__(*exc)
