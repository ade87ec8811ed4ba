"""load_inventory and Inventory.select: the Ansible shape, precedence, aliases and every check."""

from __future__ import annotations

import json
import textwrap

import pytest

from provision.errors import InventoryError
from provision.inventory import load_inventory


@pytest.fixture(autouse=True)
def no_user_ssh_config(tmp_path, monkeypatch):
    """The inventory consults ~/.ssh/config; keep the developer's own out of the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "inventory.yml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path
    return write


def problems(path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    return info.value.problems


NESTED = """
all:
  vars:
    level: all
    from_all: 1
    user: deploy
  hosts:
    bastion.example.com:
  children:
    dc1:
      vars:
        level: dc1
        from_dc1: 1
      children:
        rack1:
          vars:
            level: rack1
            from_rack1: 1
          children:
            gpu:
              vars:
                level: gpu
              hosts:
                g1:
                  ansible_host: 10.0.0.11
                  level: host
                g2:
                  ansible_host: 10.0.0.12
    cpu:
      hosts:
        c1:
          address: 10.0.1.1
"""


def test_nested_children_to_depth_three(write):
    inv = load_inventory(write(NESTED))
    # Ansible's order: all's own hosts, then its children's, level by level (c1 is one level
    # below all, g1 and g2 three).
    assert list(inv.hosts) == ["bastion.example.com", "c1", "g1", "g2"]
    assert inv.groups["gpu"].hosts == ["g1", "g2"]
    assert inv.groups["rack1"].hosts == ["g1", "g2"]
    assert inv.groups["dc1"].hosts == ["g1", "g2"]
    assert inv.groups["dc1"].children == ["rack1"]
    assert inv.groups["all"].hosts == ["bastion.example.com", "c1", "g1", "g2"]
    assert inv.groups["all"].children == ["ungrouped", "dc1", "cpu"]
    assert inv.groups["ungrouped"].hosts == ["bastion.example.com"]
    assert (inv.groups["dc1"].depth, inv.groups["rack1"].depth, inv.groups["gpu"].depth) == (1, 2, 3)
    assert inv.hosts["g1"].groups == ("all", "dc1", "rack1", "gpu")
    assert inv.hosts["c1"].groups == ("all", "cpu")
    assert inv.hosts["bastion.example.com"].groups == ("all", "ungrouped")


def test_precedence_all_then_outer_then_inner_group_then_host(write):
    inv = load_inventory(write(NESTED))
    g1, g2, c1 = inv.hosts["g1"], inv.hosts["g2"], inv.hosts["c1"]
    assert g1.vars["level"] == "host"
    assert g2.vars["level"] == "gpu"
    assert c1.vars["level"] == "all"
    assert inv.hosts["bastion.example.com"].vars["level"] == "all"
    assert {k: g2.vars[k] for k in ("from_all", "from_dc1", "from_rack1")} == \
        {"from_all": 1, "from_dc1": 1, "from_rack1": 1}
    assert "from_dc1" not in c1.vars
    assert g1.user == c1.user == "deploy"


def test_host_without_dots_uses_its_name_when_it_is_an_address(write):
    inv = load_inventory(write(NESTED))
    assert inv.hosts["bastion.example.com"].address == "bastion.example.com"
    assert inv.hosts["g1"].address == "10.0.0.11"


def test_siblings_at_the_same_depth_merge_by_group_name(write):
    # Ansible: groups at one depth are applied in name order, so the later name wins,
    # whatever order the file lists them in.
    inv = load_inventory(write("""
        all:
          children:
            zeta:
              vars: {colour: zeta, only_zeta: z}
              hosts:
                h1: {address: 10.0.0.1}
            alpha:
              vars: {colour: alpha, only_alpha: a}
              hosts:
                h1:
                h2: {address: 10.0.0.2}
            beta:
              vars: {colour: beta}
              hosts:
                h2:
    """))
    assert inv.hosts["h1"].vars["colour"] == "zeta"
    assert inv.hosts["h1"].vars["only_zeta"] == "z" and inv.hosts["h1"].vars["only_alpha"] == "a"
    assert inv.hosts["h2"].vars["colour"] == "beta"
    assert inv.hosts["h1"].groups == ("all", "alpha", "zeta")


def test_deeper_group_beats_shallower_one_with_a_later_name(write):
    inv = load_inventory(write("""
        all:
          children:
            zz_top:
              vars: {v: top}
              children:
                aa_inner:
                  vars: {v: inner}
                  hosts:
                    h1: {address: 10.0.0.1}
    """))
    assert inv.hosts["h1"].vars["v"] == "inner"


def test_ansible_aliases(write):
    inv = load_inventory(write("""
        all:
          hosts:
            n1:
              ansible_host: 192.0.2.7
              ansible_user: ubuntu
              ansible_port: 2222
              ansible_ssh_private_key_file: /keys/id ed25519
              ansible_become: true
            n2:
              address: 192.0.2.8
    """))
    n1, n2 = inv.hosts["n1"], inv.hosts["n2"]
    assert (n1.address, n1.user, n1.port, n1.key_file, n1.become) == \
        ("192.0.2.7", "ubuntu", 2222, "/keys/id ed25519", True)
    assert n1.vars["address"] == "192.0.2.7" and "ansible_host" not in n1.vars
    assert (n2.port, n2.user, n2.key_file, n2.become) == (22, None, None, False)


def test_alias_and_own_name_both_set(write):
    found = problems(write("""
        all:
          hosts:
            n1: {ansible_host: 10.0.0.1, address: 10.0.0.2}
            n2: {ansible_host: 10.0.0.3, ansible_ssh_host: 10.0.0.3}
    """))
    # Two names for one setting, two values: which one was meant? The same value is fine.
    assert len(found) == 1
    assert "address and its alias ansible_host both set 'address', to '10.0.0.1' and " \
           "'10.0.0.2'" in found[0]


def test_unknown_vars_are_kept_and_other_ansible_vars_ignored_quietly(write):
    inv = load_inventory(write("""
        all:
          vars:
            foo: bar
            ansible_python_interpreter: /usr/bin/python3
          hosts:
            n1: {address: 10.0.0.1, nested: {a: [1, 2]}}
    """))
    assert inv.hosts["n1"].vars["foo"] == "bar"
    assert inv.hosts["n1"].vars["nested"] == {"a": [1, 2]}
    assert inv.hosts["n1"].vars["ansible_python_interpreter"] == "/usr/bin/python3"


def test_a_near_miss_of_a_known_setting_is_a_warning_with_a_hint(write):
    # Any var is legal in an Ansible inventory (`users`, `ports`, `nfs_exports` for another
    # role...): a name close to one of ours is a hint, never a reason to refuse the inventory.
    path = write("""
        all:
          hosts:
            n1:
              address: 10.0.0.1
              ssh_kye: /k
    """)
    inv = load_inventory(path)
    assert inv.warnings == [f"{path}:5: unknown setting 'ssh_kye' (did you mean 'ssh_key'?); "
                            "kept as a plain var"]
    assert inv.hosts["n1"].vars["ssh_kye"] == "/k" and inv.hosts["n1"].key_file is None


def test_all_problems_reported_at_once_with_file_line_and_key(write):
    path = write("""
        all:
          hosts:
            n1:
              address: 10.0.0.1
              port: 0
            n2:
              address: 10.0.0.2
              port: 70000
              gpus: -1
            n3:
              address: 10.0.0.3
              gpus: "8"
    """)
    found = problems(path)
    assert found == [
        f"{path}:5: port: must be a port number 1-65535, got 0",
        f"{path}:8: port: must be a port number 1-65535, got 70000",
        f"{path}:9: gpus: must be at least 0, got -1",
        f"{path}:12: gpus: must be an integer, got '8'",
    ]


def test_errors_in_group_vars_name_the_alias_used(write):
    path = write("""
        all:
          vars:
            ansible_port: "22"
          children:
            g:
              vars:
                ansible_user: "root; rm -rf /"
              hosts:
                n1.example.com:
    """)
    found = problems(path)
    assert f"{path}:3: ansible_port: must be an integer, got '22'" in found
    assert any(p.startswith(f"{path}:7: ansible_user: must be a POSIX user name") for p in found)
    assert len(found) == 2


def test_duplicate_key_in_a_mapping(write):
    path = write("""
        all:
          hosts:
            n1:
              address: 10.0.0.1
              address: 10.0.0.9
    """)
    assert problems(path) == [f"{path}:5: n1 vars: duplicate key 'address' (first at line 4)"]


def test_duplicate_host_in_one_group(write):
    path = write("""
        all:
          hosts:
            n1: {address: 10.0.0.1}
            n1: {address: 10.0.0.1}
    """)
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:4: all.hosts: duplicate key 'n1'")


def test_host_vars_set_twice_the_later_wins_as_in_ansible(write):
    inv = load_inventory(write("""
        all:
          children:
            a:
              hosts:
                n1: {address: 10.0.0.1, port: 22, note: a}
            b:
              hosts:
                n1: {port: 2222}
    """))
    assert (inv.hosts["n1"].port, inv.hosts["n1"].vars["note"]) == (2222, "a")


def test_same_host_vars_repeated_identically_is_fine(write):
    inv = load_inventory(write("""
        all:
          children:
            a:
              hosts:
                n1: {address: 10.0.0.1, port: 2200}
            b:
              hosts:
                n1: {port: 2200}
    """))
    assert inv.hosts["n1"].port == 2200 and inv.hosts["n1"].groups == ("all", "a", "b")


def test_two_hosts_at_one_address_and_port(write):
    path = write("""
        all:
          hosts:
            n1: {address: 10.0.0.1}
            n2: {address: 10.0.0.1}
            n3: {address: 10.0.0.1, port: 2222}
    """)
    inv = load_inventory(path)      # Ansible allows two names for a machine...
    with pytest.raises(InventoryError) as info:
        inv.select(None)            # ...working on both would run everything on it twice
    assert info.value.problems == [f"{path}:4: hosts 'n1' and 'n2' both point at 10.0.0.1:22"]
    assert [h.name for h in inv.select("n1,n3")] == ["n1", "n3"]


def test_malformed_yaml_names_the_line(write):
    path = write("""
        all:
          hosts:
            n1: {address: 10.0.0.1
            n2: {}
    """)
    found = problems(path)
    assert len(found) == 1
    assert found[0].startswith(f"{path}:4: malformed YAML:")


def test_empty_file(write):
    path = write("")
    assert problems(path) == [f"{path}: inventory is empty; expected 'all:' with 'hosts:'"]


def test_file_without_hosts(write):
    path = write("all:\n  vars: {foo: 1}\n")
    assert problems(path) == [f"{path}: no hosts defined; expected 'all:' with 'hosts:'"]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yml"
    assert problems(path) == [f"{path}: cannot read inventory: No such file or directory"]


def test_top_level_must_be_a_mapping(write):
    path = write("- a\n- b\n")
    assert problems(path) == [f"{path}:1: inventory must be a mapping"]


def test_unknown_group_key_has_a_hint(write):
    path = write("""
        all:
          host:
            n1: {address: 10.0.0.1}
    """)
    found = problems(path)
    assert found[0] == f"{path}:2: group 'all': unknown key 'host' (did you mean 'hosts'?)"


def test_a_host_without_an_address_is_reached_by_its_name(write):
    inv = load_inventory(write("""
        all:
          hosts:
            gpu01:
            gpu02: {ansible_host: 10.0.0.2}
    """))
    assert (inv.hosts["gpu01"].address, inv.hosts["gpu01"].ssh_alias) == ("gpu01", None)
    assert inv.hosts["gpu02"].address == "10.0.0.2"


def test_host_address_from_ssh_config(write, no_user_ssh_config):
    ssh = no_user_ssh_config / ".ssh"
    ssh.mkdir()
    (ssh / "config").write_text("Host gpu01\n  HostName 198.51.100.4\n")
    inv = load_inventory(write("all:\n  hosts:\n    gpu01:\n"))
    assert inv.hosts["gpu01"].address == "198.51.100.4"


HOSTILE = ["; rm -rf /", "$(id)", "`id`", "a'b", 'a"b', "a b", "a\nb",
           "faults2\n", "a\x00b", "a{{ 6 * 7 }}", "a{% raw %}"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_host_names_are_rejected(write, bad):

    path = write(f"all:\n  hosts:\n    {json.dumps(bad)}: {{address: 10.0.0.1}}\n")
    found = problems(path)
    assert any(f"host name {bad!r} is not valid" in p for p in found), found


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("field,message", [
    ("ansible_host", "must be a host name or IP address"),
    ("address", "must be a host name or IP address"),
    ("ansible_user", "must be a POSIX user name"),
    ("user", "must be a POSIX user name"),
])
def test_hostile_addresses_and_users_are_rejected(write, bad, field, message):

    path = write(f"all:\n  hosts:\n    n1.example.com:\n      {field}: {json.dumps(bad)}\n")
    found = problems(path)
    assert found == [f"{path}:4: {field}: {message}, got {bad!r}"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_group_names_are_rejected(write, bad):

    top = write(f"{json.dumps(bad)}:\n  hosts:\n    n1: {{address: 10.0.0.1}}\n", "top.yml")
    assert any(f"group name {bad!r} is not valid" in p for p in problems(top))
    child = write(f"all:\n  children:\n    {json.dumps(bad)}:\n      hosts:\n"
                  f"        n1: {{address: 10.0.0.1}}\n", "child.yml")
    assert any(f"group name {bad!r} is not valid" in p for p in problems(child))


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_free_form_vars_are_kept_verbatim(write, bad):

    inv = load_inventory(write(f"all:\n  vars:\n    motd: {json.dumps(bad)}\n  hosts:\n"
                               f"    n1: {{address: 10.0.0.1, note: {json.dumps(bad)}}}\n"))
    assert inv.hosts["n1"].vars["motd"] == bad
    assert inv.hosts["n1"].vars["note"] == bad


SELECT = """
all:
  hosts:
    head: {address: 10.0.0.1}
  children:
    gpu:
      hosts:
        g2: {address: 10.0.0.3}
        g1: {address: 10.0.0.2}
    cpu:
      hosts:
        c1: {address: 10.0.0.4}
    spare:
"""


def test_select_everything_by_default(write):
    inv = load_inventory(write(SELECT))
    assert [h.name for h in inv.select(None)] == ["head", "g2", "g1", "c1"]
    assert [h.name for h in inv.select("")] == ["head", "g2", "g1", "c1"]


def test_select_hosts_and_groups_in_inventory_order(write):
    inv = load_inventory(write(SELECT))
    assert [h.name for h in inv.select("c1, gpu")] == ["g2", "g1", "c1"]
    assert [h.name for h in inv.select("g1,head,g1")] == ["head", "g1"]
    assert [h.name for h in inv.select("all")] == ["head", "g2", "g1", "c1"]


def test_select_unknown_names_all_reported_with_hints(write):
    inv = load_inventory(write(SELECT))
    with pytest.raises(InventoryError) as info:
        inv.select("gpus,g1,nothing-like-it")
    assert info.value.problems == [
        "--limit: no host or group named 'gpus' (did you mean 'gpu'?)",
        "--limit: no host or group named 'nothing-like-it'",
    ]


def test_select_empty_group(write):
    inv = load_inventory(write(SELECT))
    assert inv.groups["spare"].hosts == []
    with pytest.raises(InventoryError) as info:
        inv.select("spare")
    assert info.value.problems == ["--limit: group 'spare' has no hosts"]


@pytest.mark.parametrize("text,expected", [
    ("x: !!python/object:os.system ls", "x: the tag !!python/object:os.system is not allowed"),
    ("x: !!python/name:os.system", "x: the tag !!python/name:os.system is not allowed"),
    ("x: !custom value", "x: the tag !custom is not allowed"),
    ("x: !!int abc", "x: 'abc' is not a valid !!int"),
    ("x: !!float abc", "x: 'abc' is not a valid !!float"),
    ("x: !!timestamp zz", "x: 'zz' is not a valid !!timestamp"),
    ("? !!python/name:os.system k\n      : 1", "key: the tag !!python/name:os.system"),
])
def test_a_value_the_safe_loader_cannot_read_is_a_problem_at_its_line(write, text, expected):
    path = write("all:\n  hosts:\n    n1:\n      address: 10.0.0.1\n      " + text + "\n")
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:5: ") and expected in found[0], found


def test_unreadable_values_elsewhere_do_not_hide_the_others(write):
    path = write("""
        all:
          vars: {a: !!int abc, b: ok}
          hosts:
            n1: {address: 10.0.0.1, port: 0, c: !!float x}
    """)
    found = problems(path)
    assert found == [f"{path}:2: a: 'abc' is not a valid !!int",
                     f"{path}:4: port: must be a port number 1-65535, got 0",
                     f"{path}:4: c: 'x' is not a valid !!float"]


SHA = "a098a5b1581d8fd078c430b82e27106602223e335efef708a124e723814d120c"


@pytest.mark.parametrize("bad", ["abc", SHA[:-1], SHA + "0", "g" * 64, SHA + "\n", f" {SHA}",
                                 "sha256:" + SHA, 1234])
def test_a_malformed_conda_installer_sha256_is_an_inventory_error(write, bad):
    # It used to surface only at the conda task, after the other roles had changed the hosts.
    from provision.setup import known_settings
    path = write(f"all:\n  vars:\n    conda_installer_sha256: {json.dumps(bad)}\n"
                 "  hosts:\n    n1: {address: 10.0.0.1}\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path, known_settings())
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(f"{path}:3: conda_installer_sha256: must be ")


@pytest.mark.parametrize("good", [SHA, SHA.upper(), ""])
def test_a_well_formed_or_empty_conda_installer_sha256_loads(write, good):
    from provision.setup import known_settings
    path = write(f"all:\n  vars:\n    conda_installer_sha256: {json.dumps(good)}\n"
                 "  hosts:\n    n1: {address: 10.0.0.1}\n")
    assert load_inventory(path, known_settings()).hosts["n1"].vars["conda_installer_sha256"] == good


def test_an_alias_bomb_names_the_line_where_the_aliases_multiply_past_the_limit(write):
    levels = "abcdefgh"
    lines = [f"    {name}: &{name} [{', '.join([f'*{levels[i - 1]}' if i else 'x'] * 10)}]"
             for i, name in enumerate(levels)]
    path = write("all:\n  vars:\n" + "\n".join(lines) + "\n  hosts:\n    n1: {address: 10.0.0.1}\n")
    found = problems(path)
    # Level d (line 6) stands for ~10^4 nodes, under the limit; level e (line 7), ~10^5, is not.
    assert len(found) == 1 and found[0].startswith(f"{path}:7: YAML aliases expand "), found
