"""One line per shared file of a run: how its copies reached the hosts."""

from __future__ import annotations


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def describe(entry: dict) -> str:
    """'NAME (SIZE) to N host(s): K from the controller (BYTES sent), M host to host'."""
    hosts = len(entry["from_controller"]) + len(entry["from_peers"])
    size = f" ({megabytes(entry['bytes'])})" if entry["bytes"] is not None else ""
    line = (f"{entry['file']}{size} to {hosts} host(s): {len(entry['from_controller'])} "
            f"from the controller ({megabytes(entry['controller_bytes'])} sent), "
            f"{len(entry['from_peers'])} host to host")
    if entry["problems"]:
        line += f"; {len(entry['problems'])} transfer(s) failed and were redone"
    return line
