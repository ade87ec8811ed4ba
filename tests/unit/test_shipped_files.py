"""The files users start from must load and agree with the roles."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from provision.inventory import load_inventory
from provision.roles import load_role
from provision.setup import known_settings, role_names

REPO = Path(__file__).resolve().parents[2]


def test_example_inventory_is_valid_with_every_role_setting():
    inventory = load_inventory(REPO / "inventory.example.yaml", known_settings())
    assert inventory.groups["training"].hosts == ["gpu1", "gpu2", "gpu3"]
    assert inventory.hosts["gpu3"].vars["gpus"] == 4


def test_every_shipped_role_loads():
    assert set(role_names()) == {"preflight", "nvidia", "ntp", "firewall", "nfs", "conda"}
    for name in role_names():
        assert load_role(name).tasks


def test_nvidia_minimum_follows_the_cuda_of_the_locked_torch():
    """torch_cuda (which sets the minimum driver) must name the CUDA that environment.yml pins."""
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pins = [d for d in environment["dependencies"] if isinstance(d, str)
            and d.startswith("pytorch-cuda")]
    (pin,) = pins
    cuda = re.split(r"[=<>]+", pin)[1]
    assert load_role("nvidia").defaults["torch_cuda"] == cuda
