"""Shared unit-test fixtures."""

from __future__ import annotations

import os

import pytest

from provision.train.config import RUN_ID_VAR


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """HOME in a tmp dir: the tester's ~/.ssh/config and known_hosts never reach the test."""
    monkeypatch.setenv("HOME", str(tmp_path))


def _marked_pids(run_id: str) -> set[int]:
    """Live processes whose environment holds exactly RUN_ID_VAR=run_id, read from /proc here
    (independently of the scripts under test); zombies count as gone."""
    wanted = f"{RUN_ID_VAR}={run_id}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if wanted in environ and state != "Z":
            found.add(int(entry))
    return found


@pytest.fixture
def marked_pids():
    """marked_pids(run_id): the job's live processes on this machine."""
    return _marked_pids
