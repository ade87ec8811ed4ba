"""The per-run relay: files every host needs cross the controller's link about once.

One Relay is shared by the host threads of a run. A command that `needs` a SharedFile gets it
at the file's path first, from whichever source the Schedule gives: the controller (its bytes on
the SSH channel's stdin, checked by sh) or a host that holds a checked copy (agent.py `serve` on
the holder, `fetch` on the receiver, over the training ports setup opened to the cluster only).
Every copy is kept by the command that received it, whose stdin stays open: the copy goes when
the relay ends it, or when the SSH connection goes. A failed source sends the host to the next
one; PEER_TRIES failed holders send it to the controller.

Small files (their copies to every host cost less than DIRECT_BUDGET) and hosts no peer may
serve get the file from the controller with the command itself, in one exec as before.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from provision.connection import CommandResult
from provision.errors import HostUnreachable
from provision.relay.files import SharedFile
from provision.relay.live import Live
from provision.relay.peers import Peers
from provision.relay.schedule import CONTROLLER, PEER, Choice, Schedule
from provision.relay.scripts import agent_argv, direct_script, keep_script

if TYPE_CHECKING:
    from provision.operations.base import Command
    from provision.session import HostSession

PEER_TRIES = 2            # failed holders before the controller sends the host its copy
CONTROLLER_TRIES = 2
DIRECT_BUDGET = 4 << 20   # bytes: below this for every host together, relaying is not worth it
SERVE_START_TIMEOUT = 30.0
SERVE_END_TIMEOUT = 10.0
KEEPER_END_TIMEOUT = 10.0
RECHECK_S = 2.0           # a waiting host looks again this often, whatever it was told
# A host that may serve nobody waits this long for one that may to take the controller's copy
# first (hosts reach the task at about the same time), then takes a copy of its own.
SEED_WAIT_S = 5.0


@dataclass
class _Copy:
    session: "HostSession"
    path: str
    keeper: Live


@dataclass
class _File:
    file: SharedFile
    schedule: Schedule
    data: bytes | None = None
    copies: dict[str, _Copy] = field(default_factory=dict)
    from_controller: list[str] = field(default_factory=list)
    from_peers: dict[str, str] = field(default_factory=dict)      # receiver -> holder
    controller_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    load_problem: str | None = None


class Relay:
    def __init__(self, peers: Callable[[], Peers] = Peers, hosts: int = 1):
        """`peers`: who may serve whom (called once, when a file is first shared); `hosts`: how
        many hosts the run has (what decides that a file is small)."""
        self._peers_source = peers
        self._peers: Peers | None = None
        self._hosts = hosts
        self._cond = threading.Condition()
        self._files: dict[tuple[str, str], _File] = {}

    # -- what the runner calls --------------------------------------------------------------
    def run(self, session: "HostSession", command: "Command") -> CommandResult:
        """Run `command` on the session's host, its `needs` file brought to the host first."""
        file = command.needs
        if file is None:
            return session.run(command.run, stdin=command.stdin)
        state = self._state(file)
        name = session.connection.host.name
        if not self._load(state):
            return _failure(file, state.load_problem or "")
        if command.stdin is None and (len(state.data) * self._hosts <= DIRECT_BUDGET
                                      or not self.peers.served(name)):
            return self._direct(state, session, command)
        problem = self._fetch(state, session)
        if problem is not None:
            return _failure(file, problem)
        try:
            return session.run(command.run, stdin=command.stdin)
        finally:
            if name not in self.peers.ports:
                self._release(state, name)      # nobody can use its copy

    def close(self) -> None:
        """End every keeper: the copies go; nothing of the relay is left on any host."""
        with self._cond:
            copies = [(state, name) for state in self._files.values() for name in state.copies]
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(copies)))) as pool:
            list(pool.map(lambda pair: self._release(*pair), copies))

    def report(self) -> list[dict]:
        """Per file: bytes the controller sent, and how each host got its copy."""
        with self._cond:
            return [{"file": s.file.name, "sha256": s.file.sha256,
                     "bytes": len(s.data) if s.data is not None else None,
                     "controller_bytes": s.controller_bytes,
                     "from_controller": list(s.from_controller),
                     "from_peers": dict(s.from_peers),
                     "problems": list(s.problems)} for s in self._files.values()]

    @property
    def peers(self) -> Peers:
        with self._cond:
            if self._peers is None:
                self._peers = self._peers_source()
            return self._peers

    # -- getting the file to a host ---------------------------------------------------------
    def _state(self, file: SharedFile) -> _File:
        with self._cond:
            key = (file.sha256, file.path)
            if key not in self._files:
                self._files[key] = _File(file, Schedule(self.peers.may_serve))
            return self._files[key]

    def _load(self, state: _File) -> bool:
        with state.load_lock:
            if state.data is None and state.load_problem is None:
                try:
                    data = state.file.load()
                except Exception as exc:  # noqa: BLE001 -- the loader is the operation's
                    state.load_problem = str(exc) or type(exc).__name__
                else:
                    state.data, state.load_problem = data, None
        return state.data is not None

    def _direct(self, state: _File, session: "HostSession", command: "Command"
                ) -> CommandResult:
        file = state.file
        script = direct_script(file.path, file.sha256, len(state.data), command.run)
        with self._cond:
            state.controller_bytes += len(state.data)
        result = session.run(script, stdin=state.data, on_sent=session.on_sent())
        if result.ok:
            with self._cond:
                state.from_controller.append(session.connection.host.name)
        return result

    def _fetch(self, state: _File, session: "HostSession") -> str | None:
        """Bring the file to the host (None), or say why every source failed."""
        name = session.connection.host.name
        tried: set[str] = set()
        problems: list[str] = []
        peer_failures = controller_failures = 0
        while True:
            choice, holder = self._choose(state, name, frozenset(tried),
                                          peer_failures >= PEER_TRIES)
            copy, problem, blame = None, None, None
            try:
                if holder is None:
                    copy, problem = self._from_controller(state, session)
                else:
                    copy, problem, blame = self._from_peer(state, holder, session)
            finally:
                self._finished(state, name, choice, copy, blame == "holder")
            if copy is not None:
                return None
            source = "the controller" if choice.kind == CONTROLLER else choice.holder
            problems.append(f"from {source}: {problem}")
            with self._cond:
                state.problems.append(f"{name} from {source}: {problem}")
            if choice.kind == CONTROLLER:
                controller_failures += 1
                if controller_failures >= CONTROLLER_TRIES:
                    return "; ".join(problems)
            else:
                tried.add(choice.holder)
                # Its own side failed (no python3, an address it cannot use): peers cannot help.
                peer_failures = PEER_TRIES if blame == "local" else peer_failures + 1

    def _choose(self, state: _File, name: str, tried: frozenset[str],
                controller_only: bool) -> tuple[Choice, _Copy | None]:
        """The source (the holder's copy, or None for the controller), once there is one."""
        seed_until = time.monotonic() + SEED_WAIT_S
        serves = name in self.peers.ports
        with self._cond:
            while True:
                left = seed_until - time.monotonic()
                defer = not serves and not controller_only and left > 0
                choice = state.schedule.choose(name, tried, controller_only, defer)
                if choice.kind == PEER:
                    return choice, state.copies[choice.holder]
                if choice.kind == CONTROLLER:
                    return choice, None
                self._cond.wait(min(RECHECK_S, left) if defer else RECHECK_S)

    def _finished(self, state: _File, name: str, choice: Choice, copy: _Copy | None,
                  holder_failed: bool) -> None:
        with self._cond:
            state.schedule.finish(name, choice, copy is not None, holder_failed)
            if copy is not None:
                state.copies[name] = copy
                if choice.kind == PEER:
                    state.from_peers[name] = choice.holder
                else:
                    state.from_controller.append(name)
            dropped = state.copies.pop(choice.holder, None) if holder_failed else None
            self._cond.notify_all()
        if dropped is not None:
            dropped.keeper.close()

    def _from_controller(self, state: _File, session: "HostSession"
                         ) -> tuple[_Copy | None, str | None]:
        file, data = state.file, state.data
        with self._cond:
            state.controller_bytes += len(data)
        host = session.connection.host
        session.round_trips += 1
        keeper = Live(session.connection.start(keep_script(file.path, file.sha256, len(data)),
                                               sudo=host.become, stdin=data, hold_stdin=True,
                                               on_sent=session.on_sent()))
        answer = keeper.message(session.connection.options.command_timeout)
        if answer is None or "ok" not in answer:
            problem = keeper.problem(answer)
            keeper.close()
            return None, problem
        return _Copy(session, file.path, keeper), None

    def _from_peer(self, state: _File, holder: _Copy, session: "HostSession"
                   ) -> tuple[_Copy | None, str | None, str]:
        """(copy, None, "") or (None, problem, who failed: "holder", "pair" or "local")."""
        file = state.file
        source, target = holder.session.connection.host, session.connection.host
        token = secrets.token_hex(16).encode() + b"\n"
        ports = ",".join(map(str, self.peers.ports[source.name]))
        try:
            holder.session.round_trips += 1
            serve = Live(holder.session.connection.start(
                agent_argv("serve", holder.path, source.address, target.address, ports),
                sudo=source.become, stdin=token, hold_stdin=True))
        except HostUnreachable as exc:
            return None, str(exc), "holder"
        try:
            ready = serve.message(SERVE_START_TIMEOUT)
            if ready is None or "port" not in ready:
                return None, f"{source.name} could not serve it: {serve.problem(ready)}", "holder"
            session.round_trips += 1
            client = Live(session.connection.start(
                agent_argv("fetch", source.address, str(ready["port"]), target.address,
                           file.sha256, file.path),
                sudo=target.become, stdin=token, hold_stdin=True))
            answer = client.message(session.connection.options.command_timeout)
            if answer is not None and "ok" in answer:
                return _Copy(session, file.path, client), None, ""
            client.close()
            where = (answer or {}).get("where")
            blame = {"connect": "pair", "local": "local"}.get(where, "holder")
            if answer is None:
                blame = "local"      # the fetcher did not even run (no python3?)
            return None, client.problem(answer), blame
        finally:
            serve.finish(SERVE_END_TIMEOUT)

    def _release(self, state: _File, name: str) -> None:
        with self._cond:
            copy = state.copies.pop(name, None)
            state.schedule.drop(name)
        if copy is not None:
            copy.keeper.finish(KEEPER_END_TIMEOUT)


def _failure(file: SharedFile, problem: str) -> CommandResult:
    return CommandResult(f"bring {file.name} to the host", 1, "",
                         f"cannot bring {file.name} to the host: {problem}")
