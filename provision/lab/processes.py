"""The lab's processes: its hosts' inits and sshds, found and stopped through the machine's /proc,
and scripts run inside a host through its namespaces.

Every read may race the process's exit, so each one tolerates a vanished process.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from provision.errors import LabError
from provision.lab.files import LabFiles
from provision.lab.hosts import HOST_PATH, INIT_SCRIPT, LabHost, sshd_argv
from provision.lab.tools import Tools

# OpenSSH >= 9.8 runs sessions as sshd-session and sshd-auth below the sshd listener.
SSHD_PROCESS_NAMES = ("sshd", "sshd-session", "sshd-auth")


def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def is_namespace_init(pid: int) -> bool:
    """True for the PID 1 of a PID namespace below the machine's (NSpid: <machine pid> ... 1)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    chain = line.split()[1:]
                    return len(chain) > 1 and chain[-1] == "1"
    except OSError:
        pass
    return False


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def comm_and_parent(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may itself hold spaces and parentheses.
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2:].split()[1])


def in_namespace_of(init_pid: int, names: Iterable[str]) -> list[int]:
    """Processes named one of `names` in the PID namespace whose init is `init_pid`."""
    namespace, wanted = pid_namespace(init_pid), set(names)
    if namespace is None:
        return []
    found = []
    for pid in pids():
        info = comm_and_parent(pid)
        if info and info[0] in wanted and pid_namespace(pid) == namespace:
            found.append(pid)
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def signal_all(targets: Iterable[int], signum: int) -> None:
    for pid in targets:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def wait_gone(targets: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `targets` runs; return those still running at the deadline."""
    remaining = list(targets)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [pid for pid in remaining if alive(pid)]
    return remaining


def stop(targets: Iterable[int], grace: float) -> list[int]:
    """TERM, then KILL what is left after `grace` seconds; return what even KILL did not end."""
    targets = list(targets)
    signal_all(targets, signal.SIGTERM)
    left = wait_gone(targets, grace)
    signal_all(left, signal.SIGKILL)
    return wait_gone(left, 5)


def ssh_answers(address: str, timeout: float) -> bool:
    """True when something on address:22 sends an SSH banner."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class LabProcesses:
    """The processes of one lab directory's hosts: their inits, their sshds, scripts run in them."""

    def __init__(self, files: LabFiles, tools: Callable[[], Tools]):
        self.files = files
        self.tools = tools   # resolved on first use: finding the inits needs no root

    def running_inits(self, hosts: list[LabHost]) -> dict[str, int]:
        """Host name -> machine PID of each init of this lab directory that runs now."""
        configs = {str(self.files.init_config(h.name)): h.name for h in hosts}
        hosts_dir = str(self.files.dir / "hosts") + "/"
        found = {}
        for pid in pids():
            argv = cmdline(pid)
            if argv[-2:-1] == [INIT_SCRIPT] and argv[-1].startswith(hosts_dir) \
                    and is_namespace_init(pid) and alive(pid):
                found[configs.get(argv[-1], argv[-1])] = pid
        return found

    def stop_all(self, hosts: list[LabHost]) -> list[int]:
        """Stop every host; return the processes of the lab that did not stop."""
        # TERM lets each init stop its host; ending PID 1 ends everything in the host.
        stuck = stop(self.running_inits(hosts).values(), grace=5)
        return stuck + wait_gone(self._processes_of_lab(), 5)

    def _processes_of_lab(self) -> list[int]:
        """Every process whose command line names this lab's host directories."""
        hosts_dir = str(self.files.dir / "hosts") + "/"
        return [pid for pid in pids() if any(arg.startswith(hosts_dir) for arg in cmdline(pid))]

    def init_pid(self, host: LabHost) -> int:
        """The running init of the host (looked up again if another `up` restarted it)."""
        config = str(self.files.init_config(host.name))
        pid = host.init_pid
        if pid is None or not alive(pid) or cmdline(pid)[-1:] != [config]:
            pid = host.init_pid = self.running_inits([host]).get(host.name)
        if pid is None:
            raise LabError(f"lab host {host.name} is not running; run `provision lab up`")
        return pid

    def sh(self, host: LabHost, script: str, check: bool = True, timeout: float = 60,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run a sh script as root inside a host, through its namespaces (not over SSH)."""
        pid = self.init_pid(host)
        argv = [self.tools().nsenter, "--target", str(pid), "--net", "--mount", "--uts", "--ipc",
                "--pid", "--", "/bin/sh", "-c", script]
        env = {"PATH": HOST_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
               "LANG": "C.UTF-8"}
        # A session of its own, so a timeout can kill the script's whole process group.
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, cwd="/",
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise LabError(f"{host.name}: script timed out after {timeout} s: {script[:200]}")
        done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if check and done.returncode != 0:
            raise LabError(f"{host.name}: script exited {done.returncode}: {script[:200]}\n"
                           f"{stderr.strip()[-2000:]}")
        return done

    def sshd_listener(self, host: LabHost) -> int | None:
        """The host's listening sshd: the one its init is the parent of (sessions are below it)."""
        if host.init_pid is None:
            return None
        for pid in in_namespace_of(host.init_pid, ["sshd"]):
            if (comm_and_parent(pid) or ("", 0))[1] == host.init_pid:
                return pid
        return None

    def start_sshd_if_stopped(self, host: LabHost) -> None:
        if not self.sshd_listener(host):
            # Daemonized, it is re-parented to the host's init like the sshd the init started.
            self.sh(host, shlex.join(sshd_argv(self.tools().sshd, self.files.host_dir(host.name),
                                               daemon=True)))

    def stop_sshd(self, host: LabHost) -> None:
        """Kill every sshd of the host (listener and sessions): the host stops answering SSH."""
        sshds = in_namespace_of(self.init_pid(host), SSHD_PROCESS_NAMES)
        signal_all(sshds, signal.SIGKILL)
        if wait_gone(sshds, 5):
            raise LabError(f"{host.name}: sshd did not stop")

    def wait_for_ssh(self, hosts: list[LabHost]) -> None:
        def wait(host: LabHost) -> str | None:
            deadline = time.monotonic() + 20 + 0.2 * len(hosts)
            while time.monotonic() < deadline:
                if ssh_answers(host.address, 1.0):
                    return None
                time.sleep(0.05)
            return f"{host.name} ({host.address}): sshd does not answer; " \
                   f"{self.files.log_tail(host.name, 'sshd.log')}"

        with ThreadPoolExecutor(max_workers=32) as pool:
            errors = [e for e in pool.map(wait, hosts) if e]
        if errors:
            raise LabError(f"lab {self.files.name}:\n  " + "\n  ".join(errors))
