"""Putting the training script on every node: used in place on the shared mount, copied into
the run's directory, or (--sync DIR) a whole directory kept in step, sending changed files only."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import shlex
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.errors import HostUnreachable, TrainError
from provision.runner import HostSession


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


def stage(session: HostSession, staging: Staging) -> int:
    """Send what the node lacks; returns how many files were sent."""
    if staging.source is None:
        return 0
    local = _local_manifest(staging.source)
    remote = {} if staging.fresh else _remote_manifest(session, staging.target)
    changed = sorted(path for path, digest in local.items() if remote.get(path) != digest)
    if not changed:
        return 0
    buffer = io.BytesIO()
    base = staging.source if staging.source.is_dir() else staging.source.parent
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in changed:
            tar.add(base / path, arcname=path)
    result = session.run(f"mkdir -p {shlex.quote(staging.target)} && "
                         f"tar -xzf - -C {shlex.quote(staging.target)}", stdin=buffer.getvalue())
    if not result.ok:
        raise TrainError(f"{session.connection.host.name}: copying the training files to "
                         f"{staging.target} failed: {result.describe_failure()}")
    return len(changed)


def stage_all(sessions: dict[str, HostSession], staging: Staging) -> dict[str, str]:
    """Stage on every node at once; the problem of each node that could not be staged (a full
    disk, an unwritable run directory, a lost connection), by node name."""
    def one(name: str) -> str | None:
        try:
            stage(sessions[name], staging)
        except (TrainError, HostUnreachable) as exc:
            return str(exc)
        return None
    with ThreadPoolExecutor(max_workers=max(1, len(sessions))) as pool:
        outcomes = dict(zip(sessions, pool.map(one, sessions)))
    return {name: problem for name, problem in outcomes.items() if problem is not None}
