"""Shared unit-test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """HOME in a tmp dir: the tester's ~/.ssh/config and known_hosts never reach the test."""
    monkeypatch.setenv("HOME", str(tmp_path))
