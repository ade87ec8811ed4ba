"""What `pip install .` ships: the roles, their templates, environment.yml and the example
inventory as package data, found through importlib.resources, byte for byte the repository's
(issue 10). tests/lab/test_wheel.py installs such a wheel and provisions the lab with it."""

from __future__ import annotations

import zipfile
from importlib import resources
from pathlib import Path

import pytest

import provision
from provision.operations.conda import DEFAULT_ENV_FILE
from provision.roles import ROLES_DIR

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("roles", "environment.yml", "inventory.example.yaml")


def test_the_shipped_files_are_found_through_importlib_resources():
    root = resources.files("provision._shipped")
    assert ROLES_DIR == Path(str(root / "roles")).resolve()
    assert DEFAULT_ENV_FILE == Path(str(root / "environment.yml")).resolve()
    for name in SHIPPED:
        assert (root / name).is_dir() or (root / name).is_file(), name


def test_in_a_checkout_they_are_the_repositorys_top_level_files():
    # Edited where they always were: roles/, environment.yml and inventory.example.yaml stay at
    # the top; provision/_shipped links to them.
    assert ROLES_DIR == REPO / "roles"
    assert DEFAULT_ENV_FILE == REPO / "environment.yml"
    for name in SHIPPED:
        assert (REPO / "provision" / "_shipped" / name).resolve() == REPO / name


@pytest.fixture(scope="module")
def wheel(built_wheel) -> zipfile.ZipFile:
    return zipfile.ZipFile(built_wheel)


def test_the_wheel_holds_every_shipped_file_byte_for_byte(wheel):
    names = set(wheel.namelist())
    expected = [p for p in (REPO / "roles").rglob("*") if p.is_file()] + \
        [REPO / "environment.yml", REPO / "inventory.example.yaml"]
    assert len(expected) > 8
    for path in expected:
        inside = f"provision/_shipped/{path.relative_to(REPO)}"
        assert inside in names, f"{inside} is not in the wheel"
        assert wheel.read(inside) == path.read_bytes(), inside
    # No link survives into the wheel, and nothing outside provision/ is installed.
    assert all(n.startswith(("provision/", "provision-")) for n in names)


def test_the_wheel_holds_every_package(wheel):
    names = set(wheel.namelist())
    package = Path(provision.__file__).parent
    for module in package.rglob("*.py"):
        inside = f"provision/{module.relative_to(package)}"
        assert inside in names, f"{inside} is not in the wheel"
