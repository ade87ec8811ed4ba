"""Facts about the operating system: distribution, architecture, package manager, services."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from provision.facts.base import Fact

# sd_booted(3)'s test: systemd is the running init.
SYSTEMD_RUNNING = "[ -d /run/systemd/system ]"


@dataclass(frozen=True)
class OsInfo:
    id: str                    # os-release ID: debian, ubuntu, rhel, rocky, almalinux, ...
    id_like: tuple[str, ...]
    version: str
    arch: str
    package_manager: str | None  # apt, dnf or yum
    systemd: bool

    @property
    def family(self) -> str:
        ids = {self.id, *self.id_like}
        if ids & {"debian", "ubuntu"}:
            return "debian"
        if ids & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
            return "redhat"
        return "unknown"


@dataclass(frozen=True)
class Os(Fact):
    def command(self) -> str:
        return ("cat /etc/os-release; echo ARCH=$(uname -m); "
                "for pm in apt-get dnf yum; do command -v $pm >/dev/null && echo PM=$pm && break; "
                f"done; {SYSTEMD_RUNNING} && echo SYSTEMD=1; true")

    def parse(self, stdout: str, rc: int) -> OsInfo:
        values: dict[str, str] = {}
        for line in stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value.strip().strip('"')
        pm = values.get("PM")
        return OsInfo(id=values.get("ID", "unknown"), id_like=tuple(values.get("ID_LIKE", "").split()),
                      version=values.get("VERSION_ID", ""), arch=values.get("ARCH", "unknown"),
                      package_manager={"apt-get": "apt"}.get(pm, pm) if pm else None,
                      systemd=values.get("SYSTEMD") == "1")


@dataclass(frozen=True)
class InstalledPackages(Fact):
    """Which of `names` are installed, by dpkg or rpm, whichever the host has."""

    names: tuple[str, ...]

    def command(self) -> str:
        names = shlex.join(self.names)
        return (f"if command -v dpkg-query >/dev/null; then "
                f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {names} 2>/dev/null; "
                f"else rpm -q --qf '%{{NAME}} installed\\n' {names} 2>/dev/null | grep ' installed$'; "
                f"fi; true")

    def parse(self, stdout: str, rc: int) -> frozenset[str]:
        return frozenset(line.split()[0] for line in stdout.splitlines()
                         if line.split()[1:] == ["installed"])


@dataclass(frozen=True)
class ServiceState(Fact):
    """(enabled, active) of a systemd unit."""

    unit: str

    def command(self) -> str:
        unit = shlex.quote(self.unit)
        # Read only where systemd runs (as Os reports it): elsewhere no decision uses it, and
        # two systemctl calls that cannot answer cost ~20 ms per host.
        return (f"{SYSTEMD_RUNNING} || exit 0; "
                f"echo $(systemctl is-enabled {unit} 2>/dev/null) "
                f"$(systemctl is-active {unit} 2>/dev/null)")

    def parse(self, stdout: str, rc: int) -> tuple[bool, bool]:
        words = stdout.split()
        # static (started by another unit) and enabled-runtime count as enabled: `systemctl
        # enable` could not make them more so.
        return (bool({"enabled", "static", "enabled-runtime"} & set(words)), "active" in words)


@dataclass(frozen=True)
class CommandsPresent(Fact):
    """The subset of `names` found on the PATH."""

    names: tuple[str, ...]

    def command(self) -> str:
        return "; ".join(f"command -v {shlex.quote(n)} >/dev/null && echo {shlex.quote(n)}"
                         for n in self.names) + "; true"

    def parse(self, stdout: str, rc: int) -> frozenset[str]:
        return frozenset(stdout.split())


@dataclass(frozen=True)
class DiskFree:
    path: str           # the nearest existing directory at or above the asked path
    free_bytes: int


@dataclass(frozen=True)
class FreeSpace(Fact):
    """Free space on the filesystem that `path` is (or would be) created on."""

    path: str

    def command(self) -> str:
        return (f"p={shlex.quote(self.path)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); "
                f"done; echo \"$p\"; df -Pk \"$p\" | tail -n 1")

    def parse(self, stdout: str, rc: int) -> DiskFree:
        lines = stdout.splitlines()
        if rc != 0 or len(lines) < 2:
            raise ValueError(f"cannot read free space at {self.path}")
        return DiskFree(lines[0], int(lines[1].split()[3]) * 1024)


# sh function: true when PID $1 runs and is not a zombie (/proc is readable by every user,
# where `kill -0` fails on another user's process).
PROCESS_ALIVE_SH = ('alive() { s=$(sed -n "s/^State:[[:space:]]*\\([A-Z]\\).*/\\1/p" '
                    '"/proc/$1/status" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }')


@dataclass(frozen=True)
class PidfileProcess(Fact):
    """The PID that the pidfile `path` names when that process runs (not a zombie), else None."""

    path: str

    def command(self) -> str:
        return (f"{PROCESS_ALIVE_SH}\n"
                f"pid=$(head -n 1 {shlex.quote(self.path)} 2>/dev/null | tr -cd 0-9)\n"
                'if [ -n "$pid" ] && alive "$pid"; then echo "$pid"; fi; true')

    def parse(self, stdout: str, rc: int) -> int | None:
        text = stdout.strip()
        return int(text) if text.isdigit() else None
