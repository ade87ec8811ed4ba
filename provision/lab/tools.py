"""What the lab needs from the machine (root, programs, overlayfs), checked before any change."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from provision.errors import LabError

# program -> the Debian package that provides it
REQUIRED_PROGRAMS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "setsid": "util-linux",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "useradd": "passwd",
    "usermod": "passwd",
    "chpasswd": "passwd",
    "sudo": "sudo",
}


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the programs, resolved once so every later call uses the checked ones."""

    ip: str
    unshare: str
    nsenter: str
    setsid: str
    sshd: str
    ssh_keygen: str
    useradd: str
    usermod: str
    chpasswd: str
    sudo: str


def find_tools(path: str | None = None) -> Tools:
    """Resolve every required program on PATH, or raise LabError naming what is missing."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces, a bridge and mounts); "
                       "run it as root or with sudo")
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    located = {name: shutil.which(name, path=search) for name in REQUIRED_PROGRAMS}
    found = {name: where for name, where in located.items() if where is not None}
    missing = [name for name in REQUIRED_PROGRAMS if name not in found]
    if missing:
        packages = sorted({REQUIRED_PROGRAMS[name] for name in missing})
        listed = ", ".join(f"{name} (Debian package {REQUIRED_PROGRAMS[name]})" for name in missing)
        raise LabError(f"the lab needs programs that are not on PATH: {listed}; "
                       f"install them with: apt-get install {' '.join(packages)}")
    if not _has_overlayfs():
        raise LabError("the kernel has no overlayfs ('overlay' is not in /proc/filesystems); "
                       "load it with 'modprobe overlay' (kernel option CONFIG_OVERLAY_FS)")
    return Tools(**{name.replace("-", "_"): where for name, where in found.items()})


def _has_overlayfs() -> bool:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return False
    return any(line.split()[-1:] == ["overlay"] for line in text.splitlines())
