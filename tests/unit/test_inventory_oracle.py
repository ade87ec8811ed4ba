"""The oracle: every inventory of the corpus (tests/fixtures/inventories/same/, plus generated
fleets) loads in provision as in ansible-inventory itself: the same hosts in the same order, the
same groups with the same hosts and children, the same merged vars per host. The inventories
under differ/ are where provision deliberately refuses what Ansible loads; DIFFERENCES lists
them, and each is checked: Ansible loads it, provision names the problem and exits 2.

Needs ansible-core (the test extra installs it; provision never imports it). A corpus entry is a
directory holding one inventory file, or a sources.txt listing the -i sources in order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli import main
from provision.inventory import load_inventory

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "inventories"
BIN = Path(sys.executable).parent
ANSIBLE_INVENTORY = shutil.which("ansible-inventory", path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
ANSIBLE = shutil.which("ansible", path=f"{BIN}{os.pathsep}{os.environ['PATH']}")

if not (ANSIBLE_INVENTORY and ANSIBLE):
    pytest.skip("ansible-inventory is not installed: the oracle compares provision with it "
                "(pip install ansible-core, which the test extra brings)",
                allow_module_level=True)

# Where provision refuses what Ansible loads, on purpose: the case, why, and provision's error.
DIFFERENCES = {
    "secret_ssh_pass": ("secrets never live in the inventory",
                        "hosts:2: ansible_ssh_pass: a password is refused in the inventory"),
    "secret_become_pass": ("secrets never live in the inventory",
                           "hosts.yml:5: ansible_become_pass: a password is refused in the "
                           "inventory"),
    "port_out_of_range": ("a port is 1-65535",
                          "hosts.yml:3: ansible_port: must be a port number 1-65535, got 70000"),
    "port_in_pattern_out_of_range": ("a port is 1-65535",
                                     "hosts:1: host 'h1:99999': port must be 1-65535, got 99999"),
    "port_quoted": ("provision's settings are typed: a port is a number",
                    "hosts.yml:3: ansible_port: must be an integer, got '22'"),
    "setting_of_wrong_type": ("provision's settings are typed",
                              "hosts.yml:3: gpus: must be an integer, got 'eight'"),
    "malformed_sha256": ("provision's settings are typed",
                         "hosts:3: conda_installer_sha256: must be a sha256 hex digest"),
    "hostile_host_name": ("a name a shell could make something of is refused",
                          "hosts.yml:3: host name 'h1;reboot' is not valid"),
    "hostile_user": ("a user a shell could make something of is refused",
                     "hosts:1: ansible_user: must be a POSIX user name, got 'root;reboot'"),
    "duplicate_yaml_key": ("Ansible warns and keeps the last; a key written twice is a mistake",
                           "hosts.yml:4: all.hosts: duplicate key 'h1' (first at line 3)"),
    "group_key_typo": ("Ansible warns and skips the key (and its hosts); a typo is an error",
                       "hosts.yml:6: group 'web': unknown key 'host' (did you mean 'hosts'?)"),
    "two_hosts_one_machine": ("two names for one machine would run everything on it twice",
                              "hosts:2: hosts 'a' and 'b' both point at 10.0.0.1:22"),
}


def fleet_yaml(directory: Path) -> Path:
    """500 hosts: 10 racks of 50 in two rooms, vars at every level, group_vars/ and host_vars/."""
    lines = ["all:", "  vars: {site: fra1, ansible_user: ops}", "  children:"]
    for room in range(2):
        lines += [f"    room{room}:", f"      vars: {{room: {room}, power: room{room}}}",
                  "      children:"]
        for rack in range(room * 5, room * 5 + 5):
            lines += [f"        rack{rack:02d}:", f"          vars: {{rack: {rack}}}",
                      "          hosts:"]
            for slot in range(50):
                n = rack * 50 + slot
                extra = ", power: own" if slot == 7 else ""
                lines.append(f"            gpu{n:03d}.fra1: {{ansible_host: 10.1.{n // 250}."
                             f"{n % 250 + 1}, slot: {slot}{extra}}}")
    lines += ["    training:", "      hosts:", "        gpu[000:099].fra1:", "      vars:",
              "        gpus: 8"]
    path = directory / "hosts.yml"
    path.write_text("\n".join(lines) + "\n")
    (directory / "group_vars").mkdir()
    (directory / "group_vars" / "rack03.yml").write_text("power: rack03\nrack_pdu: pdu3\n")
    (directory / "host_vars").mkdir()
    (directory / "host_vars" / "gpu123.fra1.yml").write_text("slot: 99\n")
    return path


def fleet_ini(directory: Path) -> Path:
    """500 hosts in INI: ranges, inline vars, [group:vars], nested [group:children]."""
    lines = []
    for rack in range(10):
        lines += [f"[rack{rack}]", f"node{rack}[01:50].dc ansible_user=ops rack={rack}"]
        lines += [f"[rack{rack}:vars]", f"pdu=pdu{rack}"]
    lines += ["[east:children]", *(f"rack{r}" for r in range(5)),
              "[west:children]", *(f"rack{r}" for r in range(5, 10)),
              "[east:vars]", "side=east", "[west:vars]", "side=west",
              "[training]", "node0[01:20].dc", "node9[40:50].dc", "[training:vars]", "gpus=8"]
    path = directory / "hosts"
    path.write_text("\n".join(lines) + "\n")
    return path


def corpus() -> dict[str, list[str]]:
    cases = {}
    for case in sorted((CORPUS / "same").iterdir()):
        listed = case / "sources.txt"
        if listed.exists():
            cases[case.name] = [str(case / line) for line in listed.read_text().split()]
        else:
            (only,) = [p for p in case.iterdir() if p.is_file()]
            cases[case.name] = [str(only)]
    return cases


CASES = corpus()
GENERATED = {"fleet_500_yaml": fleet_yaml, "fleet_500_ini": fleet_ini}


def run_ansible(sources: list[str], home: Path, order: bool = True) -> dict:
    """ansible-inventory --list (and, for the order of `all`, ansible --list-hosts)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANSIBLE_CONFIG": str(home / "none.cfg"),
           "ANSIBLE_HOME": str(home / ".ansible"), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0", "LC_ALL": "C.UTF-8"}
    args = [arg for source in sources for arg in ("-i", source)]
    listed = subprocess.run([ANSIBLE_INVENTORY, *args, "--list"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, env=env, cwd=home, timeout=120)
    result = {"rc": listed.returncode, "stderr": listed.stderr,
              "list": json.loads(listed.stdout) if listed.returncode == 0 else None}
    if order and listed.returncode == 0:
        hosts = subprocess.run([ANSIBLE, "all", *args, "--list-hosts"], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, env=env, cwd=home,
                               timeout=120)
        assert hosts.returncode == 0, hosts.stderr
        result["order"] = [line.strip() for line in hosts.stdout.splitlines()[1:]]
    return result


def fingerprint(directory: Path, sources: list[str]) -> str:
    """What Ansible's view of a case depends on: ansible-core's version, the files, the -i."""
    digest = hashlib.sha256(importlib.metadata.version("ansible-core").encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps([os.path.relpath(s, directory) for s in sources]).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, request):
    """Every case's sources and Ansible's view of them, computed in parallel once (and kept in
    pytest's cache, keyed by ansible-core's version and the case's files, for the next run)."""
    home = tmp_path_factory.mktemp("ansible-home")
    (home / "none.cfg").write_text("")
    sources, directories = dict(CASES), {name: CORPUS / "same" / name for name in CASES}
    for name, make in GENERATED.items():
        directories[name] = tmp_path_factory.mktemp(name)
        sources[name] = [str(make(directories[name]))]
    differ = {name: [str(p) for p in (CORPUS / "differ" / name).iterdir()]
              for name in DIFFERENCES}
    jobs = [(name, srcs, directories[name], True) for name, srcs in sources.items()] + \
           [(f"differ:{name}", srcs, CORPUS / "differ" / name, False)
            for name, srcs in differ.items()]

    cache = getattr(request.config, "cache", None)      # none under -p no:cacheprovider (CI)

    def view(job):
        name, srcs, directory, order = job
        key = f"provision/ansible-oracle/{fingerprint(directory, srcs)}"
        cached = cache.get(key, None) if cache is not None else None
        if cached is None:
            cached = run_ansible(srcs, home, order)
            if cache is not None:
                cache.set(key, cached)
        return cached

    with ThreadPoolExecutor(4) as pool:
        views = dict(zip([j[0] for j in jobs], pool.map(view, jobs)))
    return sources, differ, views


def unwrap(value):
    """Ansible's JSON marks a value it must never template as {"__ansible_unsafe": value};
    provision templates no inventory value, so every value is that already."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return unwrap(value["__ansible_unsafe"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def normalise(listing: dict) -> tuple[dict, dict]:
    listing = dict(listing)
    meta = listing.pop("_meta")
    return listing, unwrap(meta.get("hostvars", {}))


def provision_json(sources: list[str]) -> tuple[dict, str]:
    done = CliRunner().invoke(main, ["inventory", *sources, "--json"])
    return (json.loads(done.stdout) if done.exit_code == 0 else None), done.output


def levels(groups: dict) -> dict[str, int]:
    """Each host's level: how far below `all` the first group listing it is."""
    level = {"all": 0}
    todo = ["all"]
    while todo:
        name = todo.pop(0)
        for child in groups.get(name, {}).get("children", []):
            if child not in level:
                level[child] = level[name] + 1
                todo.append(child)
    found: dict[str, int] = {}
    for name, group in groups.items():
        for host in group.get("hosts", []):
            found[host] = min(found.get(host, 99), level[name])
    return found


def assert_same_order(ours: list[str], theirs: list[str], groups: dict) -> None:
    """Ansible orders `all` by its own hosts, then its children's, level by level. Within the
    first level its order is defined; from the second level down it follows Python set
    iteration over groups (ansible/inventory/group.py), so there only the levels must agree
    (and each group's own hosts, compared in order with the groups)."""
    if ours == theirs:
        return
    level = levels(groups)
    assert sorted(ours) == sorted(theirs)
    assert [level[h] for h in ours] == sorted(level[h] for h in ours), ours
    assert [h for h in ours if level[h] < 2] == [h for h in theirs if level[h] < 2]
    for depth in set(level.values()):
        assert {h for h in ours if level[h] == depth} == {h for h in theirs if level[h] == depth}


@pytest.mark.parametrize("name", [*CASES, *GENERATED])
def test_provision_loads_it_as_ansible_inventory_does(oracle, name):
    sources, _, views = oracle
    theirs = views[name]
    assert theirs["rc"] == 0, theirs["stderr"]
    ours, output = provision_json(sources[name])
    assert ours is not None, output
    our_groups, our_vars = normalise(ours)
    their_groups, their_vars = normalise(theirs["list"])
    assert our_groups == their_groups
    assert our_vars == their_vars
    order = list(load_inventory(sources[name]).hosts)
    assert_same_order(order, theirs["order"], their_groups)


def test_the_corpus_is_the_size_the_issue_asks_for():
    assert len(CASES) + len(GENERATED) >= 40
    formats = {"ini": 0, "yaml": 0}
    for name in CASES:
        formats["ini" if "ini" in name else "yaml"] += 1
    assert min(formats.values()) >= 10, formats


@pytest.mark.parametrize("name", DIFFERENCES)
def test_a_listed_difference_is_loaded_by_ansible_and_refused_by_provision(oracle, name):
    _, differ, views = oracle
    why, expected = DIFFERENCES[name]
    assert views[f"differ:{name}"]["rc"] == 0, views[f"differ:{name}"]["stderr"]
    done = CliRunner().invoke(main, ["inventory", *differ[name], "--json"])
    assert done.exit_code == 2, (why, done.output)
    assert expected in done.output, (why, done.output)
    assert "Traceback" not in done.output


def test_every_difference_has_its_inventory():
    assert sorted(DIFFERENCES) == sorted(p.name for p in (CORPUS / "differ").iterdir())


def test_the_oracle_notices_a_difference(oracle):
    """The comparison is not vacuous: an inventory provision read differently would fail it."""
    sources, _, views = oracle
    theirs = views["docs_hostvars_ini"]
    ours, _ = provision_json(sources["docs_hostvars_ini"])
    ours["_meta"]["hostvars"]["host1"]["http_port"] = "80"
    assert normalise(ours)[1] != normalise(theirs["list"])[1]
    with pytest.raises(AssertionError):
        assert_same_order(["b", "a"], ["a", "b"], {"all": {"children": ["g"]},
                                                   "g": {"hosts": ["a", "b"]}})

