"""The commands the relay runs on hosts: the controller's copy arriving on stdin (sh only), and
the host-to-host program (provision/relay/agent.py, run by the system python3)."""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

from provision.connection import as_command

AGENT = (Path(__file__).with_name("agent.py")).read_text()
PART_TRAP = 'rm -f -- "$part"; '


def agent_argv(mode: str, *args: str) -> list[str]:
    # -I -S: none of the host's PYTHON* variables or site packages, and a faster start.
    return ["python3", "-I", "-S", "-c", AGENT, mode, *args]


def _receive(path: str, sha256: str, size: int) -> list[str]:
    """Exactly `size` bytes of stdin, checked, renamed into `path` (private to the user)."""
    p, d = shlex.quote(path), shlex.quote(posixpath.dirname(path))
    # The copies' directory goes with the last copy in it.
    tidy = f"rmdir -- {d} 2>/dev/null || :"
    return [
        "set -e",
        # The directories above with the usual mode (the prefix's parent, say); ours private.
        f"mkdir -p -- {shlex.quote(posixpath.dirname(posixpath.dirname(path)))}",
        "mask=$(umask)",
        "umask 077",
        f"mkdir -p -- {d}",
        # Parts and copies that nobody holds (a writer or keeper holds a flock on its own):
        # left by an interrupted transfer or a host killed mid-run. Another run's stay.
        f"for stale in {d}/*; do",
        '  [ -f "$stale" ] && flock -n "$stale" rm -f -- "$stale" || :',
        "done",
        f"part={p}.part-$$",
        f"trap {shlex.quote(PART_TRAP + tidy)} EXIT",
        # Ours, locked, and still the one at its name: a run clearing stale parts (or taking the
        # directory with its last copy) just now may have beaten us to it; then again.
        "for try in 1 2 3; do",
        f"  mkdir -p -- {d}",
        # `command`: a failed redirection of exec ends the shell otherwise (the directory gone).
        '  if { command exec 8>> "$part"; } 2>/dev/null; then',
        "    flock 8",
        '    [ "$part" -ef /dev/fd/8 ] && break',
        "  fi",
        '  [ "$try" -lt 3 ] || { echo "cannot write $part" >&2; exit 1; }',
        "done",
        f"head -c {size} >&8",
        "got=$(sha256sum < \"$part\" | cut -d' ' -f1)",
        f"if [ \"$got\" != {shlex.quote(sha256)} ]; then",
        f"  echo \"the copy received has sha256 $got on this host, expected {sha256}\" >&2",
        "  exit 1",
        "fi",
        # Its lock goes with it (fd 8 stays open): the copy is held while this runs.
        f"mv -f -- \"$part\" {p}",
        'umask "$mask"',
        f"trap {shlex.quote(f'rm -f -- {p}; {tidy}')} EXIT",
    ]


def keep_script(path: str, sha256: str, size: int) -> str:
    """sh: receive the file, say so, then keep it for as long as stdin stays open."""
    return "\n".join([
        *_receive(path, sha256, size),
        "trap 'exit 1' HUP INT TERM",
        f"echo '{{\"ok\": {size}}}'",
        "cat > /dev/null",
    ]) + "\n"


def direct_script(path: str, sha256: str, size: int, command: list[str] | str) -> str:
    """sh: receive the file, run `command` (which reads it at `path`), then remove it."""
    return "\n".join([*_receive(path, sha256, size), as_command(command)]) + "\n"
