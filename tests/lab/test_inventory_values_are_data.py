"""Inventory values are data: template syntax in any of them is never compiled, on the
controller or anywhere else, by any command that reads the inventory.

Every jinja2 source the tool compiles passes through jinja2's Parser; the test records each one
while the real commands run in this process against the lab, and counts the sources that hold
the payload. Every setting provision knows (core settings and every role argument) gets the
payload in turn, plus a free-form var that only templates would read.
"""

from __future__ import annotations

from pathlib import Path

import jinja2.parser
import pytest
import yaml

from provision.cli import main
from provision.errors import InventoryError
from provision.inventory import load_inventory
from provision.roles import load_role
from provision.setup import known_settings, role_names

MARK = "pvnj7q"
SMOKE = Path(__file__).resolve().parents[2] / "examples" / "ddp_smoke.py"


def payload(canary: str) -> str:
    # Starts with "/" so path settings accept it; each part would act if it were ever rendered.
    return (f"/x/{MARK}{{{{ lipsum.__globals__.os.popen('touch {canary}').read() }}}}"
            f"{{% if 1 %}}{{{{ 6 * 7 }}}}{{% endif %}}{{# {MARK} #}}")


def value_for(setting, text: str):
    if setting.type == "list":
        return [text]
    if setting.type == "dict":
        return {"PROBE_VAR": text}
    return text


@pytest.fixture
def compiled_sources(monkeypatch) -> list[str]:
    sources: list[str] = []
    original = jinja2.parser.Parser.__init__

    def recording(self, environment, source, *args, **kwargs):
        sources.append(source)
        original(self, environment, source, *args, **kwargs)
    monkeypatch.setattr(jinja2.parser.Parser, "__init__", recording)
    return sources


def run(*args: str) -> int:
    try:
        main.main(args=[str(a) for a in args], prog_name="provision", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_template_syntax_in_every_inventory_value_is_never_evaluated(
        lab, make_inventory, compiled_sources, tmp_path, capsys):
    server = lab.hosts[0]
    base = {"nfs_server": server.address, "nfs_export": "/srv/export"}
    fields = {**known_settings(), "free_form_note": None}
    canary = tmp_path / "PWNED"
    tried = accepted = 0
    checked_alone = [n for n in role_names() if load_role(n).cluster_checks]
    for name, setting in fields.items():
        text = payload(str(canary))
        value = text if setting is None else value_for(setting, text)
        inventory = make_inventory(vars={**base, name: value}, name=f"{name}.yaml")
        tried += 1
        try:
            load_inventory(str(inventory), known_settings())
        except InventoryError as exc:
            # Rejected by validation: the message names the field, and nothing ran.
            assert any(name in p for p in exc.problems), exc.problems
            continue
        accepted += 1
        assert run("inventory", inventory) == 0
        run("check", inventory)
        for role in checked_alone:  # alone, so that no other role's failure skips its checks
            run("check", inventory, "--role", role)
        run("setup", inventory, "--check")
        run("train", "-i", inventory, "--dry-run", str(SMOKE))
        evaluated = [s for s in compiled_sources if MARK in s]
        assert evaluated == [], (name, evaluated)
        assert not canary.exists(), name
    capsys.readouterr()
    # Most values are free text or paths, so most payloads got through validation and were
    # carried through every command; the count keeps the test honest if that ever changes.
    assert tried == len(fields) and accepted >= 20, (tried, accepted)
    assert compiled_sources, "the commands compiled no role template at all: nothing was tested"
