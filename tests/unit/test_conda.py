"""The conda role's pieces, run for real on this machine: facts against prefixes the installer
double builds, the role's sh scripts under sh, the controller's download cache against a
loopback HTTP server, and the cross-host comparison."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from provision.operations import conda_installer
from provision.facts.conda import (
    LOCK_MARKER,
    CondaEnv,
    CondaInstall,
    EnvTorchVersions,
    EnvVersions,
)
from provision.facts.files import PathState
from provision.facts.system import Os, OsInfo
from provision.inventory import Host
from provision.operations import REGISTRY, Change, Failure, HostContext, NoChange
from provision.facts.conda import differences
from provision.operations.conda import DEFAULT_ENV_FILE, env_path
from provision.relay.scripts import direct_script
from provision.roles import load_role

DOUBLE = Path(__file__).resolve().parents[1] / "doubles" / "miniconda-installer.sh"
HOST = Host(name="n1", address="10.0.0.1")
X86 = OsInfo("debian", (), "12", "x86_64", "apt", False)


def build_installer(directory: Path) -> Path:
    """The installer double, with the Python that has torch as the Python it installs."""
    path = directory / "Miniconda3-py311_24.7.1-0-Linux-x86_64.sh"
    path.write_text(DOUBLE.read_text().replace("\nBASE_PYTHON=python3\n",
                                               f"\nBASE_PYTHON={sys.executable}\n", 1))
    return path


def gather(fact):
    """A fact run for real, locally, as the runner would run it on a host."""
    done = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True,
                          check=False)
    return fact.parse(done.stdout, done.returncode)


def sh(script: str, stdin: bytes | None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, check=False)


@pytest.fixture(scope="module")
def installer(tmp_path_factory) -> Path:
    return build_installer(tmp_path_factory.mktemp("installer"))


def install_args(prefix: Path, installer: Path, **extra) -> dict:
    return {"prefix": str(prefix), "version": "py311_24.7.1-0", "url": "",
            "installer_path": str(installer),
            "sha256": hashlib.sha256(installer.read_bytes()).hexdigest(), **extra}


def plan_install(args: dict):
    return REGISTRY["conda_install"].plan(
        args, {Os(): X86, CondaInstall(args["prefix"]): gather(CondaInstall(args["prefix"]))},
        HostContext(HOST))


def plan_env(prefix: Path, lock: Path):
    args = {"prefix": str(prefix), "name": "train", "file": str(lock)}
    fact = CondaEnv(env_path(str(prefix), "train"))
    return REGISTRY["conda_env"].plan(args, {fact: gather(fact)}, HostContext(HOST))


def apply(outcome) -> subprocess.CompletedProcess:
    assert isinstance(outcome, Change), outcome
    (command,) = outcome.commands
    return run_with_file(command)


def run_with_file(command, data: bytes | None = None) -> subprocess.CompletedProcess:
    """As the run's relay does for a host no peer serves: the file the command needs (`data`
    in its place, if given) arrives with the command, checked, and goes after it."""
    data = command.needs.load() if data is None else data
    return sh(direct_script(command.needs.path, command.needs.sha256, len(data), command.run),
              data)


def test_install_then_no_change_and_an_update_over_another_version(tmp_path, installer):
    prefix = tmp_path / "opt" / "miniconda3"
    assert gather(CondaInstall(str(prefix))).exists is False
    first = plan_install(install_args(prefix, installer))
    assert "-u" not in first.commands[0].run.split()
    done = apply(first)
    assert done.returncode == 0, done.stderr
    info = gather(CondaInstall(str(prefix)))
    assert (info.has_conda, info.conda_version) == (True, "24.7.1")
    assert list((tmp_path / "opt").iterdir()) == [prefix]   # the pushed installer is gone
    assert isinstance(plan_install(install_args(prefix, installer)), NoChange)
    # Another release wanted: the installer runs again, with -u over the existing prefix.
    other = plan_install(install_args(prefix, installer, version="py311_24.9.2-0"))
    assert "over conda 24.7.1" in other.description and "-u" in other.commands[0].run.split()
    assert apply(other).returncode == 0


def test_real_installer_interface_refuses_an_existing_prefix(tmp_path, installer):
    (tmp_path / "p").mkdir()
    done = subprocess.run(["bash", str(installer), "-b", "-p", str(tmp_path / "p")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "use the -u option" in done.stderr
    assert list((tmp_path / "p").iterdir()) == []


def test_wrong_checksum_is_refused_on_the_controller(tmp_path, installer):
    outcome = plan_install(install_args(tmp_path / "p", installer, sha256="0" * 64))
    assert isinstance(outcome, Failure) and "refusing to install" in outcome.reason


def test_checksum_is_verified_on_the_host_before_running(tmp_path, installer):
    prefix = tmp_path / "p"
    command = plan_install(install_args(prefix, installer)).commands[0]
    tampered = command.needs.load() + b"\necho tampered\n"      # corrupted on the way
    done = run_with_file(command, tampered)
    assert done.returncode == 1 and b"the copy received has sha256" in done.stderr
    assert not prefix.exists() and list(tmp_path.iterdir()) == []
    # A copy changed on the host after it arrived: the install checks it once more.
    copy = Path(command.needs.path)
    copy.parent.mkdir()
    copy.write_bytes(tampered)
    done = sh(command.run, None)
    assert done.returncode == 1 and b"refusing to run the Miniconda installer" in done.stderr
    assert not prefix.exists()


def test_unknown_architecture_needs_a_checksum(tmp_path):
    arm = OsInfo("debian", (), "12", "ppc64le", "apt", False)
    args = {"prefix": str(tmp_path / "p"), "version": "py311_24.7.1-0"}
    outcome = REGISTRY["conda_install"].plan(
        args, {Os(): arm, CondaInstall(args["prefix"]): gather(CondaInstall(args["prefix"]))},
        HostContext(HOST))
    assert isinstance(outcome, Failure) and "set conda_installer_sha256" in outcome.reason


def test_hostile_prefix_is_quoted(tmp_path, installer):
    prefix = tmp_path / "x$(touch${IFS}PWNED)';`touch${IFS}PWNED2`"  # no spaces: Miniconda refuses them
    done = apply(plan_install(install_args(prefix, installer)))
    assert done.returncode == 0, done.stderr
    assert (prefix / "bin" / "conda").exists()
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


@pytest.fixture
def conda_root(tmp_path, installer) -> Path:
    prefix = tmp_path / "miniconda3"
    subprocess.run(["bash", str(installer), "-b", "-p", str(prefix)], check=True,
                   capture_output=True)
    return prefix


def test_env_created_then_unchanged_then_updated_when_the_lock_changes(tmp_path, conda_root):
    lock = tmp_path / "environment.yml"
    lock.write_bytes(DEFAULT_ENV_FILE.read_bytes())
    path = Path(env_path(str(conda_root), "train"))
    created = plan_env(conda_root, lock)
    assert created.description.startswith("create environment")
    done = apply(created)
    assert done.returncode == 0, done.stderr
    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    assert (path / LOCK_MARKER).read_text() == sha + "\n"
    assert subprocess.run([path / "bin" / "python", "-c", "import torch"],
                          check=False).returncode == 0
    assert isinstance(plan_env(conda_root, lock), NoChange)
    lock.write_text(lock.read_text().replace("  - tqdm=4.66.5\n", ""))
    update = plan_env(conda_root, lock)
    assert update.description.startswith(f"update environment {path}: lock {sha[:12]} -> ")
    assert "env update" in update.commands[0].run and "--prune" in update.commands[0].run
    assert apply(update).returncode == 0
    assert not list((path / "conda-meta").glob("tqdm-*.json"))      # pruned
    assert isinstance(plan_env(conda_root, lock), NoChange)


def test_interrupted_build_leaves_no_marker_and_is_completed(tmp_path, conda_root):
    lock = tmp_path / "environment.yml"
    lock.write_bytes(DEFAULT_ENV_FILE.read_bytes())
    path = Path(env_path(str(conda_root), "train"))
    (conda_root / ".double-channel").write_text("broken numpy\n")
    failed = apply(plan_env(conda_root, lock))
    assert failed.returncode == 1 and b"LinkError" in failed.stderr
    info = gather(CondaEnv(str(path)))
    assert (info.exists, info.is_env, info.lock_sha256) == (True, True, None)
    (conda_root / ".double-channel").unlink()
    resumed = plan_env(conda_root, lock)
    assert "did not finish" in resumed.description
    assert apply(resumed).returncode == 0
    assert isinstance(plan_env(conda_root, lock), NoChange)


def test_missing_package_fails_like_conda_and_creates_nothing(tmp_path, conda_root):
    (conda_root / ".double-channel").write_text("missing pytorch-cuda\n")
    done = apply(plan_env(conda_root, DEFAULT_ENV_FILE))
    assert done.returncode == 1
    assert b"PackagesNotFoundError: The following packages are not available from current " \
           b"channels:\n\n  - pytorch-cuda" in done.stderr
    assert not Path(env_path(str(conda_root), "train")).exists()


def test_a_stale_marker_goes_before_an_update_starts(tmp_path, conda_root):
    lock = tmp_path / "environment.yml"
    lock.write_bytes(DEFAULT_ENV_FILE.read_bytes())
    assert apply(plan_env(conda_root, lock)).returncode == 0
    lock.write_text(lock.read_text() + "  - tqdm=4.66.5\n")
    (conda_root / ".double-channel").write_text("broken tqdm\n")
    assert apply(plan_env(conda_root, lock)).returncode == 1
    # Even the lock the environment was last complete for no longer counts as done.
    assert gather(CondaEnv(env_path(str(conda_root), "train"))).lock_sha256 is None


def test_directory_conda_did_not_build_is_replaced(tmp_path, conda_root):
    path = Path(env_path(str(conda_root), "train"))
    path.mkdir(parents=True)
    (path / "leftover").write_text("x")
    outcome = plan_env(conda_root, DEFAULT_ENV_FILE)
    assert "in place of a directory conda did not build" in outcome.description
    assert apply(outcome).returncode == 0 and not (path / "leftover").exists()


def test_not_an_environment_file_fails(tmp_path, conda_root):
    lock = tmp_path / "environment.yml"
    lock.write_text("just: text\n")
    outcome = plan_env(conda_root, lock)
    assert isinstance(outcome, Failure) and "no dependencies list" in outcome.reason
    assert "nor an explicit lock" in outcome.reason
    assert isinstance(plan_env(conda_root, tmp_path / "absent.yml"), Failure)


def test_environment_versions_recorded_by_the_build(tmp_path, conda_root):
    path = env_path(str(conda_root), "train")
    assert gather(EnvTorchVersions(path)).error == \
        f"no environment built by provision at {path}"
    assert apply(plan_env(conda_root, DEFAULT_ENV_FILE)).returncode == 0
    report = gather(EnvTorchVersions(path))
    assert report == EnvVersions(
        hashlib.sha256(DEFAULT_ENV_FILE.read_bytes()).hexdigest(),
        python=".".join(map(str, sys.version_info[:3])), torch=torch.__version__,
        cuda=torch.version.cuda, nccl=None, cuda_available=torch.cuda.is_available())
    assert not list(Path(path).rglob("__pycache__"))   # the probe wrote nothing


def test_differences_name_each_field_and_host():
    same = EnvVersions("a", "3.11.9", "2.4.1", "12.4", "2.20.5", True)
    assert differences({"h1": same, "h2": same}) == []
    other = EnvVersions("b", "3.11.9", "2.4.0", "12.4", "2.20.5", True)
    assert differences({"h1": same, "h2": other}) == ["torch: h1=2.4.1, h2=2.4.0",
                                                      "lock_sha256: h1=a, h2=b"]


def test_condarc_template_sets_mirrors():
    role = load_role("conda")
    variables = role.variables({"conda_channels": ["https://mirror/c/pytorch", "nvidia"],
                                "conda_channel_alias": "https://mirror/conda"})
    outcome = REGISTRY["template"].plan(
        {"src": "condarc.j2", "dest": "/opt/miniconda3/.condarc"},
        {PathState("/opt/miniconda3/.condarc", True): None},
        HostContext(HOST, role.path, variables))
    assert yaml.safe_load(outcome.commands[0].stdin) == {
        "channel_alias": "https://mirror/conda",
        "channels": ["https://mirror/c/pytorch", "nvidia"]}


def test_conda_version_of_a_release():
    assert conda_installer.conda_version("py311_24.7.1-0") == "24.7.1"
    with pytest.raises(ValueError):
        conda_installer.conda_version("latest")


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server for tmp_path/www that counts the requests it answers."""
    (tmp_path / "www").mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "www"), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/", tmp_path / "www", requests
    httpd.shutdown()


def test_download_once_for_all_hosts_and_runs(tmp_path, server, monkeypatch):
    base, www, requests = server
    data = b"#!/bin/sh\necho installer\n" * 1000
    (www / "Miniconda3-test.sh").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setattr(conda_installer, "_LOADED", {})
    with ThreadPoolExecutor(8) as pool:   # eight hosts planned at once
        got = list(pool.map(lambda _: conda_installer.resolve(
            "", base + "Miniconda3-test.sh", sha, cache), range(8)))
    assert len(requests) == 1 and {g.data for g in got} == {data}
    assert got[0].name == "Miniconda3-test.sh"
    monkeypatch.setattr(conda_installer, "_LOADED", {})   # a later run: served from the cache
    assert conda_installer.resolve("", base + "Miniconda3-test.sh", sha, cache).data == data
    assert len(requests) == 1


def test_download_with_wrong_checksum_is_refused_and_not_cached(tmp_path, server, monkeypatch):
    base, www, _ = server
    (www / "bad.sh").write_bytes(b"tampered")
    monkeypatch.setattr(conda_installer, "_LOADED", {})
    cache = tmp_path / "cache"
    with pytest.raises(conda_installer.InstallerError, match="refusing to install"):
        conda_installer.resolve("", base + "bad.sh", "1" * 64, cache)
    assert [p.name for p in cache.iterdir()] == [".lock"]
    with pytest.raises(conda_installer.InstallerError, match="cannot download"):
        conda_installer.resolve("", base + "absent.sh", "1" * 64, cache)


EXPLICIT_LOCK = """\
# Generated by conda-lock.
# platform: linux-64
@EXPLICIT
https://conda.anaconda.org/conda-forge/linux-64/python-3.11.9-hb806964_0_cpython.conda#0f1a
https://conda.anaconda.org/pytorch/linux-64/pytorch-2.4.1-py3.11_cuda12.4_cudnn9.1.0_0.tar.bz2#77
"""


def test_explicit_lock_is_built_as_written_and_rebuilt_when_it_changes(tmp_path, conda_root):
    lock = tmp_path / "conda-linux-64.lock"
    lock.write_text(EXPLICIT_LOCK)
    created = plan_env(conda_root, lock)
    (command,) = created.commands
    assert "create --yes --file" in command.run and " env " not in command.run
    assert apply(created).returncode == 0
    path = Path(env_path(str(conda_root), "train"))
    records = sorted(p.name for p in (path / "conda-meta").glob("*.json"))
    assert records == ["python-3.11.9-hb806964_0_cpython.json",
                       "pytorch-2.4.1-py3.11_cuda12.4_cudnn9.1.0_0.json"]
    assert isinstance(plan_env(conda_root, lock), NoChange)
    lock.write_text(EXPLICIT_LOCK.replace("2.4.1", "2.5.0"))
    rebuilt = plan_env(conda_root, lock)
    assert rebuilt.commands[0].run.count("rm -rf --") == 1
    assert apply(rebuilt).returncode == 0
    assert [p.name for p in (path / "conda-meta").glob("pytorch-*.json")] == \
        ["pytorch-2.5.0-py3.11_cuda12.4_cudnn9.1.0_0.json"]
    assert isinstance(plan_env(conda_root, lock), NoChange)


def test_planning_from_a_url_downloads_nothing_until_the_installer_is_needed(tmp_path, server,
                                                                              monkeypatch):
    """--check only plans: it must not download the installer (issue 10)."""
    base, www, requests = server
    data = b"#!/bin/sh\necho installer\n"
    (www / "Miniconda3-test.sh").write_bytes(data)
    monkeypatch.setattr(conda_installer, "_LOADED", {})
    monkeypatch.setattr(conda_installer, "CACHE_DIR", tmp_path / "cache")
    args = {"prefix": str(tmp_path / "opt" / "miniconda3"), "version": "py311_24.7.1-0",
            "url": base + "Miniconda3-test.sh", "installer_path": "",
            "sha256": hashlib.sha256(data).hexdigest()}
    outcome = plan_install(args)
    assert isinstance(outcome, Change) and requests == []
    (command,) = outcome.commands
    assert command.needs.name == "Miniconda3-test.sh"
    assert command.needs.load() == data and len(requests) == 1
