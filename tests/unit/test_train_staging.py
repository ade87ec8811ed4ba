"""plan_staging (in place, copied, --sync) and stage(), whose remote side runs for real under
the local sh: a LocalConnection stands in for the SSH connection only, and the "node's" files
live in a tmp directory."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from provision.connection import CommandResult
from provision.errors import TrainError
from provision.inventory import Host
from provision.session import HostSession
from provision.train.staging import Staging, plan_staging, stage, stage_all


class LocalConnection:
    """Stands in for connection.HostConnection: run() executes the command under local sh."""

    def __init__(self):
        self.host = Host("node1", "10.9.0.1")
        self.commands: list[str] = []

    def run(self, command, *, sudo=False, stdin=None, timeout=None, on_line=None, on_sent=None):
        assert isinstance(command, str)
        self.commands.append(command)
        done = subprocess.run(["sh", "-c", command], input=stdin or b"", capture_output=True,
                              timeout=timeout or 30)
        return CommandResult(command, done.returncode, done.stdout.decode(errors="replace"),
                             done.stderr.decode(errors="replace"))


@pytest.fixture
def session():
    return HostSession(LocalConnection())


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- plan_staging -----------------------------------------------------------------------------

def test_script_under_the_shared_mount_is_used_in_place(tmp_path):
    shared = tmp_path / "shared"
    (shared / "team").mkdir(parents=True)
    script = shared / "team" / "train.py"
    script.write_text("print(1)\n")

    staging = plan_staging(script, None, str(shared), "/runs/r1")

    assert staging == Staging(workdir=str(shared / "team"), script=str(script))
    assert staging.source is None and staging.target is None


def test_script_elsewhere_is_copied_into_the_run_dir(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    (tmp_path / "shared").mkdir()

    for shared in (str(tmp_path / "shared"), None):
        staging = plan_staging(script, None, shared, "/runs/r1")
        assert staging == Staging("/runs/r1", "/runs/r1/train.py", script, "/runs/r1",
                                  fresh=True)


def test_a_relative_script_path_is_resolved(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text("")
    monkeypatch.chdir(tmp_path)
    staging = plan_staging(Path("train.py"), None, None, "/runs/r1")
    assert staging.source == tmp_path / "train.py"


def test_sync_dir_containing_the_script(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    script = project / "src" / "train.py"
    script.write_text("")

    staging = plan_staging(script, project, None, "/data/runs/r1")

    # The synced copy lives beside the runs, so the next run finds it and sends changes only.
    assert staging == Staging("/data/runs/sync/project", "/data/runs/sync/project/src/train.py",
                              project, "/data/runs/sync/project")


def test_sync_beats_the_shared_mount(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("")
    staging = plan_staging(project / "train.py", project, str(tmp_path), "/runs/r1")
    assert staging.source == project and staging.target == "/runs/sync/project"


def test_missing_script_is_an_error(tmp_path):
    with pytest.raises(TrainError, match="no such training script"):
        plan_staging(tmp_path / "nope.py", None, None, "/runs/r1")
    (tmp_path / "dir.py").mkdir()
    with pytest.raises(TrainError, match="no such training script"):
        plan_staging(tmp_path / "dir.py", None, None, "/runs/r1")


def test_sync_dir_must_contain_the_script(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    script = tmp_path / "a" / "train.py"
    script.write_text("")
    with pytest.raises(TrainError, match=r"--sync .*/b must contain the script .*/a/train\.py"):
        plan_staging(script, tmp_path / "b", None, "/runs/r1")
    # A sibling whose name has the sync dir's as prefix is not inside it.
    (tmp_path / "a2").mkdir()
    other = tmp_path / "a2" / "train.py"
    other.write_text("")
    with pytest.raises(TrainError, match="must contain the script"):
        plan_staging(other, tmp_path / "a", None, "/runs/r1")


# --- stage() ----------------------------------------------------------------------------------

def test_nothing_is_sent_for_a_script_used_in_place(session, tmp_path):
    assert stage(session, Staging(str(tmp_path), str(tmp_path / "t.py"))) == 0
    assert session.connection.commands == []


def test_copy_a_single_script_then_nothing_then_the_change(session, tmp_path):
    script = tmp_path / "local" / "train.py"
    script.parent.mkdir()
    script.write_text("print('v1')\n")
    run_dir = tmp_path / "node" / "runs" / "r1"
    staging = plan_staging(script, None, None, str(run_dir))

    # A run's own directory is new: the script is sent in one round trip, nothing read first.
    assert stage(session, staging) == 1 and session.round_trips == 1
    assert tree(run_dir) == {"train.py": b"print('v1')\n"}
    # Where the target may already hold files, what is there is compared first.
    existing = dataclasses.replace(staging, fresh=False)
    assert stage(session, existing) == 0
    script.write_text("print('v2')\n")
    assert stage(session, existing) == 1
    assert tree(run_dir) == {"train.py": b"print('v2')\n"}


HOSTILE = ["with space.py", "it's.py", 'say "hi".py', "$(touch PWNED).py", "`touch PWNED`.py",
           "semi;colon.py", "-dash.py", "star*.py", "ünïcödé.py"]


def make_project(root: Path) -> None:
    (root / "pkg" / "deep").mkdir(parents=True)
    (root / "train.py").write_text("import pkg\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "deep" / "model.py").write_text("W = 1\n")
    (root / "empty.txt").write_text("")
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)
    for name in HOSTILE:
        (root / "pkg" / name).write_text(f"# {name}\n")
    # Never sent.
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


def test_sync_sends_everything_then_nothing_then_exactly_the_changed_file(session, tmp_path):
    project = tmp_path / "local" / "project"
    make_project(project)
    staging = plan_staging(project / "train.py", project, None, str(tmp_path / "node/runs/r1"))
    target = Path(staging.target)
    expected = {k: v for k, v in tree(project).items()
                if not k.startswith(("__pycache__/", ".git/"))}

    sent = stage(session, staging)

    assert sent == len(expected) == 5 + len(HOSTILE)
    assert tree(target) == expected
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))

    assert stage(session, staging) == 0

    (project / "pkg" / "deep" / "model.py").write_text("W = 2\n")
    assert stage(session, staging) == 1
    assert (target / "pkg" / "deep" / "model.py").read_text() == "W = 2\n"

    (project / "pkg" / "it's.py").write_text("changed\n")
    (project / "pkg" / "new file.py").write_text("new\n")
    assert stage(session, staging) == 2
    assert tree(target) == {k: v for k, v in tree(project).items()
                            if not k.startswith(("__pycache__/", ".git/"))}


def test_a_file_changed_on_the_node_is_sent_again(session, tmp_path):
    project = tmp_path / "project"
    make_project(project)
    staging = plan_staging(project / "train.py", project, None, str(tmp_path / "node/runs/r1"))
    stage(session, staging)
    (Path(staging.target) / "train.py").write_text("edited on the node\n")
    (Path(staging.target) / "pkg" / "deep" / "model.py").unlink()

    assert stage(session, staging) == 2
    assert (Path(staging.target) / "train.py").read_text() == "import pkg\n"


def test_hostile_target_directory(session, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("x\n")
    run_dir = tmp_path / "node" / "run $(touch PWNED) 'q' \"d\""
    staging = plan_staging(script, None, None, str(run_dir))

    assert stage(session, staging) == 1
    assert stage(session, dataclasses.replace(staging, fresh=False)) == 0
    assert tree(run_dir) == {"train.py": b"x\n"}
    assert not list(tmp_path.rglob("PWNED"))


def test_a_failed_copy_names_the_node(session, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("x\n")
    blocker = tmp_path / "file"
    blocker.write_text("")         # a file where the run directory should be made
    staging = plan_staging(script, None, None, str(blocker / "run"))
    with pytest.raises(TrainError, match=r"^node1: copying the training files to .*/file/run "
                                         r"failed: exit code 1"):
        stage(session, staging)


@pytest.mark.parametrize("name", ["back\\slash.py", "new\nline.py", "car\rriage.py",
                                  "form\x0cfeed.py", "line\u2028sep.py"])
def test_names_sha256sum_escapes_are_not_resent(session, tmp_path, name):
    # GNU sha256sum prints "\\<digest>  <escaped name>" for names with a backslash, newline or
    # CR; other line-breaking characters (str.splitlines' idea of a line) come through as is.
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("")
    (project / name).write_text("odd\n")
    staging = plan_staging(project / "train.py", project, None, str(tmp_path / "node/runs/r1"))

    assert stage(session, staging) == 2
    assert (Path(staging.target) / name).read_text() == "odd\n"
    assert stage(session, staging) == 0


def test_a_node_that_cannot_be_staged_is_named_not_raised(tmp_path, session):
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    blocker = tmp_path / "node-disk"
    blocker.write_text("a file where the run directory should go")
    staging = plan_staging(script, None, None, str(blocker / "runs" / "r1"))
    problems = stage_all({"node1": session}, staging)
    assert list(problems) == ["node1"]
    assert "copying the training files" in problems["node1"]
    assert stage_all({"node1": session}, plan_staging(
        script, None, None, str(tmp_path / "runs" / "r1"))) == {}
