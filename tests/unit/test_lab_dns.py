"""The lab hosts' resolver stub (provision/lab/init.py): DNS answers built from /etc/hosts."""

from __future__ import annotations

import socket
import struct

from provision.lab.init import dns_answer

TABLE = {"lab1": "10.9.0.11", "lab2": "10.9.0.12"}


def query(name: str, qtype: int, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def header(answer: bytes) -> tuple[int, int, int, int]:
    ident, flags, qd, an = struct.unpack("!HHHH", answer[:8])
    return ident, flags & 0x000F, qd, an


def test_a_lab_hosts_address_is_answered():
    q = query("lab2", 1)
    answer = dns_answer(q, TABLE)
    assert header(answer) == (0x1234, 0, 1, 1)
    assert answer.startswith(q[:2]) and answer[12:len(q)] == q[12:]
    assert answer.endswith(socket.inet_aton("10.9.0.12"))


def test_a_reverse_lookup_names_the_host():
    answer = dns_answer(query("12.0.9.10.in-addr.arpa", 12), TABLE)
    assert header(answer)[1:] == (0, 1, 1)
    assert answer.endswith(b"\x04lab2\x00")


def test_unknown_names_and_addresses_are_nxdomain_at_once():
    for name, qtype in (("example.com", 1), ("99.0.9.10.in-addr.arpa", 12)):
        assert header(dns_answer(query(name, qtype), TABLE))[1:] == (3, 1, 0)


def test_a_known_name_without_that_record_type_is_an_empty_answer():
    assert header(dns_answer(query("lab1", 28), TABLE))[1:] == (0, 1, 0)   # AAAA


def test_what_is_not_a_query_gets_no_answer():
    response = dns_answer(query("lab1", 1), TABLE)
    assert dns_answer(response, TABLE) is None
    assert dns_answer(b"\x00" * 5, TABLE) is None
    assert dns_answer(query("lab1", 1)[:-3], TABLE) is None
