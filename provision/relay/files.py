"""SharedFile: a file every host of a run needs, the same bytes on each."""

from __future__ import annotations

import posixpath
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable

SHA256_RE = re.compile(r"[0-9a-f]{64}")
COPIES_DIR = ".provision-relay"
# In every copy's name: two controllers' runs on one host (two trainings side by side staging the
# same script) never share a copy, so neither removes or replaces the one the other is using.
CONTROLLER_TOKEN = secrets.token_hex(4)


@dataclass(frozen=True)
class SharedFile:
    name: str                    # in reports, and in the copy's file name
    sha256: str
    directory: str               # on each host: where the copy is kept for the run
    # The controller's bytes: read when a host first needs them, at most once per run.
    load: Callable[[], bytes] = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if not SHA256_RE.fullmatch(self.sha256) or "/" in self.name or not self.name:
            raise ValueError(f"a shared file needs a plain name and a sha256 hex digest, not "
                             f"{self.name!r} and {self.sha256!r}")

    @property
    def path(self) -> str:
        """Where the command that needs it finds it on every host."""
        return posixpath.join(self.directory, COPIES_DIR,
                              f"{self.sha256[:16]}-{CONTROLLER_TOKEN}-{self.name}")
