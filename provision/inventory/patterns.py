"""Host patterns as Ansible inventories write them: `name`, `name:port`, `[v6addr]:port`, and
ranges, `gpu[01:16].cluster.local` (zero-padded), `node[1:64:2]` (with a step), `db-[a:f]`
(letters), several in one name (`r[1:2]n[1:3]`: r1n1, r1n2, ... in that order)."""

from __future__ import annotations

import re
import string

# host:port, where the host part has no ':' outside brackets (an IPv6 address has no port here).
_HOSTPORT = re.compile(r"((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)")
_BRACKETED = re.compile(r"\[(.+)\]:([0-9]+)")
_RANGE = re.compile(r"\[([^\]]*)\]")
LETTERS = string.ascii_letters      # a..z then A..Z, the order letter ranges run in


class PatternError(ValueError):
    """A host pattern that names no valid list of hosts."""


def split_port(pattern: str) -> tuple[str, int | None]:
    """(host pattern, port or None): `gpu[1:4]:2222` -> ('gpu[1:4]', 2222)."""
    for regex in (_BRACKETED, _HOSTPORT):
        match = regex.fullmatch(pattern)
        if match:
            return match.group(1), int(match.group(2))
    return pattern, None


def _parse(spec: str) -> list[str] | range | tuple[range, int]:
    """A range's items: letters (a list), numbers (a range), or zero-padded numbers
    (the range and the width)."""
    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise PatternError(f"range [{spec}] must be [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    if not end:
        raise PatternError(f"range [{spec}] has no end")
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not (step_text.isascii() and step_text.isdigit()) or int(step_text) < 1:
        raise PatternError(f"range [{spec}]: the step must be a whole number of at least 1")
    step = int(step_text)
    if len(begin) == 1 and len(end) == 1 and begin in LETTERS and end in LETTERS:
        first, last = LETTERS.index(begin), LETTERS.index(end)
        if first > last:
            raise PatternError(f"range [{spec}] must not run backwards")
        return list(LETTERS[first:last + 1:step])
    if not (begin.isascii() and begin.isdigit() and end.isascii() and end.isdigit()):
        raise PatternError(f"range [{spec}] must run between two numbers or two letters")
    numbers = range(int(begin), int(end) + 1, step)
    if begin[0] == "0" and len(begin) > 1:      # zero-padded: [01:16]
        if len(begin) != len(end):
            raise PatternError(f"range [{spec}]: a zero-padded range needs a begin and an end "
                               "of one width")
        return numbers, len(begin)
    return numbers


def _items(spec: str) -> list[str]:
    parsed = _parse(spec)
    if isinstance(parsed, tuple):
        numbers, width = parsed
        return [str(n).zfill(width) for n in numbers]
    return [str(item) for item in parsed]


def count(pattern: str) -> int:
    """How many names `pattern` expands to, without expanding it (a range of 10^9 hosts is
    refused in microseconds). Raises PatternError where expand() would."""
    total = 1
    for spec in _RANGE.findall(pattern):
        parsed = _parse(spec)
        total *= len(parsed[0] if isinstance(parsed, tuple) else parsed)
    return total


def expand(pattern: str) -> list[str]:
    """Every name a host pattern stands for, in order; [x:y] ranges expanded left to right."""
    if "[" not in pattern:
        return [pattern]
    match = _RANGE.search(pattern)
    if match is None:
        raise PatternError(f"{pattern!r} has a '[' without its ']'")
    head, tail = pattern[:match.start()], pattern[match.end():]
    tails = expand(tail) if "[" in tail else [tail]
    return [head + item + rest for item in _items(match.group(1)) for rest in tails]
