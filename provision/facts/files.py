"""Facts about paths on a host."""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

from provision.facts.base import Fact

# Files larger than this are compared by checksum only; their content is not fetched.
MAX_CONTENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class PathInfo:
    kind: str            # "file", "directory", "link", "other"
    mode: str            # octal, e.g. "644"
    owner: str
    group: str
    size: int
    sha256: str | None = None
    content: bytes | None = None


@dataclass(frozen=True)
class PathState(Fact):
    """What is at `path` (None when nothing is), with content for small regular files."""

    path: str
    with_content: bool = False

    def command(self) -> str:
        p = shlex.quote(self.path)
        content = (f"; if [ \"$(stat -c %s {p})\" -le {MAX_CONTENT_BYTES} ]; then "
                   f"base64 -w0 < {p}; fi" if self.with_content else "")
        return (f"[ -e {p} ] || [ -L {p} ] || exit 0; stat -c '%F|%a|%U|%G|%s' -- {p}; "
                f"if [ -f {p} ] && [ ! -L {p} ]; then sha256sum < {p} | cut -d' ' -f1{content}; fi")

    def parse(self, stdout: str, rc: int) -> PathInfo | None:
        lines = stdout.splitlines()
        if rc != 0:
            raise ValueError(f"cannot inspect {self.path}: exit code {rc}")
        if not lines:
            return None
        kind_text, mode, owner, group, size = lines[0].split("|")
        kind = {"regular file": "file", "regular empty file": "file", "directory": "directory",
                "symbolic link": "link"}.get(kind_text, "other")
        sha = lines[1] if len(lines) > 1 else None
        content = base64.b64decode(lines[2]) if len(lines) > 2 else (
            b"" if self.with_content and kind == "file" and int(size) == 0 else None)
        return PathInfo(kind, mode, owner, group, int(size), sha, content)


@dataclass(frozen=True)
class CommandStatus(Fact):
    """Exit status of a read-only check command (the `unless` guard of a command task)."""

    script: str

    def command(self) -> str:
        return self.script

    def parse(self, stdout: str, rc: int) -> int:
        return rc
