"""Miniconda and the training environment: install, create/update from the lock, and compare
what the environment runs across the training hosts."""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from pathlib import Path

import yaml

from provision.operations import conda_installer
from provision._shipped import shipped
from provision.checks import CheckContext, cluster_check
from provision.facts.conda import (
    LOCK_MARKER,
    CondaEnv,
    CondaInstall,
    VERSIONS_RECORD,
    VERSIONS_SCRIPT,
    EnvTorchVersions,
    EnvVersions,
    differences,
)
from provision.facts.system import Os
from provision.operations.base import (
    Change,
    Command,
    FactValues,
    Failure,
    HostContext,
    NoChange,
    operation,
)
from provision.plan import Status, TaskResult
from provision.relay.files import SharedFile
from provision.settings import Setting

DEFAULT_ENV_FILE = shipped("environment.yml")   # package data; the repository's in a checkout
TRAINING_GROUP = "training"
PREFIX = Setting("prefix", "abspath", "where Miniconda is installed")


def _run_checked(installer: str, sha256: str, argv: list[str]) -> list[str]:
    """sh lines: the installer at the shell word `installer` is checked, then run."""
    return [
        f"if ! printf '%s  %s\\n' {sha256} {installer} | sha256sum -c --status; then",
        (f"  echo \"refusing to run the Miniconda installer: its sha256 on this host is "
         f"$(sha256sum < {installer} | cut -d' ' -f1), expected {sha256}\" >&2"),
        "  exit 1",
        "fi",
        f"bash {installer} {shlex.join(argv)}",
    ]


def _installer_argv(prefix: str, update: bool) -> list[str]:
    return ["-b", *(["-u"] if update else []), "-p", prefix]


def install_script(prefix: str, installer: str, sha256: str, update: bool) -> str:
    """sh script: the installer the relay brought to the path `installer` is checked on the
    host, then run in batch mode."""
    return "\n".join(["set -e", *_run_checked(shlex.quote(installer), sha256,
                                              _installer_argv(prefix, update))]) + "\n"


def download_script(prefix: str, url: str, name: str, sha256: str, update: bool) -> str:
    """sh script: the host downloads the installer itself, checks it, then runs it."""
    parent = posixpath.dirname(prefix.rstrip("/")) or "/"
    installer = f'"$dir"/{shlex.quote(name)}'
    u = shlex.quote(url)
    return "\n".join([
        "set -e",
        f"mkdir -p -- {shlex.quote(parent)}",
        # Beside the prefix: the space preflight checked, and not a small or noexec /tmp.
        f"dir=$(mktemp -d {shlex.quote(parent + '/.provision-miniconda.XXXXXX')})",
        "trap 'rm -rf \"$dir\"' EXIT",
        "if command -v curl >/dev/null 2>&1; then",
        f"  curl -fsSL --retry 3 --connect-timeout 30 -o {installer} {u}",
        "elif command -v wget >/dev/null 2>&1; then",
        f"  wget -q --tries=3 --timeout=30 -O {installer} {u}",
        "else",
        "  echo 'conda_installer_source is hosts, but this host has neither curl nor wget' >&2",
        "  exit 1",
        "fi",
        *_run_checked(installer, sha256, _installer_argv(prefix, update)),
    ]) + "\n"


@operation("conda_install",
           [PREFIX, Setting("version", "str"), Setting("url", "str"), Setting("sha256", "str"),
            Setting("installer_path", "str"),
            Setting("source", "str", choices=("controller", "hosts"))],
           required=("prefix", "version"), facts=lambda a: [Os(), CondaInstall(a["prefix"])])
def conda_install(args: dict, facts: FactValues, ctx: HostContext):
    """Miniconda `version` is installed at `prefix`: the controller's checked copy of the
    installer, passed between the hosts by the run's relay, or (source: hosts) each host's own
    download."""
    prefix, version = args["prefix"], args["version"]
    wanted = conda_installer.conda_version(version)
    info = facts[CondaInstall(prefix)]
    if info.has_conda and info.conda_version == wanted:
        return NoChange(f"Miniconda3 {version} (conda {wanted}) is installed at {prefix}")
    arch = facts[Os()].arch
    url = args.get("url") or conda_installer.official_url(version, arch)
    # An existing prefix (another conda version, or an interrupted install) is updated in place:
    # the installer refuses an existing prefix without -u.
    found = (f" over conda {info.conda_version}" if info.conda_version
             else " over an incomplete install" if info.exists else "")
    what = f"install Miniconda3 {version} into {prefix}{found}"
    try:
        sha256 = conda_installer.expected_sha256(args.get("sha256") or "", version, arch)
        if args.get("source") == "hosts":
            if args.get("installer_path"):
                return Failure("conda_installer_path is a file on the controller, but "
                               "conda_installer_source is hosts: each host downloads "
                               "conda_installer_url itself; unset one of them")
            name = conda_installer.installer_name("", url)
            return Change(f"{what}, downloaded by the host from {url}",
                          (Command(download_script(prefix, url, name, sha256, info.exists)),))
        path = args.get("installer_path") or ""
        if path:      # a file on the controller: checked now, before any host is changed
            conda_installer.resolve(path, url, sha256)
    except conda_installer.InstallerError as exc:
        return Failure(str(exc))
    # Downloaded when the relay first needs its bytes: never by --check, which only plans.
    # Beside the prefix: the space preflight checked, and not a small or noexec /tmp.
    shared = SharedFile(conda_installer.installer_name(path, url), sha256,
                        posixpath.dirname(prefix.rstrip("/")) or "/",
                        lambda: conda_installer.resolve(path, url, sha256).data)
    return Change(what, (Command(install_script(prefix, shared.path, sha256, info.exists),
                                 needs=shared),))


def env_path(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/envs/{name}"


def is_explicit_lock(data: bytes) -> bool:
    """An explicit lock (conda-lock --kind explicit, conda list --explicit): package URLs."""
    lines = [line.strip() for line in data.decode(errors="replace").splitlines()]
    return "@EXPLICIT" in [line for line in lines if line and not line.startswith("#")][:1]


def env_script(conda: str, path: str, sha256: str, action: str, lock_copy: str,
               explicit: bool = False) -> str:
    """sh script: the lock file is read at `lock_copy` (where the relay brought it); the marker
    goes first and comes back last."""
    p, marker = shlex.quote(path), shlex.quote(f"{path}/{LOCK_MARKER}")
    record = shlex.quote(f"{path}/{VERSIONS_RECORD}")
    conda = shlex.quote(conda)
    if explicit:
        # An explicit lock names every package of the environment: it is built anew, never
        # solved or updated in place.
        lock = '"$dir"/conda.lock'
        create = f"{conda} create --yes --file {lock} --prefix {p}"
        steps = {"create": [create], "recreate": [f"rm -rf -- {p}", create],
                 "update": [f"rm -rf -- {p}", create]}
    else:
        lock = '"$dir"/environment.yml'   # conda env reads the format from the .yml suffix
        steps = {"create": [f"{conda} env create --file {lock} --prefix {p}"],
                 "recreate": [f"rm -rf -- {p}",
                              f"{conda} env create --file {lock} --prefix {p}"],
                 "update": [f"{conda} env update --file {lock} --prefix {p} --prune"]}
    return "\n".join([
        "set -e",
        # Removed before conda starts, so a half-done update is never taken for the old lock.
        f"rm -f -- {marker}",
        "dir=$(mktemp -d)",
        "trap 'rm -rf \"$dir\"' EXIT",
        f"cp -- {shlex.quote(lock_copy)} {lock}",
        *steps[action],
        f"PYTHONDONTWRITEBYTECODE=1 {p}/bin/python -B -c {shlex.quote(VERSIONS_SCRIPT)} "
        f"> {record}.tmp",
        f"mv -f -- {record}.tmp {record}",
        f"printf '%s\\n' {sha256} > {marker}.tmp",
        f"mv -f -- {marker}.tmp {marker}",
    ]) + "\n"


@operation("conda_env", [PREFIX, Setting("name", "name"), Setting("file", "str")],
           required=("prefix", "name"),
           facts=lambda a: [CondaEnv(env_path(a["prefix"], a["name"])),
                            EnvTorchVersions(env_path(a["prefix"], a["name"]))])
def conda_env(args: dict, facts: FactValues, ctx: HostContext):
    """Environment `name` is built from the lock file `file`: created, or updated with --prune
    when the lock changed, its marker holding the lock's sha256 once the build completed."""
    lock_path = Path(args.get("file") or DEFAULT_ENV_FILE)
    try:
        data = lock_path.read_bytes()
        explicit = is_explicit_lock(data)
        spec = None if explicit else yaml.safe_load(data)
    except OSError as exc:
        return Failure(f"cannot read {lock_path} on the controller: {exc.strerror}")
    except yaml.YAMLError as exc:
        return Failure(f"{lock_path} is not valid YAML: {exc}")
    if not explicit and (not isinstance(spec, dict)
                         or not isinstance(spec.get("dependencies"), list)):
        return Failure(f"{lock_path} is neither a conda environment file (no dependencies "
                       "list) nor an explicit lock (no @EXPLICIT line)")
    sha256 = hashlib.sha256(data).hexdigest()
    path = env_path(args["prefix"], args["name"])
    info = facts[CondaEnv(path)]
    if info.lock_sha256 == sha256:
        return NoChange(f"environment {path} matches {lock_path.name} ({sha256[:12]})")
    if info.is_env:
        action = "update"
        what = (f"update environment {path}: lock {info.lock_sha256[:12]} -> {sha256[:12]}"
                if info.lock_sha256 else f"complete environment {path} (its last build did "
                                         f"not finish) from {lock_path.name} ({sha256[:12]})")
    else:
        action = "recreate" if info.exists else "create"
        what = (f"create environment {path} from {lock_path.name} ({sha256[:12]})"
                + (" in place of a directory conda did not build" if info.exists else ""))
    conda = f"{args['prefix'].rstrip('/')}/bin/conda"
    shared = SharedFile("conda.lock" if explicit else "environment.yml", sha256,
                        posixpath.dirname(args["prefix"].rstrip("/")) or "/", lambda: data)
    return Change(what, (Command(env_script(conda, path, sha256, action, shared.path, explicit),
                                 needs=shared),))


@cluster_check("conda_env_versions")
def conda_env_versions(ctx: CheckContext) -> list[TaskResult]:
    """Per host, the versions the environment runs; training hosts must all run the same."""
    sessions, role = ctx.sessions, ctx.role
    facts = {name: EnvTorchVersions(env_path(ctx.variables[name]["conda_prefix"],
                                             ctx.variables[name]["conda_env_name"]))
             for name in sessions}

    def read(name: str) -> EnvVersions:
        # What the facts batch read is current unless this run (re)built the environment.
        session = sessions[name]
        if facts[name] in session.facts and not session.changed(role.name):
            return session.facts[facts[name]]
        return session.gather([facts[name]])[facts[name]]

    reports = dict(zip(facts, ctx.map(read, facts)))
    group = ctx.inventory.groups.get(TRAINING_GROUP)
    training = {n: r for n, r in reports.items()
                if (group is None or n in group.hosts) and not r.error}
    mismatch = differences(training)
    results = []
    for name, report in reports.items():
        if report.error:
            # In check mode the role has not built anything yet: nothing to compare.
            status = Status.SKIPPED if ctx.check_mode else Status.FAILED
            results.append(TaskResult(name, role.name, "environment versions", status,
                                      report.error))
        elif name in training and mismatch:
            results.append(TaskResult(name, role.name, "environment versions", Status.FAILED,
                                      f"{report.summary()}; training hosts differ in "
                                      + "; ".join(mismatch)))
        else:
            results.append(TaskResult(name, role.name, "environment versions", Status.OK,
                                      report.summary()))
    return results
