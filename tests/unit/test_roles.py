"""load_role (typed args, tasks, every error with file:line), render, evaluate, check_args."""

from __future__ import annotations

import textwrap

import jinja2
import pytest

from provision.errors import RoleError
from provision.operations import REGISTRY
from provision.roles import check_args, evaluate, load_role, render

GOOD = """
description: keep time with chrony
args:
  ntp_servers: {type: list, item: address, default: [pool.ntp.org], help: servers to use}
  ntp_max_offset_ms: {type: float, default: 100, min: 0}
  ntp_mode: {type: str, choices: [client, server], default: client}
  ntp_env: {type: dict, default: {TZ: UTC}}
  ntp_extra: {type: str}
tasks:
  - name: chrony installed
    op: package
    args: {names: [chrony]}
    tags: [packages]
  - name: chrony configuration
    op: template
    args: {src: chrony.conf.j2, dest: /etc/chrony/chrony.conf, mode: "0644"}
    when: ntp_servers
  - op: service
    args: {unit: chrony}
"""


@pytest.fixture
def roles(tmp_path):
    def write(text: str, name: str = "ntp"):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        (folder / "role.yml").write_text(textwrap.dedent(text).lstrip("\n"))
        return folder / "role.yml"
    write.dir = tmp_path
    return write


def role_error(name, roles_dir) -> str:
    with pytest.raises(RoleError) as info:
        load_role(name, roles_dir)
    return str(info.value)


def test_load_a_good_role(roles):
    roles(GOOD)
    role = load_role("ntp", roles.dir)
    assert role.name == "ntp" and role.path == roles.dir / "ntp"
    assert role.description == "keep time with chrony"
    assert set(role.args) == {"ntp_servers", "ntp_max_offset_ms", "ntp_mode", "ntp_env",
                              "ntp_extra"}
    assert role.args["ntp_servers"].type == "list" and role.args["ntp_servers"].item == "address"
    assert role.args["ntp_mode"].choices == ("client", "server")
    assert role.args["ntp_max_offset_ms"].min == 0
    assert role.defaults == {"ntp_servers": ["pool.ntp.org"], "ntp_max_offset_ms": 100,
                             "ntp_mode": "client", "ntp_env": {"TZ": "UTC"}}
    assert [t.name for t in role.tasks] == ["chrony installed", "chrony configuration", "service"]
    assert [t.op for t in role.tasks] == [REGISTRY["package"], REGISTRY["template"],
                                          REGISTRY["service"]]
    first, second, third = role.tasks
    assert first.tags == ("packages",) and first.when is None
    assert second.when == "ntp_servers"
    assert second.args == {"src": "chrony.conf.j2", "dest": "/etc/chrony/chrony.conf",
                           "mode": "0644"}
    assert "__line__" not in str(role.tasks) and "__line__" not in str(role.defaults)
    assert first.where.endswith("role.yml:9") and third.where.endswith("role.yml:17")


def test_variables_host_vars_override_defaults(roles):
    roles(GOOD)
    role = load_role("ntp", roles.dir)
    merged = role.variables({"ntp_mode": "server", "other": 1})
    assert merged["ntp_mode"] == "server" and merged["other"] == 1
    assert merged["ntp_max_offset_ms"] == 100


def test_missing_role_suggests_a_near_name(roles):
    roles(GOOD)
    message = role_error("ntpp", roles.dir)
    assert message == f"no role 'ntpp' in {roles.dir} (did you mean 'ntp'?)"
    assert role_error("zzz", roles.dir) == f"no role 'zzz' in {roles.dir}"


def test_malformed_yaml(roles):
    path = roles("tasks: [\n  - op: package\n")
    assert role_error("ntp", roles.dir).startswith(f"{path}: malformed YAML:")


def test_role_file_must_be_a_mapping(roles):
    path = roles("- op: package\n")
    assert role_error("ntp", roles.dir).startswith(
        f"{path}: a role file must be a mapping with description, order, args, tasks")


def test_every_problem_reported_with_its_line(roles):
    path = roles("""
        descripton: typo
        args:
          a: {type: integer}
          b: {type: int, default: "3"}
          c: {type: int, defualt: 1}
          d: {type: port, default: 0}
        tasks:
          - op: pakage
            args: {names: [x]}
          - op: template
            args: {src: x.j2}
          - op: file
            args: {path: /x, mod: "0644"}
            tag: [x]
          - just a string
    """)
    lines = role_error("ntp", roles.dir).splitlines()
    assert f"{path}: role: unknown key 'descripton' (did you mean 'description'?)" in lines
    assert f"{path}:3: argument 'a' needs a type, one of " \
           "str, int, float, bool, path, abspath, address, user, ifname, name, port, cidr, " \
           "list, dict, env, sha256" in lines
    assert f"{path}:4: default of 'b' must be an integer, got '3'" in lines
    assert f"{path}:5: argument 'c': unknown key 'defualt' (did you mean 'default'?)" in lines
    assert f"{path}:6: default of 'd' must be a port number 1-65535, got 0" in lines
    assert f"{path}:8: unknown op 'pakage' (did you mean 'package'?)" in lines
    assert f"{path}:10: op template needs 'dest'" in lines
    assert f"{path}:12: op file: unknown key 'mod' (did you mean 'mode'?)" in lines
    assert f"{path}:12: task: unknown key 'tag' (did you mean 'tags'?)" in lines
    assert f"{path}:?: a task must be a mapping" in lines
    assert len(lines) == 10


def test_null_default_is_allowed(roles):
    roles("args:\n  x: {type: int, default: null}\ntasks: []\n")
    assert load_role("ntp", roles.dir).defaults == {"x": None}


def test_render_keeps_types_of_single_expressions():
    variables = {"servers": ["a", "b"], "port": 123, "name": "gpu01", "env": {"A": "1"}}
    assert render("{{ servers }}", variables) == ["a", "b"]
    assert render("  {{ port }} ", variables) == 123
    assert render("{{ env }}", variables) == {"A": "1"}
    assert render("host {{ name }}:{{ port }}", variables) == "host gpu01:123"
    assert render("{% if port > 100 %}big{% endif %}", variables) == "big"
    assert render({"a": ["{{ port }}", "plain", 5], "b": {"c": "{{ name }}"}}, variables) == \
        {"a": [123, "plain", 5], "b": {"c": "gpu01"}}
    assert render("no templating $(id)", variables) == "no templating $(id)"


def test_render_strict_about_undefined():
    with pytest.raises(jinja2.UndefinedError, match="'missing' is undefined"):
        render("x {{ missing }}", {})
    with pytest.raises(jinja2.UndefinedError, match="'missing' is undefined"):
        render("{{ missing }}", {})
    with pytest.raises(jinja2.UndefinedError, match="'missing' is undefined"):
        render({"dest": ["{{ missing }}"]}, {})
    assert render("{{ maybe | default('/etc/x') }}", {}) == "/etc/x"
    assert render("{{ none_value }}", {"none_value": None}) is None


def test_render_does_not_evaluate_values_twice():
    # A variable holding template syntax is data, not a second template.
    assert render("{{ motd }}", {"motd": "{{ 7 * 7 }}"}) == "{{ 7 * 7 }}"
    assert render("say {{ motd }}", {"motd": "{{ 7 * 7 }}"}) == "say {{ 7 * 7 }}"


def test_evaluate():
    assert evaluate("gpus > 0", {"gpus": 8}) is True
    assert evaluate("gpus > 0", {"gpus": 0}) is False
    assert evaluate("servers", {"servers": []}) is False
    assert evaluate("'nvidia' in groups", {"groups": ["all", "nvidia"]}) is True
    assert evaluate("nope is defined", {}) is False
    assert evaluate("(servers | default([])) | length == 0", {}) is True
    with pytest.raises(jinja2.UndefinedError, match="'ntp_serverz' is undefined"):
        evaluate("ntp_serverz", {"ntp_servers": ["a"]})
    with pytest.raises(jinja2.UndefinedError):
        evaluate("host.missing_attr", {"host": {}})


def test_check_args(roles):
    roles(GOOD)
    template_task = load_role("ntp", roles.dir).tasks[1]
    assert check_args(template_task, {"src": "a.j2", "dest": "/etc/x", "mode": "0644"}) == []
    problems = check_args(template_task, {"src": "a.j2", "dest": "etc/x", "mode": 644})
    assert problems == [
        f"{template_task.where}: template arg dest: must be an absolute path, got 'etc/x'",
        f"{template_task.where}: template arg mode: must be a string, got int 644",
    ]


def test_role_sections_of_the_wrong_kind_are_role_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    for text, key in (("args: [a, b]\n", "args"), ("tasks: {a: 1}\n", "tasks")):
        (tmp_path / "bad" / "role.yml").write_text(text)
        with pytest.raises(RoleError, match=f"{key} must be a"):
            load_role("bad", tmp_path)
