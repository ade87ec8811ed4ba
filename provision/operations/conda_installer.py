"""The Miniconda installer on the controller: a local file (air-gapped sites) or a download made
once per controller into ~/.cache/provision/, checksum verified before any host sees it.

Hosts never download: the installer is read once here and pushed to each host that needs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

OFFICIAL_BASE = "https://repo.anaconda.com/miniconda/"
# Published checksums of the official installers (repo.anaconda.com/miniconda/ lists them; the
# x86_64 one is also pinned in public Dockerfiles). Other versions or architectures: set
# conda_installer_sha256.
OFFICIAL_SHA256 = {
    ("py311_24.7.1-0", "x86_64"):
        "a098a5b1581d8fd078c430b82e27106602223e335efef708a124e723814d120c",
}
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "provision"
VERSION_RE = re.compile(r"(?:py\d+_)?(\d+(?:\.\d+)+)-\d+")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class InstallerError(Exception):
    """The installer cannot be obtained or does not match its checksum."""


@dataclass(frozen=True)
class Installer:
    name: str          # file name the host gives it (the installer checks nothing about it)
    sha256: str
    data: bytes


def conda_version(installer_version: str) -> str:
    """The conda version a Miniconda release installs: py311_24.7.1-0 -> 24.7.1."""
    match = VERSION_RE.fullmatch(installer_version)
    if not match:
        raise ValueError(f"conda_installer_version {installer_version!r} is not a Miniconda "
                         f"release like py311_24.7.1-0")
    return match.group(1)


def official_url(installer_version: str, arch: str) -> str:
    return f"{OFFICIAL_BASE}Miniconda3-{installer_version}-Linux-{arch}.sh"


def expected_sha256(configured: str, installer_version: str, arch: str) -> str:
    if configured:
        if not SHA256_RE.fullmatch(configured.lower()):
            raise InstallerError(f"conda_installer_sha256 {configured!r} is not a sha256 hex digest")
        return configured.lower()
    try:
        return OFFICIAL_SHA256[(installer_version, arch)]
    except KeyError:
        raise InstallerError(f"no known checksum for Miniconda3 {installer_version} on {arch}: "
                             f"set conda_installer_sha256") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Hosts are planned in parallel threads: one lock makes the first download serve them all, and
# the loaded bytes are shared (one copy in memory however many hosts receive them).
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], Installer] = {}


def resolve(path: str, url: str, sha256: str, cache_dir: Path | None = None) -> Installer:
    """The installer from `path` (a controller file) or else `url` (downloaded once, cached),
    whose content must have `sha256`."""
    with _LOCK:
        key = (path or url, sha256)
        if key not in _LOADED:
            local = Path(path).expanduser() if path else _download(url, sha256,
                                                                   cache_dir or CACHE_DIR)
            try:
                data = local.read_bytes()
            except OSError as exc:
                raise InstallerError(f"cannot read the installer {local}: {exc.strerror}") from None
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise InstallerError(f"installer {local} has sha256 {actual}, expected {sha256}; "
                                     f"refusing to install it")
            _LOADED[key] = Installer(installer_name(path, url), sha256, data)
        return _LOADED[key]


def installer_name(path: str, url: str) -> str:
    """The installer's file name: the controller file's, or the URL's last part."""
    name = Path(path).name if path else url.rstrip("/").rsplit("/", 1)[-1]
    return name or "miniconda-installer.sh"


def _download(url: str, sha256: str, cache_dir: Path) -> Path:
    """The cached download of `url`; fetched (under a file lock, so that concurrent runs on the
    controller fetch it once) only when no verified copy is cached."""
    target = cache_dir / f"{sha256[:16]}-{url.rstrip('/').rsplit('/', 1)[-1] or 'installer.sh'}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and _sha256_file(target) == sha256:
            return target
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".download-", delete=False) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    shutil.copyfileobj(response, tmp, 1 << 20)
                tmp.close()
                actual = _sha256_file(Path(tmp.name))
                if actual != sha256:
                    raise InstallerError(f"download of {url} has sha256 {actual}, expected "
                                         f"{sha256}; refusing to install it")
                os.replace(tmp.name, target)
            except (urllib.error.URLError, OSError) as exc:
                raise InstallerError(f"cannot download {url}: "
                                     f"{getattr(exc, 'reason', None) or exc}") from None
            finally:
                if os.path.exists(tmp.name):
                    os.unlink(tmp.name)
    return target
