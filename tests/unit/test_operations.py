"""Operations, data-driven: cases/operations/*.yaml give args + facts and the expected outcome.

Every content-writing Change is also run for real, locally under sh, against a hostile path in
tmp_path: the file must be written exactly and no injected command may run.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.facts.files import CommandStatus, PathInfo, PathState
from provision.facts.nvidia import SEPARATOR, NvidiaGpus
from provision.facts.system import (CommandsPresent, DiskFree, FreeSpace, InstalledPackages, Os,
                                    OsInfo, ServiceState)
from provision.inventory import Host
from provision.operations import REGISTRY, Change, Command, HostContext, NoChange
from provision.operations.files import BACKUP_SUFFIX, write_file_script

CASES_DIR = Path(__file__).resolve().parent / "cases" / "operations"
REPO = Path(__file__).resolve().parents[2]
NVIDIA_CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia"
# Operations whose plans need more than small data (real commands, a real installer, captured
# chrony and mount output...): each is planned by its own module, which must name it.
PLANNED_ELSEWHERE = {
    "chrony_waitsync": "test_clock.py", "ntp_check": "test_clock.py",
    "conda_env": "test_conda.py", "conda_install": "test_conda.py",
    "firewall_open": "test_firewall.py",
    "nfs_export": "test_nfs.py", "nfs_fstab": "test_nfs.py", "nfs_mount": "test_nfs.py",
    "nfs_packages": "test_nfs.py",
}
HOST = Host(name="n1", address="10.0.0.1")


def load_cases():
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            yield pytest.param(case, id=f"{path.stem}: {case['name']}")


def path_info(spec: dict | None, fact: PathState) -> PathInfo | None:
    if spec is None:
        return None
    content = spec.get("content")
    data = content.encode() if isinstance(content, str) else None
    sha = spec.get("sha256") or (hashlib.sha256(data).hexdigest() if data is not None else None)
    size = spec.get("size", len(data) if data is not None else 4096)
    return PathInfo(spec["kind"], spec["mode"], spec["owner"], spec["group"], size, sha,
                    data if fact.with_content else None)


def os_info(spec: dict) -> OsInfo:
    return OsInfo(id=spec.get("id", "debian"), id_like=tuple(spec.get("id_like", ())),
                  version=str(spec.get("version", "12")), arch=spec.get("arch", "x86_64"),
                  package_manager=spec.get("package_manager", "apt"),
                  systemd=spec.get("systemd", False))


def fact_key(fact, given: dict) -> str:
    """A fact's entry in a case: `Class(first argument)` where the case names it so (an operation
    may ask two facts of one class: two paths, say), else `Class`."""
    first = next(iter(vars(fact).values()), "")
    named = f"{type(fact).__name__}({first})"
    return named if named in given else type(fact).__name__


def test_a_case_tells_two_facts_of_one_class_apart_by_their_argument():
    src, dest = PathState("/etc/a"), PathState("/etc/b")
    given = {"PathState(/etc/a)": None, "PathState(/etc/b)": {"kind": "directory"}}
    assert [fact_key(f, given) for f in (src, dest)] == list(given)
    assert fact_key(Os(), {"Os": {}}) == "Os"


def fact_value(fact, spec):
    if isinstance(fact, PathState):
        return path_info(spec, fact)
    if isinstance(fact, Os):
        return os_info(spec)
    if isinstance(fact, InstalledPackages):
        return frozenset(spec)
    if isinstance(fact, ServiceState):
        return tuple(spec)
    if isinstance(fact, CommandStatus):
        return int(spec)
    if isinstance(fact, CommandsPresent):         # the commands found on the host
        return frozenset(spec)
    if isinstance(fact, FreeSpace):
        return DiskFree(spec["path"], int(spec["free_gb"] * 2**30))
    if isinstance(fact, NvidiaGpus):              # a scenario captured from real GPUs
        captures = NVIDIA_CAPTURES / spec
        return fact.parse(f"{(captures / 'query-gpu.txt').read_text()}\n{SEPARATOR}\n"
                          f"{(captures / 'q-compute.txt').read_text()}",
                          int((captures / "exit-status").read_text()))
    raise AssertionError(f"no mapping for fact {fact!r}")


def role_dir_for(case: dict, tmp_path: Path) -> Path:
    """The case's role folder: one of the repository's (`role_dir`), or one made of the case's
    own templates and files."""
    if "role_dir" in case:
        return REPO / case["role_dir"]
    role = tmp_path / "role"
    for sub, key in (("templates", "templates"), ("files", "files")):
        (role / sub).mkdir(parents=True, exist_ok=True)
        for name, text in (case.get(key) or {}).items():
            (role / sub / name).write_text(text)
    return role


def resolve_args(args: dict, role: Path) -> dict:
    """Fills `{sha256:FILE}` and `{sha256:FILE:upper}` from the role's files/."""
    resolved = {}
    for key, value in args.items():
        if isinstance(value, str) and value.startswith("{sha256:"):
            name, *upper = value[len("{sha256:"):-1].split(":")
            digest = hashlib.sha256((role / "files" / name).read_bytes()).hexdigest()
            value = digest.upper() if upper else digest
        resolved[key] = value
    return resolved


def plan(case: dict, tmp_path: Path):
    op = REGISTRY[case["op"]]
    role = role_dir_for(case, tmp_path)
    args = resolve_args(case["args"], role)
    wanted = op.facts(args)
    given = case.get("facts") or {}
    keys = {fact: fact_key(fact, given) for fact in wanted}
    assert sorted(keys.values()) == sorted(given), \
        "the case must give exactly the facts the operation asks for"
    facts = {fact: fact_value(fact, given[key]) for fact, key in keys.items()}
    ctx = HostContext(HOST, role_dir=role, variables=case.get("variables") or {})
    return op.plan(args, facts, ctx), role


@pytest.mark.parametrize("case", list(load_cases()))
def test_operation_case(case, tmp_path):
    outcome, role = plan(case, tmp_path)
    expected = case["expected"]
    assert type(outcome).__name__ == expected["outcome"], outcome
    if isinstance(outcome, Change):
        assert expected["description"].format(role_dir=role) in outcome.description
        if "commands" in expected:
            got = [{"run": c.run, "stdin": c.stdin} for c in outcome.commands]
            want = [{"run": c["run"],
                     "stdin": c["stdin"].encode() if "stdin" in c else None}
                    for c in expected["commands"]]
            assert got == want
        if "stdin" in expected:
            assert len(outcome.commands) == 1
            assert outcome.commands[0].stdin == expected["stdin"].encode()
        for part in expected.get("script_has", []):
            assert part in outcome.commands[0].run
        if "diff" in expected:
            if expected["diff"] is None:
                assert outcome.diff is None
            else:
                for part in expected["diff"]:
                    assert part in outcome.diff.splitlines(), outcome.diff
    else:
        assert expected["reason"].format(role_dir=role) in outcome.reason
        assert not {"commands", "description", "stdin", "diff"} & set(expected)


def test_every_registered_operation_has_cases():
    """A new operation fails this until it has data cases, or a module that plans it."""
    ops = {case.values[0]["op"] for case in load_cases()}
    assert ops <= set(REGISTRY)
    assert not ops & set(PLANNED_ELSEWHERE), "listed as planned elsewhere, yet has data cases"
    assert set(REGISTRY) - ops == set(PLANNED_ELSEWHERE), \
        f"operations without cases: {sorted(set(REGISTRY) - ops - set(PLANNED_ELSEWHERE))}"
    here = Path(__file__).parent
    for op, module in PLANNED_ELSEWHERE.items():
        assert f'"{op}"' in (here / module).read_text(), f"{module} does not plan {op}"


def test_command_needs_exactly_one_of_argv_and_script():
    op = REGISTRY["command"]
    ctx = HostContext(HOST)
    with pytest.raises(ValueError, match="exactly one of argv and script"):
        op.plan({}, {}, ctx)
    with pytest.raises(ValueError, match="exactly one of argv and script"):
        op.plan({"argv": ["true"], "script": "true"}, {}, ctx)


def test_bad_mode_is_refused():
    op = REGISTRY["file"]
    with pytest.raises(ValueError, match="mode must be octal like 0644, got '0698'"):
        op.plan({"path": "/x", "mode": "0698"}, {PathState("/x"): None}, HostContext(HOST))


# --- running the generated commands for real, against hostile paths ---------------------------

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def hostile_paths(tmp_path: Path) -> list[Path]:
    """Paths whose names try to run `touch` (relative and absolute) when mis-quoted."""
    canary = tmp_path / "pwned"
    return [
        tmp_path / "a b;$(touch pwned)'\"",
        tmp_path / f"a b;$(touch {canary})'\"",     # the / make it a nested directory name
        tmp_path / "`touch pwned` x\\y*",
        tmp_path / "-n; touch pwned #",
    ]


def gather(fact: PathState):
    out = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True, timeout=10)
    return fact.parse(out.stdout, out.returncode)


def apply(op_name: str, args: dict, tmp_path: Path, role: Path | None = None, variables=None):
    """Plan with facts gathered locally, run the commands locally; returns the outcome."""
    op = REGISTRY[op_name]
    ctx = HostContext(HOST, role_dir=role, variables=variables or {})
    outcome = op.plan(args, {f: gather(f) for f in op.facts(args)}, ctx)
    if isinstance(outcome, Change):
        for command in outcome.commands:
            if isinstance(command.run, list):
                result = subprocess.run(command.run, capture_output=True, cwd=tmp_path, timeout=10)
            else:
                result = subprocess.run(["sh", "-c", command.run], input=command.stdin or b"",
                                        capture_output=True, cwd=tmp_path, timeout=10)
            assert result.returncode == 0, result.stderr
    return outcome


def assert_not_injected(tmp_path: Path):
    assert not (tmp_path / "pwned").exists(), "an injected command ran"
    left = [p for p in tmp_path.rglob("*") if re.search(r"\.provision-[A-Za-z0-9]{6}$", p.name)
            and not p.name.endswith(BACKUP_SUFFIX)]
    assert not left, "a temporary file was left behind"


@pytest.fixture
def role(tmp_path):
    role = tmp_path / "role"
    (role / "templates").mkdir(parents=True)
    (role / "files").mkdir()
    (role / "templates" / "t.j2").write_text("hello {{ who }}\n$(touch pwned) `touch pwned`\n")
    (role / "files" / "blob").write_bytes(bytes(range(256)))
    return role


WRITERS = {
    "file content": ("file", lambda p: {"path": p, "content": "x=1\n'$(touch pwned)'\n",
                                        "mode": "0640"},
                     b"x=1\n'$(touch pwned)'\n"),
    "file empty": ("file", lambda p: {"path": p, "mode": "600"}, b""),
    "template": ("template", lambda p: {"src": "t.j2", "dest": p, "backup": True},
                 b"hello world\n$(touch pwned) `touch pwned`\n"),
    "line_in_file": ("line_in_file", lambda p: {"path": p, "line": "k=$(touch pwned)"},
                     b"k=$(touch pwned)\n"),
    "copy": ("copy", lambda p: {"src": "blob", "dest": p, "owner": ME, "group": MY_GROUP},
             bytes(range(256))),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_written_files_are_exact_with_hostile_paths(writer, tmp_path, role):
    op_name, make_args, content = WRITERS[writer]
    for path in hostile_paths(tmp_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        args = make_args(str(path))
        first = apply(op_name, args, tmp_path, role, {"who": "world"})
        assert isinstance(first, Change), first
        assert path.read_bytes() == content
        again = apply(op_name, args, tmp_path, role, {"who": "world"})
        assert isinstance(again, NoChange), again
        assert_not_injected(tmp_path)


def test_updates_keep_a_backup_and_replace_atomically(tmp_path):
    path = tmp_path / "fstab; $(touch pwned)"
    path.write_text("old line\n")
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    outcome = apply("line_in_file", {"path": str(path), "line": "new line"}, tmp_path)
    assert isinstance(outcome, Change) and "+new line" in outcome.diff
    assert path.read_text() == "old line\nnew line\n"
    assert Path(str(path) + BACKUP_SUFFIX).read_text() == "old line\n"
    assert path.stat().st_ino != inode, "a new file is renamed over the old one"
    assert_not_injected(tmp_path)


def test_file_absent_and_directory_with_hostile_paths(tmp_path):
    for path in hostile_paths(tmp_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        args = {"path": str(path), "state": "directory", "mode": "0711", "owner": ME}
        assert isinstance(apply("file", args, tmp_path), Change)
        assert path.is_dir() and oct(path.stat().st_mode & 0o7777) == "0o711"
        assert isinstance(apply("file", args, tmp_path), NoChange)
        (path / "inner").write_text("x")
        assert isinstance(apply("file", {"path": str(path), "state": "absent"}, tmp_path), Change)
        assert not path.exists()
        assert isinstance(apply("file", {"path": str(path), "state": "absent"}, tmp_path),
                          NoChange)
        assert_not_injected(tmp_path)


def test_mode_fix_on_existing_file_with_hostile_path(tmp_path):
    path = tmp_path / "m $(touch pwned)"
    path.write_text("keep\n")
    args = {"path": str(path), "content": "keep\n", "mode": "0604"}
    outcome = apply("file", args, tmp_path)
    assert isinstance(outcome, Change) and outcome.description.startswith("set mode/owner")
    assert oct(path.stat().st_mode & 0o7777) == "0o604" and path.read_text() == "keep\n"
    assert isinstance(apply("file", args, tmp_path), NoChange)
    assert_not_injected(tmp_path)


def test_setuid_mode_survives_the_owner_change(tmp_path):
    # chown clears the set-user-ID bit, so the mode must be set after the owner.
    path = tmp_path / "tool"
    script = write_file_script(str(path), {"mode": "4755", "owner": ME})
    subprocess.run(["sh", "-c", script], input=b"#!/bin/sh\n", check=True, timeout=10)
    assert oct(path.stat().st_mode & 0o7777) == "0o4755"
    path.chmod(0o755)
    args = {"path": str(path), "mode": "4755", "owner": ME}
    assert isinstance(apply("file", args, tmp_path), Change)
    assert oct(path.stat().st_mode & 0o7777) == "0o4755"
    assert isinstance(apply("file", args, tmp_path), NoChange)


def test_a_failing_step_fails_the_whole_script(tmp_path):
    # A chown to a user that does not exist must not be hidden by a chmod that succeeds.
    path = tmp_path / "d"
    outcome = REGISTRY["file"].plan(
        {"path": str(path), "state": "directory", "mode": "0700", "owner": "no-such-user-x"},
        {PathState(str(path)): None}, HostContext(HOST))
    [command] = outcome.commands
    result = subprocess.run(["sh", "-c", command.run], capture_output=True, timeout=10)
    assert result.returncode != 0


def test_write_script_failure_leaves_the_target_and_no_temporary(tmp_path):
    path = tmp_path / "conf"
    path.write_text("original\n")
    script = write_file_script(str(path), {"owner": "no-such-user-x"})
    result = subprocess.run(["sh", "-c", script], input=b"new\n", capture_output=True,
                            timeout=10)
    assert result.returncode != 0
    assert path.read_text() == "original\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_command_change_is_the_plain_argv():
    outcome = REGISTRY["command"].plan({"argv": ["echo", "$(touch pwned)"]}, {},
                                       HostContext(HOST))
    assert outcome.commands == (Command(["echo", "$(touch pwned)"]),)
