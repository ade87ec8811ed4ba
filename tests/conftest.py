"""What every tier shares: the wheel that a user's `pip install .` builds from this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _source_copy(destination: Path) -> Path:
    """The files a build reads, copied out of the checkout (a build writes build/ and
    *.egg-info next to its sources): every top-level file, provision/ and roles/, links kept."""
    destination.mkdir()
    for entry in REPO.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            shutil.copy2(entry, destination / entry.name)
    for folder in ("provision", "roles"):
        shutil.copytree(REPO / folder, destination / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """provision's wheel, built from a copy of the checkout as pip builds it."""
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(work / "dist"),
                    str(source)], check=True, timeout=300)
    (wheel,) = (work / "dist").glob("provision-*.whl")
    return wheel
