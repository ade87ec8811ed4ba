"""Launch a TrainConfig on every node, stream and log every line, and tear the job down.

One thread per node reads its torchrun's output. The first node to fail (non-zero exit, or its
connection lost) is the root cause; every other node's job is then stopped, as it is on Ctrl-C.
Teardown finds the job's processes by their PROVISION_RUN_ID, TERMs them, KILLs what is left
after a grace period and reports how many survived (0 expected) on each node.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from provision.errors import HostUnreachable
from provision.session import HostSession
from provision.train.argv import NodeCommand, remote_script
from provision.train.config import TrainConfig
from provision.train.processes import stop_script, supervised_script

# (host, rank, stream, line)
LineSink = Callable[[str, int, str, str], None]
TAIL_LINES = 20
EXIT_INTERRUPTED = 130
# torchrun's failure summary names the first failed worker: "rank : 1 (local_rank: 0)" and
# "exitcode : 3 (pid: 1495)"; torchrun itself then exits 1.
_WORKER_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_WORKER_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


@dataclass
class NodeOutcome:
    host: str
    rank: int
    exit_code: int | None = None          # None: still running, or stopped by teardown
    lost: str | None = None               # the connection died
    error: str | None = None              # the controller failed following the node
    finished_at: float | None = None
    stopped_by_teardown: bool = False
    survivors: int | None = None          # job processes left after teardown (None: unknown)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))

    def worker_failure(self) -> tuple[int, int] | None:
        """(global rank, exit code) of the failed worker that torchrun reported, if it did."""
        rank = code = None
        lines = list(self.tail)
        # The summary lists the other failures (often ranks torchrun itself SIGTERMed) before
        # the "Root Cause (first observed failure):" entry: read that entry when it is there.
        starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("Root Cause")]
        for line in lines[starts[-1] + 1:] if starts else lines:
            if (match := _WORKER_RANK.match(line)) and rank is None:
                rank = int(match[1])
            if (match := _WORKER_EXIT.match(line)) and code is None:
                code = int(match[1])
        return (rank, code) if rank is not None and code is not None else None

    @property
    def failed(self) -> bool:
        return self.lost is not None or self.error is not None or (
            self.exit_code not in (None, 0) and not self.stopped_by_teardown)


@dataclass
class JobResult:
    run_id: str
    nodes: list[NodeOutcome]
    interrupted: bool
    root_cause: NodeOutcome | None
    started: float
    ended: float
    teardown_seconds: float | None

    @property
    def exit_code(self) -> int:
        """0 when every node succeeded; after a failure the failed worker's exit code (torchrun's
        own code when it names none; 255 for a lost node); 130 after an interrupt."""
        if self.root_cause is not None:
            worker = self.root_cause.worker_failure()
            if worker is not None and worker[1] > 0:
                return worker[1]
            return self.root_cause.exit_code if self.root_cause.exit_code not in (None, 0) \
                else 255
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 0


class Job:
    def __init__(self, config: TrainConfig, sessions: dict[str, HostSession],
                 commands: dict[str, NodeCommand], log_dir: Path, sink: LineSink,
                 grace: float = 3.0):
        self.config = config
        self.sessions = sessions
        self.commands = commands
        self.log_dir = log_dir
        self.sink = sink
        self.grace = grace
        self.outcomes = {n.name: NodeOutcome(n.name, config.node_rank(n)) for n in config.nodes}
        self.changed = threading.Event()
        self.interrupted = threading.Event()
        self._lock = threading.Lock()
        self._starts_done = threading.Condition(self._lock)
        self._starting = 0        # nodes whose start is in flight; teardown waits for them
        self.stopping = False     # set once by teardown; no node starts after it

    def interrupt(self) -> None:
        """Safe from a signal handler: the main loop notices and tears the job down."""
        self.interrupted.set()
        self.changed.set()

    def run(self) -> JobResult:
        started = time.time()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        threads = []
        for node in self.config.nodes:
            thread = threading.Thread(target=self._follow, args=(node.name,), daemon=True,
                                      name=f"train-{node.name}")
            thread.start()
            threads.append(thread)
        root_cause = None
        teardown_seconds = None
        while True:
            self.changed.wait(0.5)
            self.changed.clear()
            with self._lock:
                failed = sorted((o for o in self.outcomes.values() if o.failed),
                                key=lambda o: o.finished_at or 0)
                done = all(o.exit_code is not None or o.lost or o.error
                           for o in self.outcomes.values())
            if failed or self.interrupted.is_set():
                root_cause = failed[0] if failed else None
                began = time.monotonic()
                self._teardown()
                teardown_seconds = time.monotonic() - began
                break
            if done:
                break
        for thread in threads:
            thread.join(timeout=self.grace + 10)
        return JobResult(self.config.run_id, list(self.outcomes.values()),
                         self.interrupted.is_set(), root_cause, started, time.time(),
                         teardown_seconds)

    def _follow(self, name: str) -> None:
        outcome = self.outcomes[name]
        session = self.sessions[name]
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "a", buffering=1) as log:
            def on_line(stream: str, line: str) -> None:
                log.write(("" if stream == "stdout" else "[stderr] ") + line + "\n")
                if stream == "stderr":
                    outcome.tail.append(line)
                # Once the job is being stopped, what the nodes print is torchrun's reaction
                # to the stop (a SignalException traceback per node): the logs keep it, the
                # terminal shows the per-node summary instead.
                if not (self.stopping or self.interrupted.is_set()):
                    self.sink(name, outcome.rank, stream, line)

            try:
                script = supervised_script(remote_script(self.commands[name]),
                                           self.config.run_id, self.grace)
                # A node either starts before teardown looks for the job's processes (teardown
                # waits for starts in flight), or never starts at all. Starts run in parallel:
                # holding the lock across one would serialise every node's SSH connect.
                with self._lock:
                    if self.stopping:
                        outcome.stopped_by_teardown = True
                        return
                    self._starting += 1
                try:
                    process = session.connection.start(script, hold_stdin=True)
                finally:
                    with self._lock:
                        self._starting -= 1
                        self._starts_done.notify_all()
                session.round_trips += 1
                result = process.wait(float("inf"), on_line)
                code, lost, error = result.exit_code, None, None
            except HostUnreachable as exc:
                code, lost, error = None, str(exc), None
                log.write(f"[provision] {exc}\n")
            except Exception as exc:  # noqa: BLE001 - a dead follower must not hang the job
                code, lost, error = None, None, f"{type(exc).__name__}: {exc}"
                log.write(f"[provision] controller error: {error}\n")
        with self._lock:
            outcome.exit_code, outcome.lost, outcome.error = code, lost, error
            outcome.finished_at = time.time()
        self.changed.set()

    def _teardown(self) -> None:
        """Stop the job on every node still running it, in parallel, and count survivors."""
        with self._lock:
            self.stopping = True
            self._starts_done.wait_for(lambda: self._starting == 0)

        def stop(name: str) -> None:
            outcome = self.outcomes[name]
            if outcome.lost:
                return
            with self._lock:
                if outcome.exit_code is None:
                    outcome.stopped_by_teardown = True
            try:
                result = self.sessions[name].connection.run(
                    stop_script(self.config.run_id, self.grace), timeout=self.grace + 30)
                outcome.survivors = int(result.stdout.split()[-1]) if result.ok else None
            except (HostUnreachable, ValueError, IndexError):
                outcome.survivors = None

        with ThreadPoolExecutor(max_workers=len(self.outcomes)) as pool:
            list(pool.map(stop, self.outcomes))


def write_summary(result: JobResult, path: Path, command: list[str], inventory_sha256: str,
                  config: TrainConfig) -> None:
    def node(o: NodeOutcome) -> dict:
        return {"host": o.host, "rank": o.rank, "exit_code": o.exit_code, "lost": o.lost,
                "error": o.error,
                "stopped_by_teardown": o.stopped_by_teardown, "survivors": o.survivors,
                "finished_at": o.finished_at}
    summary = {
        "run_id": result.run_id, "command": command, "inventory_sha256": inventory_sha256,
        "script": config.script, "master": f"{config.master.address}:{config.master_port}",
        "started": result.started, "ended": result.ended, "exit_code": result.exit_code,
        "interrupted": result.interrupted, "teardown_seconds": result.teardown_seconds,
        "root_cause": node(result.root_cause) if result.root_cause else None,
        "nodes": [node(o) for o in result.nodes]}
    path.write_text(json.dumps(summary, indent=2) + "\n")
