"""The README's walkthrough role (examples/roles/memlock) on real hosts: a setup with
--roles-dir writes its file, a second changes nothing, and the file says what the role says."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "roles"
LIMITS = "/etc/security/limits.d/90-provision-memlock.conf"


def test_the_example_role_runs_from_its_folder(lab, make_inventory, cli):
    inventory = make_inventory(vars={"memlock_limit": "1048576"})
    try:
        first = cli("setup", inventory, "--roles-dir", EXAMPLES, "--json")
        assert first.returncode == 0, first.stdout + first.stderr
        assert {h["counts"]["changed"] for h in json.loads(first.stdout)["hosts"]} == {1}
        second = cli("setup", inventory, "--roles-dir", EXAMPLES, "--json")
        assert second.returncode == 0, second.stdout + second.stderr
        assert {h["counts"]["changed"] for h in json.loads(second.stdout)["hosts"]} == {0}
        for host in lab.hosts:
            text = lab.sh(host.name, f"cat {LIMITS}").stdout
            assert "* hard memlock 1048576\n" in text, host.name
    finally:
        for host in lab.hosts:
            lab.sh(host.name, f"rm -f {LIMITS}")
