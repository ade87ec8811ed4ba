"""group_vars/ and host_vars/ next to an inventory: for each group (host) `NAME`, the first of
`NAME`, `NAME.yml`, `NAME.yaml`, `NAME.json`; a directory `NAME/` stands for every file in it
(and in its subdirectories), in name order, hidden files and `~` backups left out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from provision.errors import InventoryError
from provision.inventory.data import InventoryData, Layer
from provision.inventory.yamlfile import INVALID, Document, compose, decode

EXTENSIONS = ("", ".yml", ".yaml", ".json")
VAULT_HEADER = b"$ANSIBLE_VAULT"


def _files_in(directory: Path) -> list[Path]:
    found = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(".") or name.endswith("~"):
            continue
        path = directory / name
        extension = os.path.splitext(name)[1]
        if path.is_dir() and not extension:
            found.extend(_files_in(path))
        elif path.is_file() and extension in EXTENSIONS:
            found.append(path)
    return found


def find(directory: Path, listing: set[str], name: str) -> list[Path]:
    for extension in EXTENSIONS:
        if name + extension in listing:
            path = directory / (name + extension)
            return _files_in(path) if path.is_dir() else [path]
    return []


class VarsFiles:
    """The group_vars/ and host_vars/ layers of every inventory source, each directory read
    once however many sources share it."""

    def __init__(self, data: InventoryData):
        self.data = data
        self.files: list[Path] = []
        self._read: dict[str, tuple[dict[str, Layer], dict[str, Layer]]] = {}

    def layers(self, basedir: Path) -> tuple[dict[str, Layer], dict[str, Layer]]:
        key = os.path.realpath(basedir)
        if key not in self._read:
            self._read[key] = (self._load(Path(key) / "group_vars", self.data.groups),
                               self._load(Path(key) / "host_vars", self.data.hosts))
        return self._read[key]

    def _load(self, directory: Path, names) -> dict[str, Layer]:
        try:
            listing = set(os.listdir(directory))
        except NotADirectoryError:
            self.data.warnings.append(f"{directory}: not a directory; skipped")
            return {}
        except OSError:
            return {}
        layers: dict[str, Layer] = {}
        for name in names:
            paths = find(directory, listing, name)
            if paths:
                layer = layers[name] = Layer()
                for path in paths:
                    self.read(path, layer)
        return layers

    def read(self, path: Path, layer: Layer) -> None:
        data = self.data
        try:
            raw = path.read_bytes()
        except OSError as exc:
            data.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            return
        self.files.append(path)
        if raw.lstrip().startswith(VAULT_HEADER):
            data.warnings.append(f"{path}: encrypted with ansible-vault; left out (provision "
                                 "reads no secrets from the inventory)")
            return
        try:
            root = compose(decode(raw, path), path)
        except InventoryError as exc:
            if path.suffix != ".json":
                data.problems.extend(exc.problems)
                return
            self._read_json(path, raw, layer, exc)
            return
        if root is None:
            return                      # an empty file sets nothing
        doc = Document(path, data.problems)
        if not isinstance(root, yaml.MappingNode):
            doc.problem(root, "a vars file must be a mapping of var: value")
            return
        for key, key_node, value_node in doc.items(root, "vars"):
            value = doc.value(value_node, key)
            if value is not INVALID:
                data.put(layer, key, value, doc.where(key_node))

    def _read_json(self, path: Path, raw: bytes, layer: Layer, error: InventoryError) -> None:
        """JSON YAML cannot read (tabs): the values, each at the line its key is on."""
        try:
            text = raw.decode("utf-8")
            values = json.loads(text)
        except ValueError:
            self.data.problems.extend(error.problems)
            return
        if not isinstance(values, dict):
            self.data.problems.append(f"{path}: a vars file must be a mapping of var: value")
            return
        for key, value in values.items():
            at = text.find(json.dumps(key))
            self.data.put(layer, key, value, f"{path}:{text.count(chr(10), 0, max(at, 0)) + 1}")
