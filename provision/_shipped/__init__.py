"""The files `pip install` ships besides the code: the roles (roles/<name>/role.yml and their
templates), the default environment.yml and the example inventory.

In the source tree the entries here are links to the repository's top-level roles/,
environment.yml and inventory.example.yaml, where they are edited; pyproject.toml's package-data
copies the files themselves into the wheel (and the sdist), so an installed provision finds them
here, through importlib.resources, wherever it is installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped(name: str) -> Path:
    """A shipped file or directory, e.g. shipped("roles"), as a real path (links resolved, so
    messages name the file a person edits)."""
    found = resources.files(__name__) / name
    if not isinstance(found, Path):
        raise RuntimeError(f"provision's {name} is not on the filesystem ({found}): install "
                           "provision as files (pip install), not as a zip")
    return found.resolve()
