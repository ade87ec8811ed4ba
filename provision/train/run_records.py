"""A detached run as the nodes recorded it: every node's record.json merged into one view.

Each node's supervisor writes its own record (provision/train/supervisor.py). The master's, and
every follower's that received the master's final record, hold every node's outcome; a record
from a node that lost the master holds that node's view only. A record still saying "running"
whose supervisor is gone means the supervisor was killed or the node restarted.
"""

from __future__ import annotations

import collections
import json
from collections import Counter
from dataclasses import dataclass

from provision.train.launch import TAIL_LINES, JobResult, NodeOutcome

GONE = "its supervisor is gone (killed, or the node restarted) before recording the end"


@dataclass(frozen=True)
class NodeRecord:
    record: dict
    alive: bool          # the supervisor that writes it still runs


@dataclass
class RunView:
    run_id: str
    state: str                    # running, succeeded, failed, stopped
    started: float
    ended: float | None
    nodes: list[NodeOutcome]      # node rank order
    root_cause: NodeOutcome | None
    interrupted: bool
    stop_reason: str | None
    command: list[str]
    inventory_sha256: str
    master: str
    coordination: str
    hosts: list[str]              # the hosts whose records were read

    def result(self) -> JobResult:
        """As a foreground run's result: its exit code and the root-cause report."""
        return JobResult(self.run_id, self.nodes, self.interrupted, self.root_cause,
                         self.started, self.ended or self.started, None)


def parse_listing(stdout: str) -> list[NodeRecord]:
    """The listing script's lines, "<alive 0|1> <record json>"; a line that is not one (a
    record from a newer version, say) is skipped rather than failing the whole listing."""
    found = []
    for line in stdout.splitlines():
        alive, _, text = line.partition(" ")
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if alive in ("0", "1") and isinstance(record, dict) and "run_id" in record \
                and isinstance(record.get("nodes"), list):
            found.append(NodeRecord(record, alive == "1"))
    return found


def _outcome(node: dict) -> NodeOutcome:
    return NodeOutcome(host=node.get("host", "?"), rank=node.get("rank", -1),
                       exit_code=node.get("exit_code"), lost=node.get("lost"),
                       error=node.get("error"), finished_at=node.get("finished_at"),
                       stopped_by_teardown=bool(node.get("stopped_by_teardown")),
                       survivors=node.get("survivors"),
                       tail=collections.deque(node.get("tail") or [], maxlen=TAIL_LINES))


def _failed(node: dict) -> bool:
    return bool(node.get("lost") or node.get("error")) or (
        node.get("exit_code") not in (None, 0) and not node.get("stopped_by_teardown"))


def merge(records: list[NodeRecord]) -> RunView:
    """One run's records (one per host that answered) as one view."""
    running = [r for r in records if r.record.get("state") == "running"]
    final = [r for r in records if r.record.get("state") != "running"]
    # The master's final record (or a follower's copy of it) sees every node; prefer it.
    full = [r for r in final if r.record.get("view") == "master"]
    best = (full or final or records)[0].record
    nodes = {n["rank"]: dict(n) for n in best["nodes"] if isinstance(n, dict) and "rank" in n}
    for entry in records:
        own = next((n for n in entry.record["nodes"] if n.get("rank") == entry.record.get("rank")),
                   None)
        if own is None or own.get("rank") not in nodes:
            continue
        if own.get("finished_at") is not None or not full:
            # A node is the authority on its own job; what the master saw of it (lost, say)
            # stays where the node itself has nothing to say.
            nodes[own["rank"]].update({k: v for k, v in own.items() if v is not None})
        if entry.record.get("state") == "running" and not entry.alive \
                and nodes[own["rank"]].get("finished_at") is None:
            nodes[own["rank"]]["lost"] = GONE
    cause = _root_cause(best, full, final, nodes)
    if any(r.alive for r in running):
        state = "running"
    elif cause is not None or any(_failed(n) for n in nodes.values()):
        state = "failed"
    elif any(r.record.get("interrupted") for r in records):
        state = "stopped"
    else:
        state = "succeeded"
    outcomes = {rank: _outcome(node) for rank, node in sorted(nodes.items())}
    ended = [r.record.get("ended") for r in records]
    return RunView(
        run_id=best["run_id"], state=state,
        started=min(r.record.get("started") or 0 for r in records),
        ended=None if state == "running" or None in ended else max(ended),
        nodes=list(outcomes.values()),
        root_cause=outcomes.get(cause) if cause is not None else None,
        interrupted=any(r.record.get("interrupted") for r in records),
        stop_reason=best.get("stop_reason"), command=best.get("command") or [],
        inventory_sha256=best.get("inventory_sha256", ""), master=best.get("master", ""),
        coordination=best.get("coordination", ""),
        hosts=sorted(r.record.get("host", "?") for r in records))


def _root_cause(best: dict, full: list[NodeRecord], final: list[NodeRecord],
                nodes: dict[int, dict]) -> int | None:
    """The master's verdict when there is one; else the node most records blame (nodes that
    lost the master blame it); else a node whose supervisor vanished."""
    if full:
        cause = best.get("root_cause")
        return cause.get("rank") if isinstance(cause, dict) else None
    blamed = Counter(r.record["root_cause"].get("rank") for r in final
                     if isinstance(r.record.get("root_cause"), dict))
    if blamed:
        return blamed.most_common(1)[0][0]
    gone = [rank for rank, node in nodes.items() if node.get("lost") == GONE]
    return gone[0] if gone else None


def group_runs(records: list[NodeRecord]) -> list[RunView]:
    """Every run's view, newest first."""
    by_run: dict[str, list[NodeRecord]] = {}
    for entry in records:
        by_run.setdefault(str(entry.record["run_id"]), []).append(entry)
    return sorted((merge(entries) for entries in by_run.values()),
                  key=lambda view: view.started, reverse=True)
