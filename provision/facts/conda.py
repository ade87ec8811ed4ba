"""Facts about a Miniconda installation, a conda environment in it, and what that environment runs."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from provision.facts.base import Fact

# Written last by the conda role: the sha256 of the lock file the environment was built from.
LOCK_MARKER = ".provision-lock-sha256"


@dataclass(frozen=True)
class CondaInstallInfo:
    exists: bool                 # something is at the prefix
    has_conda: bool              # bin/conda is executable
    conda_version: str | None    # from conda-meta/conda-<version>-<build>.json


@dataclass(frozen=True)
class CondaInstall(Fact):
    """What Miniconda installed at `prefix`: conda records every package it links as
    conda-meta/<name>-<version>-<build>.json, the conda package itself included."""

    prefix: str

    def command(self) -> str:
        p = shlex.quote(self.prefix)
        return (f"[ -e {p} ] || exit 0; echo exists; [ -x {p}/bin/conda ] && echo conda; "
                f"for f in {p}/conda-meta/conda-[0-9]*.json; do "
                f"[ -f \"$f\" ] && echo \"meta ${{f##*/}}\"; done; true")

    def parse(self, stdout: str, rc: int) -> CondaInstallInfo:
        lines = stdout.splitlines()
        versions = [line[len("meta conda-"):].split("-")[0] for line in lines
                    if line.startswith("meta conda-")]
        return CondaInstallInfo("exists" in lines, "conda" in lines,
                                versions[0] if len(versions) == 1 else None)


@dataclass(frozen=True)
class CondaEnvInfo:
    exists: bool
    is_env: bool                 # conda-meta/history: conda created it (maybe not completely)
    lock_sha256: str | None      # the marker, present only when an install completed


@dataclass(frozen=True)
class CondaEnv(Fact):
    """The conda environment at `path` and the lock hash its last completed install recorded."""

    path: str

    def command(self) -> str:
        p = shlex.quote(self.path)
        marker = shlex.quote(f"{self.path}/{LOCK_MARKER}")
        return (f"[ -e {p} ] || exit 0; echo exists; [ -f {p}/conda-meta/history ] && echo env; "
                f"[ -f {marker} ] && echo \"lock $(head -c 100 {marker})\"; true")

    def parse(self, stdout: str, rc: int) -> CondaEnvInfo:
        lines = stdout.splitlines()
        locks = [line.split()[1] for line in lines if line.startswith("lock ") and
                 len(line.split()) == 2]
        return CondaEnvInfo("exists" in lines, "env" in lines, locks[0] if locks else None)


# Runs in the environment's python when it is built; -B so importing torch writes no bytecode.
VERSIONS_SCRIPT = """\
import json, platform
r = {"python": platform.python_version()}
try:
    import torch
except Exception as e:
    r["error"] = "cannot import torch: %s" % e
else:
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # CPU builds have no NCCL
        nccl = None
    r.update(torch=torch.__version__, cuda=torch.version.cuda, nccl=nccl,
             cuda_available=torch.cuda.is_available())
print(json.dumps(r))
"""


@dataclass(frozen=True)
class EnvVersions:
    lock_sha256: str | None
    python: str | None = None
    torch: str | None = None
    cuda: str | None = None
    nccl: str | None = None
    cuda_available: bool | None = None
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return self.error
        return (f"python {self.python}, torch {self.torch}, torch CUDA {self.cuda or 'none'}, "
                f"NCCL {self.nccl or 'none'}, cuda.is_available() {self.cuda_available}, "
                f"lock {(self.lock_sha256 or 'none')[:12]}")


FIELDS = ("python", "torch", "cuda", "nccl", "cuda_available", "lock_sha256")


def differences(reports: dict[str, EnvVersions]) -> list[str]:
    """'field: host=value, ...' for every field in which the hosts' environments differ."""
    found = []
    for field in FIELDS:
        values = {host: getattr(report, field) for host, report in reports.items()}
        if len(set(values.values())) > 1:
            found.append(f"{field}: " + ", ".join(f"{h}={v}" for h, v in values.items()))
    return found


@dataclass(frozen=True)
class PythonVersions(Fact):
    """What `python` runs, asked of it (an environment provision did not build has no record):
    python, torch, CUDA and NCCL versions and GPU availability."""

    python: str

    def command(self) -> str:
        return shlex.join([self.python, "-B", "-c", VERSIONS_SCRIPT])

    def parse(self, stdout: str, rc: int) -> EnvVersions:
        lines = stdout.strip().splitlines()
        return _versions(None, lines[-1] if rc == 0 and lines else "",
                         f"{self.python} did not run (exit code {rc})")


# Written by the environment's build (conda_env), just before the lock marker: the versions
# change only when the environment does, so runs with nothing to change read this file instead of
# importing torch on every host.
VERSIONS_RECORD = ".provision-versions.json"


@dataclass(frozen=True)
class EnvTorchVersions(Fact):
    """python, torch, CUDA, NCCL versions and GPU availability the environment's build recorded."""

    path: str

    def command(self) -> str:
        marker = shlex.quote(f"{self.path}/{LOCK_MARKER}")
        record = shlex.quote(f"{self.path}/{VERSIONS_RECORD}")
        return (f"echo \"lock $(head -c 100 {marker} 2>/dev/null)\"; "
                f"[ -f {record} ] || exit 3; cat {record}")

    def parse(self, stdout: str, rc: int) -> EnvVersions:
        lines = stdout.splitlines()
        lock = lines[0].split()[1] if lines and len(lines[0].split()) == 2 else None
        if rc == 3:
            return EnvVersions(lock, error=f"no environment built by provision at {self.path}")
        return _versions(lock, lines[-1] if rc == 0 and len(lines) > 1 else "",
                         f"{self.path}/{VERSIONS_RECORD} is unreadable")


def _versions(lock: str | None, line: str, unreadable: str) -> EnvVersions:
    """VERSIONS_SCRIPT's JSON line, or the error `unreadable` when it is not one."""
    try:
        values = json.loads(line) if line else None
    except json.JSONDecodeError:
        values = None
    if not isinstance(values, dict):
        return EnvVersions(lock, error=unreadable)
    return EnvVersions(lock, **{k: values.get(k) for k in
                                ("python", "torch", "cuda", "nccl", "cuda_available", "error")})
