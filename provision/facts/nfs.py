"""Facts about mounts, and the fstab and exports line formats (pure parsing and rendering)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from provision.facts.base import Fact


@dataclass(frozen=True)
class MountInfo:
    target: str
    source: str
    fstype: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class MountPoint:
    """What is at a would-be mount point: the live mount (if any), else the path's kind."""

    mount: MountInfo | None
    kind: str                      # "mounted", "directory", "missing" or "other"


@dataclass(frozen=True)
class MountState(Fact):
    """The mount on `path` from the kernel's table, without touching the mounted filesystem.

    A hung NFS server makes any stat below the mount hang, so the path is only stat'ed when
    nothing is mounted on it.
    """

    path: str

    def command(self) -> str:
        p = shlex.quote(self.path)
        # findmnt exits 1 when nothing is mounted there; any other failure is an error.
        return (f"findmnt -J -o TARGET,SOURCE,FSTYPE,OPTIONS --mountpoint {p}; rc=$?; "
                f"[ $rc -eq 1 ] || exit $rc; "
                f"if [ -d {p} ] && [ ! -L {p} ]; then echo directory; "
                f"elif [ -e {p} ] || [ -L {p} ]; then echo other; else echo missing; fi")

    def parse(self, stdout: str, rc: int) -> MountPoint:
        text = stdout.strip()
        if text in ("directory", "missing", "other"):
            return MountPoint(None, text)
        if rc != 0 or not text.startswith("{"):
            raise ValueError(f"cannot read the mount table for {self.path}: exit code {rc}")
        return MountPoint(parse_findmnt_json(text)[-1], "mounted")


def parse_findmnt_json(text: str) -> list[MountInfo]:
    """Entries of `findmnt -J -o TARGET,SOURCE,FSTYPE,OPTIONS`, stacked mounts last on top."""
    return [MountInfo(fs["target"], fs["source"], fs["fstype"],
                      tuple(o for o in (fs.get("options") or "").split(",") if o))
            for fs in json.loads(text)["filesystems"]]


# -- /etc/fstab ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FstabEntry:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]
    dump: int = 0
    passno: int = 0

    def line(self) -> str:
        return " ".join((fstab_escape(self.source), fstab_escape(self.target), self.fstype,
                         ",".join(self.options) or "defaults", str(self.dump), str(self.passno)))

    def same_as(self, other: FstabEntry) -> bool:
        """Equal for mount(8): option order and repeats do not matter."""
        return (self.source, self.target, self.fstype, set(self.options), self.dump,
                self.passno) == (other.source, other.target, other.fstype, set(other.options),
                                 other.dump, other.passno)


def fstab_escape(field: str) -> str:
    """fstab(5) octal escapes for the characters that would split or end a field."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\#" else c for c in field)


def fstab_unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_fstab_line(line: str) -> FstabEntry | None:
    """The entry on one fstab line; None for blank lines, comments and lines mount(8) ignores."""
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith("#"):
        return None

    def number(index: int) -> int:
        return int(fields[index]) if len(fields) > index and fields[index].isdigit() else 0
    return FstabEntry(fstab_unescape(fields[0]), fstab_unescape(fields[1]),
                      fields[2] if len(fields) > 2 else "auto",
                      tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",),
                      number(4), number(5))


# -- /etc/exports ----------------------------------------------------------------------------------

def exports_path(line: str) -> str | None:
    """The exported directory of an exports(5) line; None for blank lines and comments."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith('"'):
        return text[1:].split('"', 1)[0]
    return text.split()[0]
