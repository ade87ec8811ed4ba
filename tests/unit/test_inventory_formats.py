"""The inventory shapes Ansible reads besides one YAML file: INI (told apart by content), host
ranges, group_vars/ and host_vars/, directories, several sources, host lists; how their values
are typed, and every problem with its file:line and field. Data-driven: each table is a case
per row. (tests/unit/test_inventory_oracle.py checks the same shapes against Ansible itself.)"""

from __future__ import annotations

import os
import shlex
import textwrap
import time

import pytest

from provision.errors import InventoryError
from provision.inventory import load_inventory
from provision.inventory.ini_inventory import ini_value
from provision.inventory.patterns import PatternError, count, expand, split_port


@pytest.fixture(autouse=True)
def no_user_ssh_config(isolated_home):
    """The inventory consults ~/.ssh/config; keep the developer's own out of the tests."""


@pytest.fixture
def tree(tmp_path):
    """tree({"relative/path": text, ...}) writes the files; returns the directory."""
    def tree(files: dict[str, str | bytes]):
        for name, content in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(textwrap.dedent(content).lstrip("\n"))
        return tmp_path
    return tree


def problems(*sources) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory([str(s) for s in sources])
    return info.value.problems


# -- host patterns --------------------------------------------------------------------------
@pytest.mark.parametrize("pattern,names", [
    ("gpu01", ["gpu01"]),
    ("gpu[01:04].cluster.local", ["gpu01.cluster.local", "gpu02.cluster.local",
                                  "gpu03.cluster.local", "gpu04.cluster.local"]),
    ("node[1:9:2]", ["node1", "node3", "node5", "node7", "node9"]),
    ("node[8:11]", ["node8", "node9", "node10", "node11"]),
    ("p[001:120:50]", ["p001", "p051", "p101"]),
    ("db-[a:f]", ["db-a", "db-b", "db-c", "db-d", "db-e", "db-f"]),
    ("r-[A:C]", ["r-A", "r-B", "r-C"]),
    ("x[y:B]", ["xy", "xz", "xA", "xB"]),          # Ansible's letters: a..z then A..Z
    ("n[:2]", ["n0", "n1", "n2"]),
    ("r[1:2]n[a:b]", ["r1na", "r1nb", "r2na", "r2nb"]),
    ("10.0.[0:1].[1:2]", ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.2"]),
    ("n[5:1]", []),                                  # Ansible: no host (a warning here)
])
def test_host_ranges_expand_in_order(pattern, names):
    assert expand(pattern) == names
    assert count(pattern) == len(names)


@pytest.mark.parametrize("pattern,message", [
    ("n[1]", "must be [begin:end] or [begin:end:step]"),
    ("n[1:]", "has no end"),
    ("n[1:4:0]", "the step must be a whole number of at least 1"),
    ("n[1:4:x]", "the step must be a whole number of at least 1"),
    ("n[01:100]", "a zero-padded range needs a begin and an end of one width"),
    ("n[f:a]", "must not run backwards"),
    ("n[a:9]", "must run between two numbers or two letters"),
    ("n[aa:bb]", "must run between two numbers or two letters"),
    ("n[1:2", "has a '[' without its ']'"),
])
def test_bad_ranges(pattern, message):
    with pytest.raises(PatternError, match=message.replace("[", r"\[")):
        expand(pattern)


@pytest.mark.parametrize("pattern,split", [
    ("gpu01", ("gpu01", None)),
    ("gpu01:2222", ("gpu01", 2222)),
    ("gpu[01:04]:2222", ("gpu[01:04]", 2222)),
    ("192.0.2.1:22", ("192.0.2.1", 22)),
    ("2001:db8::1", ("2001:db8::1", None)),          # no port without brackets
    ("[2001:db8::1]:2222", ("2001:db8::1", 2222)),
])
def test_a_port_after_the_host(pattern, split):
    assert split_port(pattern) == split


def test_a_huge_range_is_refused_without_being_expanded(tree):
    root = tree({"hosts": "n[1:1000000000]\n"})
    start = time.monotonic()
    found = problems(root / "hosts")
    assert time.monotonic() - start < 1
    assert found == [f"{root / 'hosts'}:1: host pattern 'n[1:1000000000]' names 1,000,000,000 "
                     "hosts; an inventory may name at most 100,000"]


# -- INI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("8", 8), ("-3", -3), ("1.5", 1.5), ("0x10", 16), ("1e3", 1000.0), ("True", True),
    ("None", None), ("[1, 2]", [1, 2]), ("(1, 2)", [1, 2]), ("{'a': [1]}", {"a": [1]}),
    ("'quoted'", "quoted"), ('"2"', "2"), ("true", "true"), ("yes", "yes"), ("010", "010"),
    ("10.0.0.1", "10.0.0.1"), ("/usr/bin/python3", "/usr/bin/python3"), ("a b", "a b"),
    ("", ""), ("...", "..."), ("1j", "1j"), ("b'x'", "x"), ("__import__('os')", "__import__('os')"),
    ("{{ lookup('pipe', 'id') }}", "{{ lookup('pipe', 'id') }}"), ("9" * 5000, "9" * 5000),
    ("[" * 100_000 + "]" * 100_000, "[" * 100_000 + "]" * 100_000),
])
def test_ini_values_are_typed_as_ansible_types_them(text, value):
    # Literals are parsed (ast.literal_eval), never run: what is not a literal is its text.
    assert ini_value(text) == value


INI = """
# hosts before any section are ungrouped
bastion ansible_host=192.0.2.1
[gpu]
gpu[01:03] ansible_user=ubuntu gpus=8 note="two words" # a comment
gpu04:2222 ansible_become=true
[gpu:vars]
nccl_socket_ifname=eth0
rack='r1'
[training:children]
gpu
[training:vars]
rendezvous_port=29500
"""


def test_an_ini_inventory(tree):
    inv = load_inventory(tree({"hosts": INI}) / "hosts")
    assert list(inv.hosts) == ["bastion", "gpu01", "gpu02", "gpu03", "gpu04"]
    assert inv.groups["training"].children == ["gpu"]
    assert inv.groups["training"].hosts == ["gpu01", "gpu02", "gpu03", "gpu04"]
    assert inv.groups["ungrouped"].hosts == ["bastion"]
    gpu01, gpu04 = inv.hosts["gpu01"], inv.hosts["gpu04"]
    assert (gpu01.address, gpu01.user, gpu01.port, gpu01.become) == ("gpu01", "ubuntu", 22, False)
    assert (gpu04.address, gpu04.port, gpu04.become) == ("gpu04", 2222, True)
    assert gpu01.vars["gpus"] == 8 and gpu01.vars["note"] == "two words"
    assert gpu01.vars["rack"] == "r1" and gpu01.vars["rendezvous_port"] == 29500
    assert inv.hosts["bastion"].address == "192.0.2.1"
    # ansible_become=true is Ansible's boolean: provision reads True, the var shows as written.
    assert gpu04.ansible_vars["ansible_become"] == "true" and gpu04.ansible_vars["ansible_port"] == 2222


@pytest.mark.parametrize("name", ["hosts", "hosts.ini", "hosts.yml", "inventory.yaml"])
def test_ini_and_yaml_are_told_apart_by_content_not_by_name(tree, name):
    ini = tree({f"ini/{name}": "[web]\nw1\n"}) / "ini" / name
    yml = tree({f"yml/{name}": "web:\n  hosts:\n    w1:\n"}) / "yml" / name
    for path in (ini, yml):
        inv = load_inventory(path)
        assert inv.groups["web"].hosts == ["w1"]


@pytest.mark.parametrize("text,line,message", [
    ("[web:hostz]\nw1\n", 1, "section [web:hostz] has an unknown kind 'hostz'"),
    ("[web]\n[ bad ]\n", 2, "'[ bad ]' is not a section"),
    ("[web]\nw1\n[web:vars]\nnot-a-pair\n", 4, "expected key=value in [web:vars], got 'not-a-pair'"),
    ("[web]\nw1 port\n", 2, "expected key=value after the host, got 'port'"),
    ("[web]\nw1 note='unclosed\n", 2, "cannot read this host line: No closing quotation"),
    ("[web]\nw1:\n", 2, "host 'w1:' ends in ':'"),
    ("[web]\n---\n", 2, "'---' starts a YAML document"),
    ("[db:vars]\nx=1\n[web]\nw1\n", 1, "[db:vars] is for a group that is not defined"),
    ("[p:children]\nmissing\n[web]\nw1\n", 2, "[p:children] names 'missing', which is not defined"),
    ("[web]\nw1 ansible_port=0\n", 2, "ansible_port: must be a port number 1-65535, got 0"),
    ("[web]\nw1\n[web:vars]\nansible_user=root;id\n", 4, "ansible_user: must be a POSIX user name"),
    ("[web]\nw1 ansible_password=x\n", 2, "ansible_password: a password is refused"),
    ("[web]\nw[1:a]\n", 2, "host pattern 'w[1:a]': range [1:a] must run between"),
    ("[we;b]\nw1\n", 1, "group name 'we;b' is not valid"),
    ("[web]\nw$(id)\n", 2, "host name 'w$(id)' is not valid"),
    ("[web]\nw1 a=1\x00\n", 2, "binary data or a control character"),
    ("[a:children]\nb\n[b:children]\na\n", 4, "group 'a' contains itself (a -> b -> a)"),
])
def test_ini_problems_name_the_file_line_and_field(tree, text, line, message):
    assert_problem_at(tree, "hosts", text, line, message)


def test_a_ini_child_group_named_before_its_section(tree):
    inv = load_inventory(tree({"hosts": "[p:children]\nz\na\n[a]\na1\n[z]\nz1\n"}) / "hosts")
    # As Ansible: attached when its section comes, so in the order the sections come.
    assert inv.groups["p"].children == ["a", "z"]
    assert inv.groups["p"].hosts == ["a1", "z1"]


# -- YAML's Ansible forms ---------------------------------------------------------------------
@pytest.mark.parametrize("text,hosts,groups", [
    ("all:\n  hosts: solo\n", ["solo"], {"ungrouped": ["solo"]}),
    ("web:\n  hosts: w1\ndb:\n  children: web\n", ["w1"], {"web": ["w1"], "db": ["w1"]}),
    ("web:\n  hosts:\n    w[1:3]:\n", ["w1", "w2", "w3"], {"web": ["w1", "w2", "w3"]}),
    ("web:\n  hosts:\n    w1:2200:\n", ["w1"], {"web": ["w1"]}),
    ('{"web": {"hosts": {"w1": null}}}\n', ["w1"], {"web": ["w1"]}),
    ("web:\n  hosts:\n    '2001:db8::1':\n", ["2001:db8::1"], {"web": ["2001:db8::1"]}),
])
def test_yaml_forms_ansible_accepts(tree, text, hosts, groups):
    inv = load_inventory(tree({"inv.yml": text}) / "inv.yml")
    assert list(inv.hosts) == hosts
    for name, members in groups.items():
        assert inv.groups[name].hosts == members


@pytest.mark.parametrize("text,line,message", [
    ("web:\n  hosts: [w1, w2]\n", 2, "group 'web': hosts must be a mapping (or one name)"),
    ("web:\n  hosts:\n    w1: 10.0.0.1\n", 3, "host 'w1': its vars must be a mapping"),
    ("web:\n  children:\n    sub: [x]\n", 3, "group 'sub' (a child of 'web') must be a mapping"),
    ("plugin: aws_ec2\nregions: [eu-west-1]\n", 1, "an inventory plugin's configuration"),
    ("web:\n  hosts:\n    w1:\n  vars:\n    secret: !vault |\n      $ANSIBLE_VAULT;1.1;AES256\n"
     "      6162\n    ansible_become_pass: !vault |\n      $ANSIBLE_VAULT;1.1;AES256\n      6162\n",
     8, "ansible_become_pass: a password is refused"),
    ("web:\n  hosts:\n    w1:\n  children:\n    all:\n", 5, "group 'all' cannot be a child"),
])
def test_yaml_problems_name_the_file_line_and_field(tree, text, line, message):
    assert_problem_at(tree, "inv.yml", text, line, message)


def assert_problem_at(tree, name: str, text: str, line: int, message: str) -> None:
    path = tree({name: text}) / name
    found = problems(path)
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in found), found


def test_a_vaulted_value_is_left_out_with_a_warning(tree):
    path = tree({"inv.yml": "web:\n  hosts:\n    w1:\n  vars:\n    token: !vault |\n"
                            "      $ANSIBLE_VAULT;1.1;AES256\n      6162\n    other: 1\n"})
    inv = load_inventory(path / "inv.yml")
    assert "token" not in inv.hosts["w1"].vars and inv.hosts["w1"].vars["other"] == 1
    assert inv.warnings == [f"{path / 'inv.yml'}:5: token: encrypted with ansible-vault; left "
                            "out (provision reads no secrets from the inventory)"]


def test_unknown_group_keys_without_a_near_miss_are_skipped_with_a_warning(tree):
    path = tree({"inv.yml": "web:\n  hosts: {w1: }\n  metadata: {owner: me}\n"}) / "inv.yml"
    inv = load_inventory(path)
    assert list(inv.hosts) == ["w1"]
    assert inv.warnings == [f"{path}:3: group 'web': unknown key 'metadata' skipped (a group has "
                            "hosts, vars, children)"]


@pytest.mark.parametrize("files,message", [
    ({"inv.toml": "[all]\n"}, "a TOML inventory"),
    ({"inv.py": "#!/usr/bin/env python3\nprint('{}')\n"}, "an executable script"),
])
def test_inventories_provision_does_not_read(tree, files, message):
    root = tree(files)
    (path,) = [root / name for name in files]
    os.chmod(path, 0o755)
    assert any(message in p for p in problems(path))


# -- group_vars/ and host_vars/ -------------------------------------------------------------
VARS_TREE = {
    "hosts": "[web]\nweb1\nweb2 note=inventory\n[db]\ndb1\n",
    "group_vars/all.yml": "dc: fra1\nnote: all\n",
    "group_vars/web/10-base.yml": "http_port: 80\nlist: [a]\n",
    "group_vars/web/20-more.yaml": "http_port: 8080\n",
    "group_vars/web/sub/30.json": '{"deep": true}\n',
    "group_vars/web/.hidden.yml": "hidden: yes\n",
    "group_vars/web/old.yml~": "backup: yes\n",
    "group_vars/web/notes.md": "markdown: yes\n",
    "group_vars/db": "engine: pg\n",
    "group_vars/db.yml": "engine: unused\n",
    "group_vars/nosuchgroup.yml": "ghost: 1\n",
    "host_vars/web1.yml": "http_port: 9000\n",
    "host_vars/db1/main.yml": "replica: false\n",
}


def test_group_vars_and_host_vars_beside_the_inventory(tree):
    inv = load_inventory(tree(VARS_TREE) / "hosts")
    web1, web2, db1 = inv.hosts["web1"].vars, inv.hosts["web2"].vars, inv.hosts["db1"].vars
    assert (web1["http_port"], web2["http_port"]) == (9000, 8080)
    assert web1["deep"] is True and web1["list"] == ["a"] and web1["dc"] == "fra1"
    assert not {"hidden", "backup", "markdown", "ghost"} & set(web1)
    assert db1["engine"] == "pg" and db1["replica"] is False
    # Ansible's precedence: group_vars/ beat the inventory's group vars, the host's own vars
    # in the inventory beat group_vars/.
    assert (web1["note"], web2["note"]) == ("all", "inventory")
    assert len(inv.files) == 8 and inv.digest() != ""


def test_the_digest_covers_group_vars(tree):
    root = tree(VARS_TREE)
    before = load_inventory(root / "hosts").digest()
    (root / "group_vars" / "db").write_text("engine: mysql\n")
    assert load_inventory(root / "hosts").digest() != before


@pytest.mark.parametrize("name,content,line,message", [
    ("group_vars/web.yml", "ansible_port: x\n", 1, "ansible_port: must be an integer, got 'x'"),
    ("group_vars/web.yml", "- a\n", 1, "a vars file must be a mapping of var: value"),
    ("host_vars/web1.yml", "a: 1\nansible_ssh_pass: x\n", 2, "ansible_ssh_pass: a password"),
    ("host_vars/web1.yml", "a: [1\n", 2, "malformed YAML"),
    ("group_vars/all/x.yml", "a: &a [*a]\n", 1, "a recursive alias"),
])
def test_vars_file_problems_name_the_file_line_and_field(tree, name, content, line, message):
    root = tree({"hosts": "[web]\nweb1\n", name: content})
    found = problems(root / "hosts")
    assert any(p.startswith(f"{root / name}:{line}: ") and message in p for p in found), found


def test_a_vault_encrypted_vars_file_is_left_out_with_a_warning(tree):
    root = tree({"hosts": "[web]\nweb1\n", "group_vars/web/vault.yml":
                 "$ANSIBLE_VAULT;1.1;AES256\n6162636465\n", "group_vars/web/main.yml": "a: 1\n"})
    inv = load_inventory(root / "hosts")
    assert inv.hosts["web1"].vars["a"] == 1
    assert inv.warnings == [f"{root}/group_vars/web/vault.yml: encrypted with ansible-vault; "
                            "left out (provision reads no secrets from the inventory)"]


# -- directories, several sources, host lists -------------------------------------------------
def test_an_inventory_directory_is_its_files_in_name_order(tree):
    root = tree({
        "inv/10-web.yml": "web:\n  hosts:\n    w1: {v: yaml}\n",
        "inv/02-base.ini": "[web]\nw0\nw1 v=ini\n[all:vars]\nsite=x\n",
        "inv/sub/30.yml": "db:\n  hosts: {d1: }\n",
        "inv/README.md": "# not an inventory\n",
        "inv/hosts.retry": "w1\n",
        "inv/.hidden": "[x]\nhidden\n",
        "inv/group_vars/web.yml": "gv: 1\n",
        "inv/host_vars/d1.yml": "hv: 1\n",
    })
    inv = load_inventory(root / "inv")
    assert list(inv.hosts) == ["w0", "w1", "d1"]
    assert inv.hosts["w1"].vars["v"] == "yaml"           # 10-web.yml is read after 02-base.ini
    assert inv.hosts["w0"].vars["gv"] == 1 and inv.hosts["d1"].vars["hv"] == 1
    assert inv.hosts["d1"].vars["site"] == "x"


def test_several_sources_merge_in_order(tree):
    root = tree({
        "a/hosts.yml": "all:\n  vars: {site: a}\n  hosts:\n    h1: {v: a}\n",
        "a/group_vars/all.yml": "gv: a\n",
        "b/hosts": "h2\n[g]\nh1 v=b\n[all:vars]\nsite=b\n",
        "b/group_vars/all.yml": "gv: b\n",
    })
    inv = load_inventory([root / "a" / "hosts.yml", root / "b" / "hosts"])
    assert list(inv.hosts) == ["h1", "h2"]
    assert inv.hosts["h1"].vars["v"] == "b" and inv.hosts["h1"].vars["site"] == "b"
    assert inv.hosts["h1"].vars["gv"] == "b"
    assert inv.sources == (str(root / "a" / "hosts.yml"), str(root / "b" / "hosts"))
    again = load_inventory([root / "b" / "hosts", root / "a" / "hosts.yml"])
    assert again.hosts["h1"].vars["v"] == "a" and again.hosts["h1"].vars["gv"] == "a"


def test_a_host_list(tree):
    inv = load_inventory("gpu01,gpu02:2222,10.0.0.[1:2],")
    assert list(inv.hosts) == ["gpu01", "gpu02", "10.0.0.1", "10.0.0.2"]
    assert inv.hosts["gpu02"].port == 2222 and inv.groups["ungrouped"].hosts == list(inv.hosts)


# -- names and values ---------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,field,expected", [
    ("ansible_host", "10.0.0.5", "address", "10.0.0.5"),
    ("ansible_ssh_host", "10.0.0.5", "address", "10.0.0.5"),
    ("ansible_port", "2200", "port", 2200),
    ("ansible_ssh_port", "2200", "port", 2200),
    ("ansible_user", "ubuntu", "user", "ubuntu"),
    ("ansible_ssh_user", "ubuntu", "user", "ubuntu"),
    ("ansible_ssh_private_key_file", "~/.ssh/id", "key_file", "~/.ssh/id"),
    ("ansible_become", "yes", "become", True),
    ("ansible_become", "True", "become", True),
    ("ansible_become", "false", "become", False),
    ("ansible_become", "0", "become", False),
])
def test_ansible_names_and_the_legacy_ones(tree, key, value, field, expected):
    inv = load_inventory(tree({"hosts": f"h1 {key}={value}\n"}) / "hosts")
    assert getattr(inv.hosts["h1"], field) == expected


@pytest.mark.parametrize("payload", ["{{ 7 * 7 }}", "{% raw %}x", "$(id)", "`id`", "; reboot",
                                     "{{ lookup('pipe', 'touch /tmp/pwned') }}"])
def test_values_are_data_in_every_format(tree, payload):
    root = tree({"hosts": f"[g]\nh1 note={shlex.quote(payload)}\n[g:vars]\nmotd={payload}\n",
                 "group_vars/g.yml": f"banner: {payload!r}\n".replace("\\\\", "\\")})
    inv = load_inventory(root / "hosts")
    host = inv.hosts["h1"]
    assert host.vars["note"] == payload and host.vars["motd"] == payload
    assert host.vars["banner"] == payload


def test_group_priority_orders_siblings(tree):
    root = tree({"hosts": "[a]\nh\n[a:vars]\nv=a\nansible_group_priority=10\n[b]\nh\n[b:vars]\nv=b\n"})
    inv = load_inventory(root / "hosts")
    assert inv.hosts["h"].vars["v"] == "a" and inv.hosts["h"].groups == ("all", "b", "a")
    assert "ansible_group_priority" not in inv.hosts["h"].vars and inv.groups["a"].priority == 10


def test_the_ansible_list_shape(tree):
    root = tree({"hosts": "lone\n[web]\nw1 a=1\nw2\n[db:children]\nweb\n[spare]\n"})
    inv = load_inventory(root / "hosts")
    listing = inv.ansible_list()
    assert listing == {
        "all": {"children": ["ungrouped", "db", "spare"]},     # web hangs below db
        "ungrouped": {"hosts": ["lone"]},
        "web": {"hosts": ["w1", "w2"]},
        "db": {"children": ["web"]},
        "_meta": {"hostvars": {"w1": {"a": 1}}},
    }
    limited = inv.ansible_list(inv.select("w2"))
    assert "ungrouped" not in limited and limited["web"] == {"hosts": ["w2"]}
    assert limited["_meta"]["hostvars"] == {}


def test_ten_thousand_hosts_stay_linear(tree):
    # Not a timing test (bench/inventory_bench.py measures): the work per host stays small.
    lines = "".join(f"[rack{r}]\nn{r}-[001:500] ansible_user=ops\n" for r in range(20))
    inv = load_inventory(tree({"hosts": lines}) / "hosts")
    assert len(inv.hosts) == 10_000 and len(inv.groups["all"].hosts) == 10_000
