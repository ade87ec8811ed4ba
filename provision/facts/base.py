"""The Fact contract and the batching that gathers many facts in one round trip.

A fact is a frozen dataclass (so it can be de-duplicated and cached): `command()` returns a POSIX
sh snippet whose every interpolated value is quoted with shlex.quote, and `parse(stdout, rc)` is a
pure function of that snippet's output and exit status. Facts never change a host.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fact:
    def command(self) -> str:
        raise NotImplementedError

    def parse(self, stdout: str, rc: int) -> Any:
        raise NotImplementedError


def batch_script(facts: list[Fact], marker: str | None = None) -> tuple[str, str]:
    """One sh script that runs every fact's snippet in a subshell and fences its output.

    Returns (script, marker). A fact's stderr is discarded: parsers read stdout and rc only.
    """
    marker = marker or "@@PROVISION-" + secrets.token_hex(8)
    parts = []
    for index, fact in enumerate(facts):
        parts.append(
            f"( {fact.command()}\n) </dev/null 2>/dev/null; "
            f"printf '\\n{marker} %d %d\\n' {index} $?"
        )
    return "\n".join(parts) + "\n", marker


def split_batch_output(stdout: str, marker: str, count: int) -> list[tuple[str, int]]:
    """Undo batch_script: [(stdout, rc)] for each of `count` facts, in order."""
    results: list[tuple[str, int] | None] = [None] * count
    chunk: list[str] = []
    for line in stdout.splitlines(keepends=True):
        if line.startswith(marker + " "):
            index, rc = (int(x) for x in line.split()[1:3])
            text = "".join(chunk)
            # batch_script prints a newline before each fence; drop it again.
            results[index] = (text[:-1] if text.endswith("\n") else text, rc)
            chunk = []
        else:
            chunk.append(line)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise ValueError(f"fact output truncated: no result for facts {missing}")
    return results  # type: ignore[return-value]
