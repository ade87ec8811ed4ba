"""check_value and suggest: the checks every inventory var and role argument goes through."""

from __future__ import annotations

import pytest

from provision.settings import ALIASES, CORE_SETTINGS, Setting, check_value, suggest

VALID = [
    ("int", 3), ("int", 0), ("port", 1), ("port", 65535), ("float", 1.5), ("float", 2),
    ("bool", True), ("bool", False), ("str", "anything ; $(id) `x` 'q'"),
    ("path", "/a b/c;d"), ("abspath", "/opt/x y"), ("address", "10.0.0.1"),
    ("address", "node-1.example.com"), ("address", "fe80::1"), ("user", "ubuntu"),
    ("user", "_svc-01"), ("ifname", "eth0"), ("ifname", "enp1s0f0.100"), ("name", "gpu-01"),
    ("cidr", "10.0.0.0/24"), ("cidr", "fd00::/64"), ("env", "NCCL_DEBUG"),
]

INVALID = [
    ("int", "8", "must be an integer"), ("int", True, "must be an integer"),
    ("int", 1.5, "must be an integer"), ("port", 0, "1-65535"), ("port", 70000, "1-65535"),
    ("port", "22", "must be an integer"), ("float", "1", "must be a number"),
    ("float", False, "must be a number"), ("bool", "yes", "true or false"),
    ("bool", 1, "true or false"), ("str", 5, "must be a string"),
    ("path", "/a\nb", "without newlines"), ("abspath", "relative/x", "absolute path"),
    ("address", "$(id)", "host name or IP"), ("address", "a b", "host name or IP"),
    ("address", "-oProxyCommand=x", "host name or IP"),
    ("user", "root; rm -rf /", "POSIX user"), ("user", "Root", "POSIX user"),
    ("user", "a" * 33, "POSIX user"), ("ifname", "a" * 16, "interface name"),
    ("ifname", "eth0;x", "interface name"), ("name", "a`b`", "a name of letters"),
    ("name", "-x", "a name of letters"), ("cidr", "10.0.0.0/33", "CIDR"),
    ("cidr", "not-a-net", "CIDR"), ("env", "1X", "environment variable"),
    # `$` matches before a final newline: every pattern must match the whole string.
    ("address", "10.0.0.1\n", "host name or IP"), ("user", "ubuntu\n", "POSIX user"),
    ("ifname", "eth0\n", "interface name"), ("name", "train\n", "a name of letters"),
    ("env", "NCCL_DEBUG\n", "environment variable"), ("path", "/opt/x\n", "without newlines"),
    ("abspath", "/opt/x\n", "without newlines"), ("path", "/opt/\x00x", "without newlines"),
    ("address", "10.0.0.1\x00", "host name or IP"), ("name", "a{{ 6*7 }}", "a name of letters"),
]


@pytest.mark.parametrize("kind,value", VALID)
def test_valid_values_pass(kind, value):
    assert check_value(Setting("x", kind), value) is None


@pytest.mark.parametrize("kind,value,message", INVALID)
def test_invalid_values_are_described(kind, value, message):
    problem = check_value(Setting("x", kind), value)
    assert problem is not None and message in problem
    assert repr(value) in problem or str(value) in problem


def test_trailing_newlines_in_lists_and_mappings_are_refused():
    assert "item" in check_value(Setting("ntp_servers", "list", item="address"), ["10.0.0.1\n"])
    assert "key" in check_value(Setting("train_env", "dict"), {"NCCL_DEBUG\n": "INFO"})


def test_min_max_and_choices():
    gpus = Setting("gpus", "int", min=0, max=8)
    assert check_value(gpus, 0) is None and check_value(gpus, 8) is None
    assert check_value(gpus, -1) == "must be at least 0, got -1"
    assert check_value(gpus, 9) == "must be at most 8, got 9"
    state = Setting("state", "str", choices=("present", "absent"))
    assert check_value(state, "absent") is None
    assert check_value(state, "gone") == "must be one of present, absent, got 'gone'"


def test_lists_check_every_item():
    names = Setting("names", "list", item="name")
    assert check_value(names, ["a", "b-1"]) is None
    assert check_value(names, []) is None
    assert check_value(names, "a") == "must be a list, got 'a'"
    assert "item must be a name" in check_value(names, ["ok", "bad;rm"])
    assert "item must be a string" in check_value(Setting("l", "list"), ["a", 3])


def test_dicts_need_variable_names_and_scalar_values():
    env = Setting("train_env", "dict")
    assert check_value(env, {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": 4, "X": 1.5}) is None
    assert check_value(env, ["A=1"]) == "must be a mapping, got ['A=1']"
    assert check_value(env, {"BAD-NAME": "1"}) == "key 'BAD-NAME' must be a variable name"
    assert "value of A must be a string or number" in check_value(env, {"A": True})
    assert "value of A must be a string or number" in check_value(env, {"A": [1]})


def test_unknown_setting_type_is_refused():
    with pytest.raises(ValueError, match="unknown type 'integer'"):
        Setting("x", "integer")


def test_suggest():
    known = list(CORE_SETTINGS)
    assert suggest("ssh_kye", known) == "ssh_key"
    assert suggest("gpu", known) == "gpus"
    assert suggest("rendezvous_prt", known) == "rendezvous_port"
    assert suggest("foo", known) is None


def test_aliases_point_at_core_settings():
    assert set(ALIASES.values()) <= set(CORE_SETTINGS)
    assert ALIASES["ansible_host"] == "address"
    assert ALIASES["ansible_ssh_private_key_file"] == "ssh_key"
