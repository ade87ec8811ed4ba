"""The supervisor of one node of a detached training run (standard library only, Python 3.8+).

provision puts this file and the node's spec.json in a directory DIR on every node and runs
`python -I -S DIR/supervisor.py start DIR` with the training environment's Python. `start`
launches the supervisor proper (`run`) in a session of its own, detached from SSH, and returns
once it has started: the master node's supervisor has bound its coordination port and started
torchrun; a follower's has joined the master's and started torchrun. The supervisor then:

- runs the node's torchrun, its output in DIR/output.log plus one older DIR/output.log.1,
  together at most the spec's log_max_bytes;
- exchanges heartbeats with the master node's supervisor over one TCP connection to the master's
  training address and coordination port, the only socket any supervisor listens on;
- stops its node's job when the master says so, when the master falls silent for `deadline`
  seconds, or on SIGTERM (`provision stop`); the master says so to every node when a node's job
  fails, a node falls silent or closes its connection, or any node is asked to stop;
- after its torchrun ends, however it ends, sweeps the node for the job's processes (by their
  PROVISION_RUN_ID marker, with the spec's stop script: TERM, KILL after the grace period);
- writes DIR/record.json atomically when it starts and when the run ends.

A watcher (sh, reading a pipe that only this process holds open for writing) runs the same
sweep the moment this process ends, however it ends: kill -9 leaves no worker behind.

Longer than ~300 lines because it is one file on purpose: it is sent to each node and run
there by the environment's Python, standard library only.
"""

from __future__ import annotations

import collections
import hmac
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

TAIL_LINES = 20
MAX_LINE = 65536          # a longer line without a newline is cut there
SEND_TIMEOUT = 2.0        # a peer that cannot take a heartbeat this long is as good as silent
HELLO_TIMEOUT = 5.0       # an accepted connection must say who it is this soon
CLOSE_LINGER = 2.0        # the master waits this long for followers to take the final record
# The supervisor's own lines in the node's log start with NOTE; `attach` looks for STOPPING.
NOTE = "[provision] "
STOPPING = "stopping this node's job: "


def write_atomically(path: str, data: dict) -> None:
    temporary = "%s.%d.tmp" % (path, os.getpid())
    with open(temporary, "w") as handle:
        handle.write(json.dumps(data) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class BoundedLog:
    """output.log and at most one older output.log.1, each at most half the bound."""

    def __init__(self, path: str, max_bytes: int):
        self.path, self.half = path, max(1024, max_bytes // 2)
        self.file = open(path, "ab")
        self.size = self.file.tell()

    def write(self, line: bytes) -> None:
        line = line[:self.half - 1] + b"\n" if len(line) >= self.half else line
        if self.size + len(line) > self.half:
            self.file.close()
            os.replace(self.path, self.path + ".1")
            self.file = open(self.path, "ab")
            self.size = 0
        self.file.write(line)
        self.file.flush()
        self.size += len(line)


class Lines:
    """Splits a byte stream into lines; feed(b"") at EOF returns the unterminated rest."""

    def __init__(self):
        self.pending = b""

    def feed(self, data: bytes) -> list:
        if not data:
            rest, self.pending = self.pending, b""
            return [rest] if rest else []
        *lines, self.pending = (self.pending + data).split(b"\n")
        if len(self.pending) > MAX_LINE:
            lines.append(self.pending)
            self.pending = b""
        return lines


class Peer:
    """One coordination connection: JSON messages, one per line."""

    def __init__(self, sock: socket.socket):
        sock.settimeout(SEND_TIMEOUT)
        self.sock, self.lines, self.seen, self.opened = sock, Lines(), time.monotonic(), \
            time.monotonic()
        self.rank = None          # a follower's node rank, once it said hello

    def send(self, message: dict) -> bool:
        try:
            self.sock.sendall((json.dumps(message) + "\n").encode())
            return True
        except OSError:
            return False

    def receive(self):
        """The messages that arrived, or None once the peer closed (or spoke nonsense)."""
        try:
            data = self.sock.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        self.seen = time.monotonic()
        messages = []
        for line in self.lines.feed(data):
            try:
                message = json.loads(line)
            except ValueError:
                return None
            if not isinstance(message, dict):
                return None
            messages.append(message)
        return messages

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def node_entry(node: dict) -> dict:
    # The shape of a node in train's summary.json, plus the last lines of its stderr.
    return {"host": node["host"], "rank": node["rank"], "exit_code": None, "lost": None,
            "error": None, "stopped_by_teardown": False, "survivors": None,
            "finished_at": None, "tail": []}


def is_failure(node: dict) -> bool:
    return bool(node["lost"] or node["error"]) or (
        node["exit_code"] not in (None, 0) and not node["stopped_by_teardown"])


class Supervisor:
    """What every node's supervisor does; Master and Follower add their side of the talk."""

    view = "own"                      # "master": the record holds the master's view of all

    def __init__(self, directory: str, spec: dict, ready_fd: int):
        self.dir, self.spec, self.ready_fd = directory, spec, ready_fd
        self.rank, self.master_rank = spec["rank"], spec["master_rank"]
        self.address = (spec["coordination"][0], spec["coordination"][1])
        self.nodes = {n["rank"]: node_entry(n) for n in spec["nodes"]}
        self.me = self.nodes[self.rank]
        self.started, self.ended = time.time(), None
        self.started_monotonic = time.monotonic()
        self.root_cause = None            # node rank
        self.interrupted, self.stop_reason = False, None
        self.teardown_began = self.teardown_seconds = None
        self.selector = selectors.DefaultSelector()
        self.log = BoundedLog(os.path.join(directory, "output.log"), spec["log_max_bytes"])
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.job = self.sweeper = self.watcher = None
        self.streams = []                 # the job's stdout and stderr, while open
        self.local_done = self.finished = False
        self.last_beat = 0.0
        self.signalled = None

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _: setattr(self, "signalled", number))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with open(os.path.join(self.dir, "supervisor.pid"), "w") as handle:
            handle.write("%d\n" % os.getpid())
        self.write_record()
        self.watcher = subprocess.Popen(
            ["sh", "-c", "cat >/dev/null; " + self.spec["stop_script"]],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.begin()
        while not self.finished:
            for key, _ in self.selector.select(timeout=0.2):
                key.data(key.fileobj)
            self.tick()
        self.write_record()
        self.watcher.stdin.close()   # a last sweep, in case a worker outlived the rest

    def tick(self) -> None:
        now = time.monotonic()
        if self.signalled is not None:
            number, self.signalled = self.signalled, None
            if self.teardown_began is None:
                self.stop_asked(self.stop_request() or "stopped on %s (signal %d)"
                                % (self.spec["host"], number))
        self.side_tick(now)
        self.local_tick()
        if now - self.last_beat >= self.spec["heartbeat"]:
            self.last_beat = now
            for peer in self.connected():
                peer.send({"t": "beat"})

    def stop_request(self) -> str:
        """Why `provision stop` sent its TERM: it writes that first (empty for other TERMs)."""
        try:
            with open(os.path.join(self.dir, "stop_reason")) as handle:
                return handle.read(200).strip()
        except OSError:
            return ""

    def report_ready(self, error=None) -> None:
        """Tell `start` (and through it the controller) that this node started, or why not;
        if this process dies first, `start` reads EOF and says so."""
        if self.ready_fd is None:
            return
        message = {"error": error} if error else {"started": True, "pid": os.getpid()}
        try:
            os.write(self.ready_fd, (json.dumps(message) + "\n").encode())
            os.close(self.ready_fd)
        except OSError:
            pass   # the launcher is gone with its SSH channel: nobody is waiting
        self.ready_fd = None

    # -- the node's own job -----------------------------------------------------------------
    def start_job(self) -> None:
        env = dict(os.environ)
        env.update(self.spec["env"])
        try:
            self.job = subprocess.Popen(self.spec["argv"], cwd=self.spec["cwd"], env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        except OSError as exc:
            self.end_without_job("cannot start torchrun: %s" % exc)
            return
        for stream, prefix in ((self.job.stdout, b""), (self.job.stderr, b"[stderr] ")):
            os.set_blocking(stream.fileno(), False)
            reader = (stream, prefix, Lines())
            self.streams.append(reader)
            self.selector.register(stream, selectors.EVENT_READ,
                                   lambda _, r=reader: self.on_output(r))
        self.report_ready()

    def end_without_job(self, error: str) -> None:
        self.me["error"], self.me["finished_at"] = error, time.time()
        self.note(error)
        self.report_ready(error)
        self.local_done = True
        self.report_exit(done=True)
        self.failed(self.rank)

    def note(self, text: str) -> None:
        """A line of the supervisor's own in the node's log, so `logs` shows why it stopped."""
        self.log.write((NOTE + text).encode(errors="replace") + b"\n")

    def on_output(self, reader) -> bool:
        """Log what the job printed; False once nothing more is there to read now."""
        stream, prefix, splitter = reader
        try:
            data = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        for line in splitter.feed(data):
            self.log.write(prefix + line + b"\n")
            if prefix:
                self.tail.append(line.decode(errors="replace"))
        if not data:
            self.selector.unregister(stream)
            stream.close()
            self.streams.remove(reader)
        return bool(data)

    def stop_job(self) -> None:
        """TERM the job's processes, KILL what is left after the grace period."""
        if self.teardown_began is None:
            self.teardown_began = time.monotonic()
        if self.job is None:
            if not self.local_done:       # never started: nothing to stop
                self.local_done = True
                self.report_exit(done=True)
            return
        if self.job.poll() is None:
            self.me["stopped_by_teardown"] = True
        self.sweep()

    def sweep(self) -> None:
        if self.sweeper is None:
            self.sweeper = subprocess.Popen(["sh", "-c", self.spec["stop_script"]],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL)

    def local_tick(self) -> None:
        if self.local_done or self.job is None:
            return
        code = self.job.poll()
        if code is not None and self.me["finished_at"] is None:
            # A signal's death reads as the shell says it: 128 + the signal's number.
            self.me["exit_code"] = code if code >= 0 else 128 - code
            self.me["finished_at"] = time.time()
            self.me["tail"] = list(self.tail)
            self.sweep()                  # whatever it ended with, nothing of it may outlive it
            # The others learn of a failure now, not after the sweep's grace period.
            self.report_exit(done=False)
            if is_failure(self.me):
                self.failed(self.rank)
        if code is not None and self.sweeper is not None and self.sweeper.poll() is not None:
            words = self.sweeper.stdout.read().split()
            self.sweeper.stdout.close()
            self.me["survivors"] = int(words[-1]) if words and words[-1].isdigit() else None
            self.local_done = True
            if self.teardown_began is not None:
                self.teardown_seconds = time.monotonic() - self.teardown_began
            self.report_exit(done=True)

    # -- stopping ---------------------------------------------------------------------------
    def stop_asked(self, reason: str) -> None:
        """SIGTERM (provision stop): this node stops, and so does every other."""
        self.interrupted, self.stop_reason = True, reason
        self.begin_stop()

    def failed(self, rank: int) -> None:
        if self.root_cause is None and not self.interrupted:
            self.root_cause = rank
        self.begin_stop()

    def begin_stop(self) -> None:
        if self.teardown_began is not None:
            return
        self.note(STOPPING + self.why_stopping())
        self.tell_stop()
        self.stop_job()

    def why_stopping(self) -> str:
        if self.root_cause is None:
            return self.stop_reason or "stopped"
        cause = self.nodes[self.root_cause]
        what = cause["lost"] or cause["error"] or "its job exited with code %s" % cause["exit_code"]
        return "%s (node rank %d) failed: %s" % (cause["host"], cause["rank"], what)

    # -- the end ----------------------------------------------------------------------------
    def finish(self) -> None:
        for _ in range(64):               # what the job printed last, before the record
            if not any([self.on_output(reader) for reader in list(self.streams)]):
                break
        self.ended = time.time()
        self.before_exit()
        self.finished = True

    def state(self) -> str:
        if self.ended is None:
            return "running"
        if self.root_cause is not None or any(is_failure(n) for n in self.nodes.values()):
            return "failed"
        if self.interrupted:
            return "stopped"
        return "succeeded"

    def record(self) -> dict:
        spec = self.spec
        cause = self.nodes[self.root_cause] if self.root_cause is not None else None
        return {"run_id": spec["run_id"], "command": spec["command"],
                "inventory_sha256": spec["inventory_sha256"], "script": spec["script"],
                "master": spec["master"], "coordination": "%s:%d" % self.address,
                "started": self.started, "ended": self.ended, "state": self.state(),
                "interrupted": self.interrupted, "stop_reason": self.stop_reason,
                "teardown_seconds": self.teardown_seconds, "root_cause": cause,
                "nodes": [self.nodes[r] for r in sorted(self.nodes)],
                "host": spec["host"], "rank": self.rank, "supervisor_pid": os.getpid(),
                "view": self.view}

    def write_record(self) -> None:
        write_atomically(os.path.join(self.dir, "record.json"), self.record())

    # -- each side's part -------------------------------------------------------------------
    def begin(self) -> None:
        raise NotImplementedError

    def side_tick(self, now: float) -> None:
        raise NotImplementedError

    def connected(self) -> list:
        raise NotImplementedError

    def report_exit(self, done: bool) -> None:
        """How this node's job ended (`done`: and that the node was swept), for the master."""

    def tell_stop(self) -> None:
        """This node is stopping: tell whom it concerns."""

    def before_exit(self) -> None:
        """The run has ended for this node: last words before the process exits."""


class Master(Supervisor):
    """Listens for the followers, watches them, and decides for the whole run."""

    view = "master"

    def __init__(self, directory: str, spec: dict, ready_fd: int):
        super().__init__(directory, spec, ready_fd)
        self.listener = None
        self.peers = {}                   # rank -> joined follower
        self.pending = []                 # accepted, not yet said hello
        self.settled = set()              # followers done with their job, or lost
        self.followers = [r for r in self.nodes if r != self.rank]

    def begin(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.address)
            listener.listen(256)
        except OSError as exc:
            self.end_without_job("cannot listen on %s port %d: %s" % (
                self.address[0], self.address[1], exc.strerror or exc))
            return
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, self.on_accept)
        self.start_job()

    def connected(self) -> list:
        return list(self.peers.values())

    def tell_stop(self) -> None:
        for peer in self.peers.values():
            peer.send(self.stop_message())

    def stop_message(self) -> dict:
        cause = self.nodes[self.root_cause] if self.root_cause is not None else None
        return {"t": "stop", "reason": self.stop_reason, "interrupted": self.interrupted,
                "root_cause": cause}

    def on_accept(self, listener) -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        peer = Peer(sock)
        self.pending.append(peer)
        self.selector.register(sock, selectors.EVENT_READ, lambda _, p=peer: self.on_peer(p))

    def on_peer(self, peer: Peer) -> None:
        messages = peer.receive()
        if messages is None:
            self.drop(peer, "its supervisor closed the connection (killed, or its node "
                            "went down)")
            return
        for message in messages:
            if peer.rank is None:
                if not self.hello(peer, message):
                    return
                continue
            kind = message.get("t")
            if kind == "exit" and isinstance(message.get("node"), dict):
                node = self.nodes[peer.rank]
                node.update({k: message["node"].get(k, node[k]) for k in node
                             if k not in ("host", "rank")})
                if message.get("done"):
                    self.settled.add(peer.rank)
                if is_failure(node):
                    self.failed(peer.rank)
            elif kind == "stop":
                if not self.interrupted and self.root_cause is None:
                    self.interrupted = True
                    self.stop_reason = str(message.get("reason") or "stopped")
                self.begin_stop()

    def hello(self, peer: Peer, message: dict) -> bool:
        rank = message.get("rank")
        token = message.get("token")
        if (message.get("t") != "hello" or not isinstance(token, str)
                or not hmac.compare_digest(token, self.spec["token"])
                or rank not in self.followers or rank in self.peers or rank in self.settled):
            self.forget(peer)
            return False
        self.pending.remove(peer)
        peer.rank = rank
        self.peers[rank] = peer
        peer.send({"t": "welcome"})
        if self.teardown_began is not None:
            peer.send(self.stop_message())
        return True

    def forget(self, peer: Peer) -> None:
        if peer in self.pending:
            self.pending.remove(peer)
        self.selector.unregister(peer.sock)
        peer.close()

    def drop(self, peer: Peer, why: str) -> None:
        self.forget(peer)
        if peer.rank is None or self.peers.get(peer.rank) is not peer:
            return
        del self.peers[peer.rank]
        self.lose(peer.rank, why)

    def lose(self, rank: int, why: str) -> None:
        if rank in self.settled:
            return
        self.settled.add(rank)
        node = self.nodes[rank]
        if node["finished_at"] is None:   # one whose job had ended has nothing left to lose
            node["lost"], node["finished_at"] = why, time.time()
            self.failed(rank)

    def side_tick(self, now: float) -> None:
        for peer in list(self.pending):
            if now - peer.opened > HELLO_TIMEOUT:
                self.forget(peer)
        silent = [p for p in self.peers.values()
                  if now - p.seen > self.spec["deadline"] and p.rank not in self.settled]
        if len(silent) == len(self.followers) >= 2 and self.root_cause is None:
            # Every other node fell silent at once: the master's own link is the likely cause.
            self.me["lost"] = "lost contact with every other node (this node's network?)"
            self.failed(self.rank)
        for peer in silent:
            self.drop(peer, "no heartbeat from its supervisor for %g s (node down, or its "
                            "link cut)" % self.spec["deadline"])
        unjoined = [r for r in self.followers if r not in self.peers and r not in self.settled]
        if now - self.started_monotonic > self.spec["join_timeout"]:
            for rank in unjoined:
                self.lose(rank, "its supervisor never joined the master's at %s port %d"
                          % self.address)
        # Once stopping, a follower that never joined has no job to wait for: it starts its
        # torchrun only when welcomed, and it stops by itself when it cannot join.
        waiting = [r for r in self.followers if r not in self.settled
                   and not (self.teardown_began is not None and r in unjoined)]
        if self.local_done and not waiting:
            self.finish()

    def before_exit(self) -> None:
        record = self.record()
        for peer in self.peers.values():
            peer.send({"t": "final", "record": record})
        self.linger()

    def linger(self) -> None:
        """Give the followers the final record before closing: closing a socket with unread
        heartbeats in it resets the connection and could drop what was sent last."""
        selector = selectors.DefaultSelector()
        for peer in self.peers.values():
            try:
                peer.sock.shutdown(socket.SHUT_WR)
                selector.register(peer.sock, selectors.EVENT_READ, peer)
            except OSError:
                peer.close()
        deadline = time.monotonic() + CLOSE_LINGER
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                if key.data.receive() is None:   # the follower has it, and closed
                    selector.unregister(key.fileobj)
        for peer in self.peers.values():
            peer.close()


class Follower(Supervisor):
    """Joins the master's supervisor, starts its job once welcomed, and does as it says."""

    def __init__(self, directory: str, spec: dict, ready_fd: int):
        super().__init__(directory, spec, ready_fd)
        self.master = None

    def begin(self) -> None:
        """Nothing yet: side_tick joins the master, and the job starts once welcomed."""

    def connected(self) -> list:
        return [self.master] if self.master is not None else []

    def report_exit(self, done: bool) -> None:
        if self.master is not None:
            self.master.send({"t": "exit", "node": self.me, "done": done})

    def stop_asked(self, reason: str) -> None:
        if self.master is not None:
            self.master.send({"t": "stop", "reason": reason})
        super().stop_asked(reason)

    def side_tick(self, now: float) -> None:
        if self.master is None and self.job is None and not self.local_done:
            self.join(now)
        elif self.master is not None and now - self.master.seen > self.spec["deadline"]:
            self.master_lost("no heartbeat from the master's supervisor for %g s (the master "
                             "node down, or a link cut)" % self.spec["deadline"])
        # A follower whose job ended waits for the master's final record while the master
        # is alive, so that every node's record holds every node's exit code.
        if self.local_done and (self.master is None or self.view == "master"):
            self.finish()

    def join(self, now: float) -> None:
        if now - self.started_monotonic > self.spec["join_timeout"]:
            self.end_without_job("cannot reach the master's supervisor at %s port %d within "
                                 "%g s (a firewall?)"
                                 % (self.address + (self.spec["join_timeout"],)))
            return
        try:
            sock = socket.create_connection(self.address, timeout=1.0)
        except OSError:
            time.sleep(0.2)
            return
        peer = Peer(sock)
        peer.send({"t": "hello", "rank": self.rank, "token": self.spec["token"]})
        self.master = peer
        self.selector.register(sock, selectors.EVENT_READ, lambda _: self.on_master())

    def on_master(self) -> None:
        messages = self.master.receive()
        if messages is None:
            if self.job is None and not self.local_done:
                self.selector.unregister(self.master.sock)
                self.master.close()
                self.master = None     # not welcomed yet: the master may not listen yet
                return
            self.master_lost("the master's supervisor closed the connection (killed, or the "
                             "master node went down)")
            return
        for message in messages:
            kind = message.get("t")
            if kind == "welcome" and self.job is None and not self.local_done:
                self.start_job()
            elif kind == "stop":
                self.interrupted = self.interrupted or bool(message.get("interrupted"))
                self.stop_reason = message.get("reason")
                cause = message.get("root_cause")
                if isinstance(cause, dict) and cause.get("rank") in self.nodes:
                    self.nodes[cause["rank"]].update(cause)
                    if self.root_cause is None:
                        self.root_cause = cause["rank"]
                self.begin_stop()
            elif kind == "final" and isinstance(message.get("record"), dict):
                self.take_final(message["record"])

    def master_lost(self, why: str) -> None:
        self.selector.unregister(self.master.sock)
        self.master.close()
        self.master = None
        if self.view != "master":
            self.nodes[self.master_rank]["lost"] = why
            self.nodes[self.master_rank]["finished_at"] = time.time()
            self.failed(self.master_rank)

    def take_final(self, record: dict) -> None:
        for node in record.get("nodes", []):
            if isinstance(node, dict) and node.get("rank") in self.nodes \
                    and node["rank"] != self.rank:
                self.nodes[node["rank"]].update(node)
        cause = record.get("root_cause")
        self.root_cause = cause.get("rank") if isinstance(cause, dict) else None
        self.interrupted = bool(record.get("interrupted"))
        self.stop_reason = record.get("stop_reason")
        self.view = "master"


def read_spec(directory: str) -> dict:
    with open(os.path.join(directory, "spec.json")) as handle:
        return json.load(handle)


def start(directory: str) -> int:
    """Launch `run` in a session of its own, wait until it started, print how it went."""
    spec = read_spec(directory)
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k not in spec["drop_env"]}
    with open(os.path.join(directory, "supervisor.log"), "ab") as log:
        subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), "run",
                          directory, str(write_end)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                         cwd=directory, pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    data = b""
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        data += chunk
    line = data.decode(errors="replace").strip()
    if not line:
        line = json.dumps({"error": "the supervisor exited before it started (see %s)"
                           % os.path.join(directory, "supervisor.log")})
    print(line, flush=True)
    return 0 if '"started"' in line else 1


def main(argv: list) -> int:
    if len(argv) == 2 and argv[0] == "start":
        return start(argv[1])
    if len(argv) == 3 and argv[0] == "run":
        spec = read_spec(argv[1])
        side = Master if spec["rank"] == spec["master_rank"] else Follower
        side(argv[1], spec, int(argv[2])).run()
        return 0
    sys.stderr.write("usage: supervisor.py start DIR | run DIR READY_FD\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
