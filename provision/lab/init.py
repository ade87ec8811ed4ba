"""PID 1 of a lab host: builds its filesystem view, starts sshd, then reaps and forwards TERM.

Run as `python -I -S init.py CONFIG.json` by `unshare --mount --uts --ipc --pid --fork` inside
the host's network namespace, so it starts as PID 1 of a fresh PID namespace. Standard library only:
it runs before anything else exists in the host. Mounts go through mount(2) directly (no process
per mount: that matters with 64 hosts on 2 cores). It mounts /proc itself, after first reading its
own PID as the machine sees it (from the machine's /proc) and reporting it in the boot file.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND = 0x2, 0x4, 0x8, 0x1000
MNT_DETACH = 0x2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_stop_requested: list[int] = []   # stop signals that arrived while booting
SUDOERS_FILE = "/etc/sudoers.d/provision-lab"
# The host's resolver, like systemd-resolved's stub: every lookup is answered here, at once.
DNS_ADDRESS = "127.0.0.53"
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None),
           f"mount {fstype or 'bind'} {source} on {target}")


def hosts_file(hosts: dict[str, str]) -> str:
    """/etc/hosts of every lab host: localhost and each lab host's name, like a cluster's DNS."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{address}\t{name}" for name, address in hosts.items()]
    return "\n".join(lines) + "\n"


# -- the cluster's DNS, in miniature -----------------------------------------------------------
# A real cluster's DNS answers reverse lookups (PTR) of its hosts. /etc/hosts alone cannot answer
# them for every caller: torch's TCPStore listens dual-stack, sees its peers as IPv4-mapped IPv6
# addresses (::ffff:10.0.0.12), which glibc's files backend never matches against IPv4 lines, so
# glibc asks DNS (turning the mapped address into an in-addr.arpa name, as it does). This stub
# answers A and PTR queries from the host's /etc/hosts, re-read per query so it follows lab
# changes, and NXDOMAIN for every other name: the lab has no way out, so there is nothing to ask.
A, PTR, CLASS_IN, NXDOMAIN = 1, 12, 1, 3


def _hosts_table() -> dict[str, str]:
    """name -> IPv4 address, from /etc/hosts."""
    table = {}
    for line in _read("/etc/hosts").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0].count(".") == 3:
            for name in fields[1:]:
                table.setdefault(name.lower(), fields[0])
    return table


def _encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def dns_answer(query: bytes, table: dict[str, str]) -> bytes | None:
    """The response to one DNS query packet (None for what is not a plain query)."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, at = [], 12
    while at < len(query) and query[at] != 0:
        length = query[at]
        if length > 63 or at + 1 + length > len(query):
            return None
        labels.append(query[at + 1:at + 1 + length].decode("ascii", "replace").lower())
        at += 1 + length
    if at + 5 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[at + 1:at + 5])
    question = query[12:at + 5]
    name = ".".join(labels)
    records = []
    if qclass == CLASS_IN and qtype == A and name in table:
        records.append(socket.inet_aton(table[name]))
    elif qclass == CLASS_IN and qtype == PTR and name.endswith(".in-addr.arpa"):
        address = ".".join(reversed(name[:-len(".in-addr.arpa")].split(".")))
        records += [_encode_name(n) for n, a in table.items() if a == address][:1]
    known = name in table or bool(records)
    rcode = 0 if known else NXDOMAIN
    header = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100) | rcode, 1,
                         len(records), 0, 0)
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, CLASS_IN, 60, len(r)) + r
                       for r in records)
    return header + question + answers


def dns_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS_ADDRESS, 53))
    return sock


def serve_dns(sock: socket.socket) -> None:
    while True:
        query, peer = sock.recvfrom(512)
        try:
            answer = dns_answer(query, _hosts_table())
        except OSError:
            answer = None
        if answer is not None:
            sock.sendto(answer, peer)


def write_atomic(path: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    """Write a sibling file with its final mode, then rename it over `path`.

    The lab's one copy: this script runs standalone (`python -I -S`), so it imports nothing of
    provision, and the controller's side imports it from here."""
    directory, name = os.path.split(os.fspath(path))
    temp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, mode)
    os.replace(temp, path)


def build_filesystem(config: dict) -> None:
    # Held open so these directories can be mounted back at their own paths if a tmpfs or bind
    # mount below hides them (a checkout under /tmp, say): sshd and the binds below read the lab
    # dir, and the hosts run the controller's Python environment.
    visible = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in config["visible"]}
    for target, upper, work in config["overlays"]:
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        mount("overlay", target, "overlay", 0,
              f"lowerdir={target},upperdir={upper},workdir={work}")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # A sysfs mounted from inside the netns shows this host's interfaces in /sys/class/net.
    _libc.umount2(b"/sys", MNT_DETACH)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for target, mode in (("/run", "0755"), ("/tmp", "1777"), ("/dev/shm", "1777")):
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    for path, fd in visible.items():
        if not os.path.exists(path) or not os.path.samestat(os.stat(fd), os.stat(path)):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
        os.close(fd)
    for source, target in config["binds"]:
        os.makedirs(target, exist_ok=True)
        mount(source, target, None, MS_BIND)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


def _passwd_entry(user: str) -> list[str] | None:
    with open("/etc/passwd") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user:
                return fields
    return None


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()}")


def create_users(config: dict) -> None:
    """The sudo user exists from the first boot on (its password lives in the host's /etc)."""
    user = config["user"]
    if _passwd_entry(user) is None:
        _run([config["useradd"], "--create-home", "--shell", "/bin/bash", "--user-group", user])
        password = _read(config["password_file"]).strip()
        _run([config["chpasswd"]], stdin=f"{user}:{password}\n")
        write_atomic(SUDOERS_FILE, f"{user} ALL=(ALL:ALL) ALL\n", 0o440)
    with open("/etc/shadow") as handle:
        root_locked = any(line.startswith("root:!") for line in handle)
    if root_locked:
        # sshd (UsePAM no) refuses even key logins to a '!'-locked account; '*' only bars passwords.
        _run([config["usermod"], "--password", "*", "root"])
    for name in ("root", user):
        fields = _passwd_entry(name)
        if fields is None:
            raise RuntimeError(f"user {name} is missing from the host's /etc/passwd")
        uid, gid, home = int(fields[2]), int(fields[3]), fields[5]
        ssh_dir = os.path.join(home, ".ssh")
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        keys_path = os.path.join(ssh_dir, "authorized_keys")
        keys = _read(keys_path) if os.path.exists(keys_path) else ""
        if config["authorized_key"] not in keys.splitlines():
            write_atomic(keys_path, keys + config["authorized_key"] + "\n", 0o600)
        for path in (ssh_dir, keys_path):
            os.chown(path, uid, gid)


def fresh_root_shell() -> None:
    """Root's ~/.bashrc as on a freshly installed server. bash sources it for every command run
    over SSH, and this machine's own (pyenv or conda init, say) would add ~0.1 s of CPU to each
    round trip on every host, which no lab figure should carry."""
    skel = "/etc/skel/.bashrc"
    write_atomic("/root/.bashrc", _read(skel) if os.path.exists(skel) else "")


def boot(config: dict) -> socket.socket:
    socket.sethostname(config["hostname"])
    build_filesystem(config)
    write_atomic("/etc/hosts", hosts_file(json.loads(_read(config["hosts_json"]))))
    write_atomic("/etc/resolv.conf", f"nameserver {DNS_ADDRESS}\n")
    dns = dns_socket()
    create_users(config)
    fresh_root_shell()
    subprocess.Popen(config["sshd_argv"], stdin=subprocess.DEVNULL)
    return dns


def reap_forever(dns: socket.socket) -> None:
    """Reap every orphan; on TERM/INT/HUP, pass TERM to every process of the host, then exit."""
    wanted = {signal.SIGCHLD, *STOP_SIGNALS}
    # Blocked only now: children inherit the signal mask, and sshd must not start with one.
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    # Started with the signals blocked, so that they all reach this thread's sigwaitinfo.
    threading.Thread(target=serve_dns, args=(dns,), daemon=True).start()
    while not _stop_requested:
        _reap()
        if signal.sigwaitinfo(wanted).si_signo != signal.SIGCHLD:
            break
    os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while _reap() and time.monotonic() < deadline:
        signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    # Leaving PID 1 makes the kernel kill whatever is left in the namespace.


def _reap() -> bool:
    """Collect every exited child; True while some child still runs."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def main(config_path: str) -> int:
    for signum in STOP_SIGNALS:
        # With a handler (not SIG_DFL) the kernel lets outside signals reach a namespace's PID 1.
        signal.signal(signum, lambda signum, _frame: _stop_requested.append(signum))
    config = json.loads(_read(config_path))
    machine_pid = int(os.readlink("/proc/self"))   # still the machine's /proc at this point
    try:
        dns = boot(config)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:   # reported via the boot file
        write_atomic(config["boot_file"], json.dumps({"pid": machine_pid, "error": str(exc)}))
        return 1
    write_atomic(config["boot_file"], json.dumps({"pid": machine_pid}))
    reap_forever(dns)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
