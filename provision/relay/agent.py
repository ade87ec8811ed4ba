"""The hosts' side of the file relay (standard library only, Python 3.6 or newer).

The controller runs this file's text with the host's own `python3 -I -S -c` over the host's SSH
connection, with stdin held open: the first stdin line is the transfer's one-time token, and the
end of stdin (the controller is done, or gone along with the SSH channel) ends the program.
Results are JSON lines on stdout.

    serve PATH BIND_ADDRESS PEER_ADDRESS PORT[,PORT...]
        Listens on BIND_ADDRESS at the first PORT it can bind and says {"port": P}. Accepts one
        connection, from PEER_ADDRESS only, that presents the token; sends the file; waits for
        the peer to close first (so that the peer keeps the TIME_WAIT and the port is free at
        once); says {"sent": N} and exits. Nothing listens once the peer is in.
    fetch HOLDER_ADDRESS PORT OWN_ADDRESS SHA256 PATH
        Connects from OWN_ADDRESS, presents the token, receives into a temporary file beside
        PATH, checks the sha256, renames it to PATH and says {"ok": N}. Then it keeps PATH for
        as long as stdin stays open and removes it when stdin closes (or at TERM/HUP/INT).

Wire: token line from the fetcher; 8-byte big-endian size, then the bytes, from the server.
Failures: {"error": "...", "where": "connect" | "peer" | "local" | "checksum"} and exit 1.
"""

import errno
import fcntl
import glob
import hashlib
import hmac
import json
import os
import select
import signal
import socket
import struct
import sys
import time

ACCEPT_TIMEOUT = 20.0    # the fetcher connects within this, or the server gives up
CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0      # a transfer that moves nothing for this long is dead
CHUNK = 1 << 20
HEADER = struct.Struct("!Q")
LOCAL_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


class Failed(Exception):
    def __init__(self, where, message):
        Exception.__init__(self, message)
        self.where = where


def say(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def stdin_line():
    # Unbuffered, byte by byte: whatever stays on stdin is the controller's liveness signal.
    data = b""
    while not data.endswith(b"\n"):
        more = os.read(0, 1)
        if not more:
            break
        data += more
    return data.strip()


def wait_for_stdin_end():
    while os.read(0, 65536):
        pass


def recv_exactly(conn, count):
    data = b""
    while len(data) < count:
        more = conn.recv(count - len(data))
        if not more:
            raise Failed("peer", "the holder closed the connection early")
        data += more
    return data


def listen(address, ports):
    last = None
    for port in ports:
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
                address, port, 0, socket.SOCK_STREAM):
            listener = socket.socket(family, kind, proto)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(sockaddr)
                listener.listen(4)
                return listener, port
            except OSError as exc:
                listener.close()
                last = exc
    raise Failed("local", "cannot listen on %s port %s: %s"
                 % (address, ",".join(map(str, ports)), last))


def serve(path, bind_address, peer_address, ports):
    token = stdin_line()
    allowed = {info[4][0] for info in socket.getaddrinfo(peer_address, None)}
    try:
        source = open(path, "rb")
    except OSError as exc:
        raise Failed("local", "cannot read the copy %s: %s" % (path, exc.strerror))
    size = os.fstat(source.fileno()).st_size
    listener, port = listen(bind_address, [int(p) for p in ports.split(",")])
    say({"port": port})
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        ready = select.select([listener, 0], [], [], max(left, 0))[0] if left > 0 else []
        if 0 in ready and not os.read(0, 65536):
            return                       # the controller gave up on this transfer
        if not ready:
            raise Failed("peer", "the peer did not connect within %d s" % ACCEPT_TIMEOUT)
        if listener not in ready:
            continue
        conn, address = listener.accept()
        conn.settimeout(IDLE_TIMEOUT)
        try:
            presented = recv_line(conn) if address[0] in allowed else b""
        except (OSError, Failed):
            presented = b""
        if not hmac.compare_digest(presented, token):
            conn.close()                 # not the peer this transfer is for
            continue
        listener.close()
        break
    try:
        conn.sendall(HEADER.pack(size))
        sent = conn.sendfile(source) if size else 0
        # The fetcher closes once it has every byte; waiting for that keeps TIME_WAIT on its
        # side (a training port must be free for torch right after staging).
        conn.recv(1)
    except OSError as exc:
        raise Failed("peer", "sending to %s failed: %s" % (peer_address, exc))
    conn.close()
    say({"sent": sent})


def recv_line(conn):
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        more = conn.recv(1)
        if not more:
            break
        data += more
    return data.strip()


def fetch(holder_address, port, own_address, sha256, path):
    token = stdin_line()
    directory = os.path.dirname(path)
    partial = "%s.part-%d" % (path, os.getpid())

    def remove(*_):
        discard(partial)
        discard(path)
        tidy(directory)
        os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, remove)
    try:
        # The directories above with the usual mode (the prefix's parent, say); ours private.
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        os.umask(0o077)
        os.makedirs(directory, exist_ok=True)
        clear_stale(directory)
        out = open_part(directory, partial)
    except OSError as exc:
        raise Failed("local", "cannot write into %s: %s" % (directory, exc.strerror))
    try:
        # From our own address: the holder accepts that address only.
        conn = socket.create_connection((holder_address, int(port)), CONNECT_TIMEOUT,
                                        source_address=(own_address, 0))
    except OSError as exc:
        discard(partial)
        where = "local" if exc.errno == errno.EADDRNOTAVAIL else "connect"
        raise Failed(where, "cannot connect to %s:%s from %s: %s"
                     % (holder_address, port, own_address, exc))
    try:
        digest, size = receive(conn, out, token)
    except Failed:
        discard(partial)
        raise
    except OSError as exc:
        discard(partial)
        raise Failed("local" if exc.errno in LOCAL_ERRORS else "peer",
                     "receiving from %s failed: %s" % (holder_address, exc))
    if digest != sha256:
        discard(partial)
        raise Failed("checksum", "the copy from %s has sha256 %s, expected %s"
                     % (holder_address, digest, sha256))
    os.rename(partial, path)      # its lock goes with it: the copy is held
    say({"ok": size})
    wait_for_stdin_end()
    discard(path)
    out.close()
    tidy(directory)


def receive(conn, out, token):
    conn.settimeout(IDLE_TIMEOUT)
    conn.sendall(token + b"\n")
    size = HEADER.unpack(recv_exactly(conn, HEADER.size))[0]
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    left = size
    while left:
        count = conn.recv_into(view, min(left, CHUNK))
        if not count:
            raise Failed("peer", "the holder closed the connection after %d of %d bytes"
                         % (size - left, size))
        digest.update(view[:count])
        out.write(view[:count])
        left -= count
    # No fsync: the copy lives for one run, and every use checks its sha256 again. Not closed:
    # its lock marks the copy as held until this program ends.
    out.flush()
    conn.close()
    return digest.hexdigest(), size


def clear_stale(directory):
    # Parts and copies that nobody holds (a writer or keeper holds a flock on its own): left by
    # an interrupted transfer or a host killed mid-run. Another run's are left alone.
    for stale in glob.glob(os.path.join(glob.escape(directory), "*")):
        try:
            with open(stale, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(stale)
        except OSError:
            pass


def open_part(directory, partial):
    """The part, created, locked, and still the one at its name: a run clearing stale parts (or
    taking the directory with its last copy) just now may have beaten us to it; then again."""
    for _ in range(3):
        os.makedirs(directory, exist_ok=True)
        try:
            out = open(partial, "ab")
        except FileNotFoundError:
            continue
        fcntl.flock(out, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(out.fileno()), os.stat(partial)):
                return out
        except FileNotFoundError:
            pass
        out.close()
    raise OSError(errno.ENOENT, "%s kept disappearing" % partial)


def tidy(directory):
    # The copies' directory goes with the last copy in it.
    try:
        os.rmdir(directory)
    except OSError:
        pass


def discard(name):
    try:
        os.unlink(name)
    except OSError:
        pass


def main(argv):
    modes = {"serve": (serve, 4), "fetch": (fetch, 5)}
    if len(argv) < 1 or argv[0] not in modes or len(argv) - 1 != modes[argv[0]][1]:
        say({"error": "usage: serve PATH BIND PEER PORTS | fetch HOLDER PORT OWN SHA256 PATH",
             "where": "local"})
        return 2
    try:
        modes[argv[0]][0](*argv[1:])
    except Failed as exc:
        say({"error": str(exc), "where": exc.where})
        return 1
    except (OSError, ValueError) as exc:
        say({"error": str(exc), "where": "local"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
