"""The measuring program of `provision net`, run on every node (standard library only).

The controller sends this file over the SSH channel's stdin (no install) and runs it with the
node's own Python (3.6 or newer). It listens on one address and port only (the node's training
interface and training port), answers the peers' probes, and runs the controller's requests,
one JSON line each on stdin, answering with one JSON line each on stdout:

    {"id": 1, "op": "rtt", "to": ["10.0.0.2", 29500], "count": 20}  -> {"id": 1, "rtt_ms": [...]}
    {"id": 2, "op": "bw", "to": ["10.0.0.2", 29500], "seconds": 2}   -> {"id": 2, "bps": 9.4e9}
    any failure                                                      -> {"id": n, "error": "..."}

It exits when its stdin closes (the controller is done, or gone along with its SSH channel)
and, whatever happens, after its hard deadline: it never outlives a run.

Usage: python -I -S agent.py ADDRESS PORT DEADLINE_SECONDS
"""

import json
import os
import select
import socket
import struct
import sys
import threading
import time

CHUNK = 1 << 20              # bytes per send and per receive
CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 10.0          # a peer connection that stays silent this long is dropped
RTT_TIME_CAP = 3.0           # seconds of ping-pong at most, however slow the link
BULK = b"B"
PING = b"P"

_out_lock = threading.Lock()


def say(message):
    with _out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def recv_exactly(conn, count):
    data = b""
    while len(data) < count:
        more = conn.recv(count - len(data))
        if not more:
            raise ConnectionError("the peer closed the connection")
        data += more
    return data


def recv_line(conn):
    # Byte by byte: what follows the line on the connection is not ours to consume.
    data = b""
    while not data.endswith(b"\n"):
        more = conn.recv(1)
        if not more:
            raise ConnectionError("the peer closed the connection")
        data += more
    return data.decode()


# -- the listening side: answers peers' pings and counts their bulk bytes -------------------

def serve_ping(conn):
    while True:
        byte = conn.recv(1)
        if not byte:
            return
        conn.sendall(byte)


def serve_bulk(conn):
    """Count the bytes received for the sender's stated seconds, from the first byte on, and
    answer "BYTES SECONDS": the receiver's count, so bytes still queued in the sender's buffers
    are not counted as sent."""
    seconds = float(recv_line(conn))
    buffer = bytearray(CHUNK)
    if not conn.recv_into(buffer):
        return
    started = last = time.monotonic()
    received = 0
    while last - started < seconds:
        count = conn.recv_into(buffer)
        if not count:
            break
        received += count
        last = time.monotonic()
    conn.sendall(("%d %.6f\n" % (received, last - started)).encode())
    conn.shutdown(socket.SHUT_WR)
    # Drain until the sender closes: closing with unread bytes would reset the connection and
    # could destroy the answer before the sender has read it.
    while conn.recv_into(buffer):
        pass


def serve(conn):
    try:
        conn.settimeout(IDLE_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = conn.recv(1)
        if kind == PING:
            serve_ping(conn)
        elif kind == BULK:
            serve_bulk(conn)
    except (OSError, ValueError):
        pass  # a broken probe shows up on the sender's side, which reports it
    finally:
        conn.close()


def accept_forever(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# -- the requesting side ----------------------------------------------------------------------

def connect(source, target):
    """A connection from this node's training address (so the route is the training
    interface's) to a peer's agent."""
    conn = socket.socket(family_of(target[0]), socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT)
    conn.bind((source, 0))
    conn.connect((target[0], int(target[1])))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def measure_rtt(source, target, count):
    """Round trips of one byte, in ms; the first (cold) one is dropped."""
    conn = connect(source, target)
    try:
        conn.sendall(PING)
        samples = []
        stop = time.monotonic() + RTT_TIME_CAP
        while len(samples) <= count and time.monotonic() < stop:
            sent = time.perf_counter()
            conn.sendall(b"x")
            recv_exactly(conn, 1)
            samples.append((time.perf_counter() - sent) * 1000.0)
        return {"rtt_ms": samples[1:] or samples}
    finally:
        conn.close()


def measure_bandwidth(source, target, seconds):
    conn = connect(source, target)
    try:
        conn.sendall(BULK + ("%f\n" % seconds).encode())
        conn.setblocking(False)
        payload = memoryview(bytearray(CHUNK))
        answer = b""
        deadline = time.monotonic() + seconds + IDLE_TIMEOUT
        while not answer.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError("the receiver did not report within %.0f s" % (seconds + IDLE_TIMEOUT))
            readable, writable, _ = select.select([conn], [] if answer else [conn], [], left)
            if readable:
                more = conn.recv(256)
                if not more:
                    raise OSError("the receiver closed the connection without a report")
                answer += more
            elif writable:
                try:
                    conn.send(payload)
                except BlockingIOError:
                    pass
        # Reset, not close: a close would still send what fills this socket's buffer (seconds
        # of it on a slow link), into the measurements of the next step.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        received, elapsed = answer.split()
        elapsed = float(elapsed)
        if elapsed <= 0:
            raise OSError("the receiver measured no time")
        return {"bps": int(received) * 8 / elapsed}
    finally:
        conn.close()


def run_request(source, request):
    answer = {"id": request.get("id")}
    try:
        target = request["to"]
        if request["op"] == "rtt":
            answer.update(measure_rtt(source, target, int(request.get("count", 20))))
        elif request["op"] == "bw":
            answer.update(measure_bandwidth(source, target, float(request["seconds"])))
        else:
            answer["error"] = "unknown request %r" % request["op"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        answer["error"] = str(exc) or type(exc).__name__
    say(answer)


def hard_stop(seconds):
    time.sleep(seconds)
    say({"event": "deadline", "seconds": seconds})
    os._exit(3)


def main(argv, requests):
    address, port, deadline = argv[0], int(argv[1]), float(argv[2])
    threading.Thread(target=hard_stop, args=(deadline,), daemon=True).start()
    listener = socket.socket(family_of(address), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((address, port))
        listener.listen(128)
    except OSError as exc:
        say({"event": "error", "error": "cannot listen on %s port %d: %s"
             % (address, port, exc.strerror or exc)})
        return 1
    threading.Thread(target=accept_forever, args=(listener,), daemon=True).start()
    say({"event": "ready", "pid": os.getpid()})
    for line in requests:
        if line.strip():
            try:
                request = json.loads(line.decode())
            except ValueError:
                say({"event": "error", "error": "unreadable request %r" % line[:80]})
                continue
            threading.Thread(target=run_request, args=(address, request), daemon=True).start()
    return 0


if __name__ == "__main__":
    # os._exit: the daemon threads may sit in blocking calls; the process simply ends.
    os._exit(main(sys.argv[1:], sys.stdin.buffer))
