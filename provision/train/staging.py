"""Putting the training script on every node: used in place on the shared mount, copied into
the run's directory, or (--sync DIR) a whole directory kept in step, sending changed files only.
The files cross the controller's link about once: the run's relay passes them between nodes."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import shlex
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.errors import HostUnreachable, TrainError
from provision.operations.base import Command
from provision.relay import Relay, SharedFile
from provision.session import HostSession


@dataclass(frozen=True)
class Staging:
    workdir: str                   # the job's working directory on every node
    script: str                    # the script's path on every node
    source: Path | None = None     # local file or directory to send (None: used in place)
    target: str | None = None      # where `source` goes on the nodes
    fresh: bool = False            # `target` is new to this run: nothing there to compare with


def plan_staging(script: Path, sync_dir: Path | None, shared_mount: str | None,
                 run_dir: str) -> Staging:
    script = script.resolve()
    if not script.is_file():
        raise TrainError(f"{script}: no such training script")
    if sync_dir is not None:
        sync_dir = sync_dir.resolve()
        if sync_dir not in script.parents:
            raise TrainError(f"--sync {sync_dir} must contain the script {script}")
        target = posixpath.join(posixpath.dirname(run_dir), "sync", sync_dir.name)
        relative = script.relative_to(sync_dir).as_posix()
        return Staging(target, posixpath.join(target, relative), sync_dir, target)
    if shared_mount and Path(shared_mount) in script.parents:
        return Staging(str(script.parent), str(script))
    return Staging(run_dir, posixpath.join(run_dir, script.name), script, run_dir, fresh=True)


def _local_manifest(source: Path) -> dict[str, str]:
    if source.is_file():
        return {source.name: hashlib.sha256(source.read_bytes()).hexdigest()}
    manifest = {}
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".git")]
        for name in files:
            path = Path(root) / name
            manifest[path.relative_to(source).as_posix()] = \
                hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest


def _remote_manifest(session: HostSession, target: str) -> dict[str, str]:
    result = session.run(f"cd {shlex.quote(target)} 2>/dev/null || exit 0; "
                         "find . -type f -exec sha256sum {} +")
    manifest = {}
    for line in result.stdout.split("\n"):
        digest, _, path = line.partition("  ")
        if digest.startswith("\\"):
            # GNU sha256sum marks a name holding "\\", a newline or a CR so, and escapes them.
            digest = digest[1:]
            path = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), path)
        manifest[path[2:] if path.startswith("./") else path] = digest
    return manifest


class Archives:
    """What one staging sends: the local manifest (hashed once, not once per node) and one
    tarball per distinct set of files the nodes lack (usually one for all), built once and
    shared through the relay."""

    def __init__(self, staging: Staging):
        self.staging = staging
        self._lock = threading.Lock()
        self._manifest: dict[str, str] | None = None
        self._built: dict[tuple[str, ...], SharedFile] = {}

    def manifest(self) -> dict[str, str]:
        with self._lock:
            if self._manifest is None:
                self._manifest = _local_manifest(self.staging.source)
            return self._manifest

    def archive(self, paths: tuple[str, ...]) -> SharedFile:
        with self._lock:
            if paths not in self._built:
                source = self.staging.source
                buffer = io.BytesIO()
                base = source if source.is_dir() else source.parent
                # Level 1: most of gzip's gain on code, at a fraction of level 9's time.
                with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
                    for path in paths:
                        tar.add(base / path, arcname=path)
                data = buffer.getvalue()
                self._built[paths] = SharedFile(
                    f"{source.name}.tar.gz", hashlib.sha256(data).hexdigest(),
                    posixpath.dirname(self.staging.target.rstrip("/")) or "/", lambda: data)
            return self._built[paths]


def stage(session: HostSession, staging: Staging, relay: Relay | None = None,
          archives: Archives | None = None) -> int:
    """Send what the node lacks; returns how many files were sent."""
    if staging.source is None:
        return 0
    archives = archives or Archives(staging)
    local = archives.manifest()
    remote = {} if staging.fresh else _remote_manifest(session, staging.target)
    changed = tuple(sorted(path for path, digest in local.items() if remote.get(path) != digest))
    if not changed:
        return 0
    archive = archives.archive(changed)
    target = shlex.quote(staging.target)
    result = (relay or Relay()).run(session, Command(
        f"mkdir -p {target} && tar -xzf {shlex.quote(archive.path)} -C {target}",
        needs=archive))
    if not result.ok:
        raise TrainError(f"{session.connection.host.name}: copying the training files to "
                         f"{staging.target} failed: {result.describe_failure()}")
    return len(changed)


def stage_all(sessions: dict[str, HostSession], staging: Staging,
              relay: Relay | None = None) -> dict[str, str]:
    """Stage on every node at once, the files passed between the nodes by `relay`; the problem
    of each node that could not be staged (a full disk, an unwritable run directory, a lost
    connection), by node name."""
    archives = Archives(staging)
    relay = relay or Relay()

    def one(name: str) -> str | None:
        try:
            stage(sessions[name], staging, relay, archives)
        except (TrainError, HostUnreachable) as exc:
            return str(exc)
        return None
    with ThreadPoolExecutor(max_workers=max(1, len(sessions))) as pool:
        outcomes = dict(zip(sessions, pool.map(one, sessions)))
    return {name: problem for name, problem in outcomes.items() if problem is not None}
