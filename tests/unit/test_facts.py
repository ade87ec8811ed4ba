"""Fact parsers fed with output captured from a real host (tests/fixtures/facts), and batching."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.facts import batch_script, split_batch_output
from provision.facts.files import MAX_CONTENT_BYTES, CommandStatus, PathInfo, PathState
from provision.facts.system import CommandsPresent, InstalledPackages, Os, OsInfo, ServiceState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
FACTS = {c.__name__: c for c in (PathState, Os, InstalledPackages, CommandsPresent, ServiceState)}


def captured(name: str):
    """(fact, parsed value) of a captured fixture; also checks it is the fact's current command."""
    folder = FIXTURES / name
    spec = yaml.safe_load((folder / "fact.yaml").read_text())
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
    fact = FACTS[spec["fact"]](**args)
    assert fact.command() == (folder / "command").read_text(), \
        f"{spec['fact']}'s command changed since {name} was captured: recapture it " \
        "(python tests/fixtures/facts/capture.py)"
    stdout = (folder / "stdout").read_text()
    rc = int((folder / "rc").read_text())
    return fact, fact.parse(stdout, rc)


def test_path_regular_file_with_content():
    fact, info = captured("path-file-with-content")
    assert isinstance(info, PathInfo)
    assert info.kind == "file" and info.owner == "root" and info.group == "root"
    assert len(info.mode) == 3 and set(info.mode) <= set("01234567")
    assert info.size == len(info.content) > 0
    assert info.sha256 == hashlib.sha256(info.content).hexdigest()


def test_path_regular_file_without_content():
    _, info = captured("path-file")
    _, with_content = captured("path-file-with-content")
    assert info.content is None
    assert (info.kind, info.sha256, info.size) == \
        (with_content.kind, with_content.sha256, with_content.size)


def test_path_empty_file_has_empty_content():
    _, info = captured("path-empty-file")
    assert (info.kind, info.size, info.content) == ("file", 0, b"")
    assert info.sha256 == hashlib.sha256(b"").hexdigest()


def test_path_directory():
    _, info = captured("path-directory")
    assert (info.kind, info.mode, info.owner) == ("directory", "755", "root")
    assert info.sha256 is None and info.content is None


def test_path_symlink_is_not_followed():
    _, info = captured("path-link")
    assert info.kind == "link" and info.sha256 is None


def test_path_missing():
    _, info = captured("path-missing")
    assert info is None


def test_path_failure_is_an_error():
    with pytest.raises(ValueError, match="cannot inspect /x: exit code 1"):
        PathState("/x").parse("", 1)


def test_path_large_file_content_is_not_fetched():
    # The shape the command prints for a file over MAX_CONTENT_BYTES: stat and sha256 only.
    sha = "ab" * 32
    info = PathState("/big", with_content=True).parse(
        f"regular file|600|app|app|{MAX_CONTENT_BYTES + 1}\n{sha}\n", 0)
    assert (info.kind, info.mode, info.owner, info.size, info.sha256, info.content) == \
        ("file", "600", "app", MAX_CONTENT_BYTES + 1, sha, None)


def test_path_state_command_quotes_the_path(tmp_path):
    # The fact runs for real against a hostile file name and describes it.
    path = tmp_path / "a b;$(touch pwned)'\"x"
    path.write_bytes(b"hello\n")
    fact = PathState(str(path), with_content=True)
    out = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True,
                         cwd=tmp_path)
    info = fact.parse(out.stdout, out.returncode)
    assert (info.kind, info.size, info.content) == ("file", 6, b"hello\n")
    assert not (tmp_path / "pwned").exists()


def test_os_debian_host():
    _, info = captured("os")
    assert isinstance(info, OsInfo)
    assert (info.id, info.version, info.package_manager, info.family) == \
        ("debian", "12", "apt", "debian")
    assert info.arch == "x86_64"
    assert info.systemd is False  # captured in a container without systemd


def test_os_rhel_like_host():
    info = Os().parse('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
                      'VERSION_ID="9.3"\nARCH=aarch64\nPM=dnf\nSYSTEMD=1\n', 0)
    assert (info.id, info.id_like, info.version, info.arch, info.package_manager,
            info.systemd, info.family) == \
        ("rocky", ("rhel", "centos", "fedora"), "9.3", "aarch64", "dnf", True, "redhat")
    assert Os().parse("ID=alpine\n", 0).package_manager is None
    assert Os().parse("ID=alpine\n", 0).family == "unknown"


def test_installed_packages():
    fact, installed = captured("packages")
    assert installed == frozenset({"openssh-server"})
    assert "nonexistent-pkg" in fact.names


def test_installed_packages_ignores_removed_but_configured():
    stdout = "openssh-server installed\nchrony config-files\nvim not-installed\n"
    assert InstalledPackages(("openssh-server", "chrony", "vim")).parse(stdout, 0) == \
        frozenset({"openssh-server"})


def test_commands_present():
    _, present = captured("commands")
    assert present == frozenset({"sh"})


def test_service_state_captured():
    _, state = captured("service-enabled-inactive")
    assert state == (True, False)


@pytest.mark.parametrize("stdout,expected", [
    ("enabled active\n", (True, True)),
    ("disabled inactive\n", (False, False)),
    ("enabled inactive\n", (True, False)),
    ("masked failed\n", (False, False)),
    ("\n", (False, False)),
])
def test_service_state_words(stdout, expected):
    assert ServiceState("chrony").parse(stdout, 0) == expected


def test_command_status_is_the_exit_code():
    assert CommandStatus("test -e /x").parse("", 1) == 1
    assert CommandStatus("true").command() == "true"


def run_batch(facts, **kwargs):
    script, marker = batch_script(facts, **kwargs)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    return split_batch_output(out.stdout, marker, len(facts))


def test_batch_of_real_facts_splits_back_per_fact(tmp_path):
    target = tmp_path / "hello"
    target.write_text("hi")
    facts = [
        PathState(str(target), with_content=True),
        CommandStatus("printf 'no newline at end'"),
        CommandStatus("echo out; echo err >&2; exit 3"),
        CommandStatus("true"),
        CommandStatus("printf 'two\\n\\nblank lines\\n\\n'"),
        PathState(str(tmp_path / "missing")),
        CommandsPresent(("sh",)),
    ]
    results = run_batch(facts)
    assert len(results) == len(facts)
    assert facts[0].parse(*results[0]).content == b"hi"
    assert results[1] == ("no newline at end", 0)
    assert results[2] == ("out\n", 3)          # stderr discarded, exit status kept
    assert results[3] == ("", 0)
    assert results[4] == ("two\n\nblank lines\n\n", 0)
    assert facts[5].parse(*results[5]) is None
    assert facts[6].parse(*results[6]) == frozenset({"sh"})


def test_batch_fact_exit_does_not_stop_the_batch():
    results = run_batch([CommandStatus("exit 7"), CommandStatus("echo after")])
    assert results == [("", 7), ("after\n", 0)]


def test_batch_fact_cannot_read_the_script_from_stdin():
    # Each fact gets </dev/null, so `cat` cannot swallow the rest of the batch.
    results = run_batch([CommandStatus("cat"), CommandStatus("echo still here")])
    assert results == [("", 0), ("still here\n", 0)]


def test_batch_markers_are_random_and_can_be_fixed():
    (_, m1), (_, m2) = batch_script([Os()]), batch_script([Os()])
    assert m1 != m2 and m1.startswith("@@PROVISION-")
    script, marker = batch_script([Os()], marker="@@M")
    assert marker == "@@M" and "@@M" in script


def test_split_reports_truncated_output():
    _, marker = batch_script([Os(), Os()], marker="@@M")
    with pytest.raises(ValueError, match=r"no result for facts \[1\]"):
        split_batch_output("x\n\n@@M 0 0\npartial", marker, 2)


def test_split_ignores_lines_that_only_contain_the_marker_text():
    stdout = "say @@M 0 9\n\n@@M 0 0\n"
    assert split_batch_output(stdout, "@@M", 1) == [("say @@M 0 9\n", 0)]


def test_base64_content_roundtrip_through_real_sh(tmp_path):
    data = bytes(range(256)) * 4
    target = tmp_path / "bin"
    target.write_bytes(data)
    [(stdout, rc)] = run_batch([PathState(str(target), with_content=True)])
    info = PathState(str(target), with_content=True).parse(stdout, rc)
    assert info.content == data
    assert stdout.splitlines()[2] == base64.b64encode(data).decode()


@pytest.mark.parametrize("name", sorted(p.parent.name for p in FIXTURES.glob("*/fact.yaml")))
def test_every_fixture_was_captured_with_its_facts_current_command(name):
    captured(name)       # fails, naming the fixture, when the fact's command has moved on
