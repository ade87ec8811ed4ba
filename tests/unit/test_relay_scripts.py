"""The relay's sh scripts for the controller's copies, run for real under sh: a copy kept while
stdin stays open, and a copy that comes with its command and goes after it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.relay.scripts import direct_script, keep_script

DATA = os.urandom(1 << 20)
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def path(tmp_path) -> str:
    # Hostile on purpose: every part of it must be quoted.
    return str(tmp_path / "opt $(touch PWNED) 'q'" / ".provision-relay" / "x-installer.sh")


def keeper(path: str, data: bytes) -> subprocess.Popen:
    process = subprocess.Popen(["sh", "-c", keep_script(path, SHA256, len(DATA))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    process.stdin.write(data)
    process.stdin.flush()
    return process


def waiting_on_stdin(pid: int, command: str = "cat") -> None:
    """Until the keeper's `command` (cat: keeping the copy; head: receiving it) runs (a signal
    before its exec would be the shell's alone)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = handle.read().split()
        if any(Path(f"/proc/{child}/comm").read_text().strip() == command
               for child in children):
            return
        time.sleep(0.01)
    raise AssertionError(f"the keeper never ran {command}")


def test_a_kept_copy_stays_until_stdin_closes(tmp_path, path):
    process = keeper(path, DATA)
    assert json.loads(process.stdout.readline()) == {"ok": len(DATA)}
    with open(path, "rb") as handle:
        assert handle.read() == DATA
    assert os.stat(path).st_mode & 0o777 == 0o600
    process.stdin.close()
    assert process.wait(10) == 0
    assert not os.path.exists(os.path.dirname(path))         # the copies' directory too
    assert os.path.isdir(os.path.dirname(os.path.dirname(path)))
    assert not list(tmp_path.rglob("PWNED"))


def test_a_corrupted_copy_is_refused_and_nothing_stays(path):
    process = keeper(path, DATA[:-1] + b"!")
    assert process.stdout.readline() == b""
    assert process.wait(10) == 1
    assert b"the copy received has sha256" in process.stderr.read()
    assert not os.path.exists(os.path.dirname(path))


def test_a_keeper_stopped_by_a_signal_removes_its_copy(path):
    process = keeper(path, DATA)
    process.stdout.readline()
    assert os.path.exists(path)
    waiting_on_stdin(process.pid)
    os.killpg(process.pid, signal.SIGTERM)      # as a command's process group is stopped
    assert process.wait(10) != 0
    assert not os.path.exists(path)


def test_a_direct_copy_serves_its_command_then_goes(tmp_path, path):
    script = direct_script(path, SHA256, len(DATA), ["sha256sum", path])
    done = subprocess.run(["sh", "-c", script], input=DATA, capture_output=True, check=False)
    assert done.returncode == 0 and done.stdout.decode().startswith(SHA256)
    assert not os.path.exists(os.path.dirname(path))
    failing = direct_script(path, SHA256, len(DATA), "exit 7")
    assert subprocess.run(["sh", "-c", failing], input=DATA, check=False).returncode == 7
    assert not os.path.exists(os.path.dirname(path))


def test_a_stale_part_of_an_interrupted_transfer_is_cleared(path):
    os.makedirs(os.path.dirname(path))
    with open(f"{path}.part-12345", "wb") as stale:      # nobody holds its lock
        stale.write(b"half")
    done = subprocess.run(["sh", "-c", direct_script(path, SHA256, len(DATA), "true")],
                          input=DATA, check=False)
    assert done.returncode == 0
    assert not os.path.exists(os.path.dirname(path))


def test_another_runs_transfer_in_progress_is_left_alone(path):
    """Two trainings side by side staging the same file on one host (CI saw one remove the
    other's part mid-transfer)."""
    os.makedirs(os.path.dirname(path))
    others = Path(f"{path}.part-{os.getpid()}")
    with open(others, "wb") as writing:          # its writer holds the lock, as ours do
        fcntl.flock(writing, fcntl.LOCK_EX)
        writing.write(b"half")
        writing.flush()
        done = subprocess.run(["sh", "-c", direct_script(path, SHA256, len(DATA), "true")],
                              input=DATA, check=False)
        assert done.returncode == 0
        assert others.read_bytes() == b"half"


def test_a_part_being_written_and_then_the_copy_are_locked_by_their_keeper(path):
    process = subprocess.Popen(["sh", "-c", keep_script(path, SHA256, len(DATA))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               start_new_session=True)
    process.stdin.write(DATA[:1000])              # the rest has not come yet
    process.stdin.flush()
    waiting_on_stdin(process.pid, "head")            # writing the part, the rest to come
    (part,) = Path(path).parent.glob("*.part-*")
    with open(part, "rb") as probe:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    process.stdin.write(DATA[1000:])
    process.stdin.flush()
    assert json.loads(process.stdout.readline()) == {"ok": len(DATA)}
    with open(path, "rb") as probe:                # the copy, held by its keeper
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    process.stdin.close()
    assert process.wait(10) == 0


def test_a_copy_its_keeper_left_behind_is_cleared(path):
    """A host killed mid-run keeps its copy on disk; the next run's transfer removes it."""
    os.makedirs(os.path.dirname(path))
    left = Path(os.path.dirname(path)) / "0123456789abcdef-deadbeef-installer.sh"
    left.write_bytes(b"a whole old copy")
    done = subprocess.run(["sh", "-c", direct_script(path, SHA256, len(DATA), "true")],
                          input=DATA, check=False)
    assert done.returncode == 0
    assert not os.path.exists(os.path.dirname(path))


def test_two_controllers_never_share_a_copy():
    def copy_path() -> str:
        code = ("from provision.relay import SharedFile; "
                "print(SharedFile('x.sh', '0' * 64, '/opt', bytes).path)")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout
    first, second = copy_path(), copy_path()
    assert first.startswith("/opt/.provision-relay/") and first != second


def test_a_part_cleared_by_another_run_before_it_is_locked_is_opened_again(tmp_path, path):
    """Another run's receiver may clear this part (nobody holds it yet) and take the directory
    with its last copy, between this receiver's opening of the part and its lock: it must
    open it again, not write into a removed file (CI saw a receiver fail that way)."""
    shims = tmp_path / "bin"
    shims.mkdir()
    real = shutil.which("flock")
    once = tmp_path / "cleared"
    # A `flock` that, the first time it is asked for fd 8, does what the other run would do.
    (shims / "flock").write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = 8 ] && [ ! -e {shlex.quote(str(once))} ]; then\n"
        f"  touch {shlex.quote(str(once))}\n"
        '  rm -f -- "$(readlink /proc/$PPID/fd/8)"\n'
        f"  rmdir -- {shlex.quote(os.path.dirname(path))}\n"
        "fi\n"
        f'exec {real} "$@"\n')
    (shims / "flock").chmod(0o755)
    done = subprocess.run(["sh", "-c", direct_script(path, SHA256, len(DATA),
                                                     ["sha256sum", path])],
                          input=DATA, capture_output=True, check=False,
                          env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"})
    assert once.exists(), "the other run never came in between"
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(SHA256)
    assert not os.path.exists(os.path.dirname(path))
