"""NFS: the mount fact on captured output, fstab and exports editing (run for real under sh in
tmp_path), the mount plan, the role's wiring for servers and clients, and the cross-host check
with local "hosts" that do or do not share a directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.connection import CommandResult, as_command
from provision.facts.nfs import (FstabEntry, MountInfo, MountPoint, MountState,
                                    exports_path, parse_fstab_line)
from provision.facts.system import Os, OsInfo
from provision.inventory import Host, load_inventory
from provision.operations import REGISTRY, Change, Failure, HostContext, NoChange
from provision.operations.files import BACKUP_SUFFIX
from provision.operations.nfs import SENTINEL_PREFIX, nfs_shared, nfs_source
from provision.plan import Status
from provision.roles import check_context, load_role
from provision.runner import RunOptions, run_roles

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mounts"
CTX = HostContext(Host(name="n1", address="10.0.0.1"))
SHARE = {"server": "nfs1", "export": "/srv/export", "mount_point": "/shared",
         "options": ["_netdev", "nofail", "noatime"]}
WANTED_LINE = "nfs1:/srv/export /shared nfs _netdev,nofail,noatime 0 0"


def captured(case: str):
    folder = FIXTURES / case
    fact = MountState((folder / "path").read_text().strip())
    return fact.parse((folder / "stdout").read_text(), int((folder / "rc").read_text()))


# -- the mount fact --------------------------------------------------------------------------------

@pytest.mark.parametrize("case, kind, source, fstype", [
    ("nfs-double-mounted", "mounted", "nfs1:/srv/export", "overlay"),
    ("tmpfs-mounted", "mounted", "provision-fixture", "tmpfs"),
    ("stacked", "mounted", "provision-fixture-top", "tmpfs"),   # the visible, top mount
    ("directory", "directory", None, None),
    ("file", "other", None, None),
    ("missing", "missing", None, None),
])
def test_mount_state_from_captured_output(case, kind, source, fstype):
    state = captured(case)
    assert state.kind == kind
    if source is None:
        assert state.mount is None
    else:
        assert (state.mount.source, state.mount.fstype) == (source, fstype)
        assert state.mount.target == (FIXTURES / case / "path").read_text().strip()
        assert "noatime" in state.mount.options or case == "stacked"


def test_mount_state_command_quotes_the_path_and_runs(tmp_path):
    path = tmp_path / "m $(touch pwned);'"
    path.mkdir()
    fact = MountState(str(path))
    done = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert fact.parse(done.stdout, done.returncode).kind == "directory"
    assert not (tmp_path / "pwned").exists()


def test_mount_state_refuses_a_failed_findmnt():
    with pytest.raises(ValueError, match="cannot read the mount table for /shared: exit code 127"):
        MountState("/shared").parse("", 127)


# -- fstab parsing ---------------------------------------------------------------------------------

def test_fstab_lines_parse_like_mount_reads_them():
    lines = (FIXTURES / "fstab" / "installer-two-shared").read_text().splitlines()
    entries = [e for e in map(parse_fstab_line, lines) if e]
    assert [e.target for e in entries] == ["/", "none", "/media/cdrom0", "/data/my disk",
                                           "/shared", "/scratch", "/shared/"]
    assert entries[0] == FstabEntry("UUID=3b1f6c2e-8d0a-4c55-9f3e-2a7d1c9b0e41", "/", "ext4",
                                    ("errors=remount-ro",), 0, 1)
    assert entries[3].options == ("defaults", "nofail") and entries[3].passno == 2
    assert not [e for e in map(parse_fstab_line,
                               (FIXTURES / "fstab" / "debian-base").read_text().splitlines()) if e]


def test_fstab_line_escapes_what_would_split_a_field():
    entry = FstabEntry("srv:/a b", "/mnt/x\ty", "nfs", ("ro",))
    assert entry.line() == "srv:/a\\040b /mnt/x\\011y nfs ro 0 0"
    assert parse_fstab_line(entry.line()) == entry


def test_exports_path_reads_plain_and_quoted_paths():
    assert exports_path('/srv/export 10.0.0.0/24(rw,sync)') == "/srv/export"
    assert exports_path('"/srv/my share" *(ro)') == "/srv/my share"
    assert exports_path("  # /srv/old *(rw)") is None and exports_path("") is None


def test_nfs_source_normalises_the_path_and_brackets_ipv6():
    assert nfs_source("nfs1", "/srv/export/") == "nfs1:/srv/export"
    assert nfs_source("fd00::5", "/srv") == "[fd00::5]:/srv"


# -- fstab and exports edits, run for real ---------------------------------------------------------

def gather(fact):
    done = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True,
                          timeout=10, check=False)
    return fact.parse(done.stdout, done.returncode)


def plan(op: str, args: dict):
    operation = REGISTRY[op]
    return operation.plan(args, {f: gather(f) for f in operation.facts(args)}, CTX)


def apply(op: str, args: dict):
    outcome = plan(op, args)
    if isinstance(outcome, Change):
        for command in outcome.commands:
            done = subprocess.run(["sh", "-c", command.run], input=command.stdin,
                                  capture_output=True, timeout=10, check=False)
            assert done.returncode == 0, done.stderr
    return outcome


@pytest.fixture
def fstab(tmp_path):
    """A copy of the installer fstab at a path that injects a command when mis-quoted."""
    path = tmp_path / "fstab $(touch pwned);'"
    path.write_bytes((FIXTURES / "fstab" / "installer-two-shared").read_bytes())
    path.chmod(0o640)
    yield path
    assert not (tmp_path / "pwned").exists(), "an injected command ran"


def test_fstab_entry_is_fixed_in_place_and_duplicates_dropped(fstab):
    before = fstab.read_bytes()
    outcome = apply("nfs_fstab", {**SHARE, "path": str(fstab)})
    assert isinstance(outcome, Change) and "fix the entry for /shared" in outcome.description
    assert f"+{WANTED_LINE}" in outcome.diff.splitlines()
    old_lines, new_lines = before.decode().splitlines(True), fstab.read_text().splitlines(True)
    at = old_lines.index("oldserver:/export/home /shared nfs rw,hard 0 0\n")
    # The first /shared line becomes ours, the second goes, all the others stay byte for byte.
    assert new_lines == old_lines[:at] + [WANTED_LINE + "\n"] + old_lines[at + 1:-1]
    assert Path(str(fstab) + BACKUP_SUFFIX).read_bytes() == before
    assert oct(fstab.stat().st_mode & 0o777) == "0o640"
    assert isinstance(apply("nfs_fstab", {**SHARE, "path": str(fstab)}), NoChange)


def test_fstab_entry_is_appended_to_a_file_without_final_newline(tmp_path):
    path = tmp_path / "fstab"
    path.write_text("proc /proc proc defaults 0 0")
    assert "add an entry" in apply("nfs_fstab", {**SHARE, "path": str(path)}).description
    assert path.read_text() == f"proc /proc proc defaults 0 0\n{WANTED_LINE}\n"


def test_fstab_entry_with_other_layout_and_option_order_is_left_alone(tmp_path):
    path = tmp_path / "fstab"
    path.write_text("nfs1:/srv/export/\t/shared/  nfs  noatime,_netdev,nofail\n")
    assert isinstance(plan("nfs_fstab", {**SHARE, "path": str(path)}), NoChange)


def test_extra_option_changes_the_entry(tmp_path):
    path = tmp_path / "fstab"
    path.write_text(WANTED_LINE + "\n")
    args = {**SHARE, "options": [*SHARE["options"], "vers=4.2"], "path": str(path)}
    apply("nfs_fstab", args)
    assert path.read_text() == WANTED_LINE.replace("noatime", "noatime,vers=4.2") + "\n"


def test_fstab_changed_after_planning_is_not_overwritten(tmp_path):
    path = tmp_path / "fstab"
    path.write_text("proc /proc proc defaults 0 0\n")
    outcome = plan("nfs_fstab", {**SHARE, "path": str(path)})
    path.write_text("someone else's edit\n")
    [command] = outcome.commands
    done = subprocess.run(["sh", "-c", command.run], input=command.stdin, capture_output=True,
                          timeout=10, check=False)
    assert done.returncode == 1 and b"changed while planning; run again" in done.stderr
    assert path.read_text() == "someone else's edit\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fstab"]


@pytest.mark.parametrize("options", [["noatime", "vers=4.2 sec=sys"], ["a,b"], ["x;reboot"]])
def test_malformed_options_are_refused(options, tmp_path):
    with pytest.raises(ValueError, match="is not an option like noatime"):
        plan("nfs_fstab", {**SHARE, "options": options, "path": str(tmp_path / "f")})


def test_exports_line_replaces_the_old_one_for_the_export(tmp_path):
    path = tmp_path / "exports"
    path.write_text("# /etc/exports\n/home *(ro)\n/srv/export/ 10.9.9.9(rw)\n")
    args = {"export": "/srv/export", "clients": ["10.0.0.1", "10.0.0.2"],
            "options": ["rw", "sync", "no_subtree_check"], "path": str(path)}
    assert "export /srv/export" in apply("nfs_export", args).description
    assert path.read_text() == ("# /etc/exports\n/home *(ro)\n/srv/export "
                                "10.0.0.1(rw,sync,no_subtree_check) "
                                "10.0.0.2(rw,sync,no_subtree_check)\n")
    assert isinstance(apply("nfs_export", args), NoChange)


def test_missing_exports_file_is_created(tmp_path):
    path = tmp_path / "exports"
    apply("nfs_export", {"export": "/srv/x", "clients": ["*"], "options": ["ro"],
                         "path": str(path)})
    assert path.read_text() == "/srv/x *(ro)\n"


@pytest.mark.parametrize("args, reason", [
    ({"export": "/srv/my share", "clients": ["*"]}, "has a space"),
    ({"export": "/srv/x", "clients": []}, "no clients to export to"),
    ({"export": "/srv/x", "clients": ["a b"]}, "is not a host, address, network or wildcard"),
])
def test_bad_exports_are_refused(args, reason, tmp_path):
    outcome = plan("nfs_export", {**args, "path": str(tmp_path / "exports")})
    assert isinstance(outcome, Failure) and reason in outcome.reason


# -- the mount ------------------------------------------------------------------------------------

def mount_plan(state: str | MountInfo, **args):
    fact = MountState("/shared")
    value = MountPoint(state, "mounted") if isinstance(state, MountInfo) else \
        MountPoint(None, state)
    return REGISTRY["nfs_mount"].plan({**SHARE, "timeout": 60, **args}, {fact: value}, CTX)


def test_mount_creates_the_mount_point_and_removes_it_again_on_failure():
    outcome = mount_plan("missing")
    assert outcome.description == "create and mount /shared from nfs1:/srv/export"
    [command] = outcome.commands
    script = command.run
    assert script.startswith("mkdir -p -- /shared\n")
    assert ("timeout -k 5 60 mount -t nfs -o _netdev,nofail,noatime nfs1:/srv/export /shared "
            "&& exit 0") in script
    assert "rmdir -- /shared" in script and "/etc/fstab was not changed" in script


def test_mount_into_an_existing_directory_never_removes_it():
    outcome = mount_plan("directory")
    assert outcome.description == "mount /shared from nfs1:/srv/export"
    assert "mkdir" not in outcome.commands[0].run and "rmdir" not in outcome.commands[0].run


def test_mount_script_quotes_hostile_mount_points(tmp_path):
    hostile = str(tmp_path / "m $(touch pwned);'")
    fact = MountState(hostile)
    outcome = REGISTRY["nfs_mount"].plan({**SHARE, "mount_point": hostile}, {fact: gather(fact)},
                                         CTX)
    # Run with a `timeout` that fails like mount.nfs does: the script must clean up and report.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "timeout").write_text("#!/bin/sh\necho 'mount.nfs: Connection timed out' >&2\n"
                                  "exit 32\n")
    (stub / "timeout").chmod(0o755)
    done = subprocess.run(["sh", "-c", outcome.commands[0].run], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"},
                          cwd=tmp_path, timeout=10, check=False)
    assert done.returncode == 32
    assert done.stderr.splitlines() == [
        "mount.nfs: Connection timed out",
        f"could not mount nfs1:/srv/export on {hostile}; /etc/fstab was not changed: check "
        "nfs_server and nfs_export, and that nfs1 exports /srv/export to this host"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"], "the mount point is removed"


@pytest.mark.parametrize("source", ["nfs1:/srv/export", "nfs1:/srv/export/"])
def test_mounted_from_the_share_is_no_change(source):
    outcome = mount_plan(MountInfo("/shared", source, "nfs4", ("rw",)))
    assert isinstance(outcome, NoChange) and "mounted from nfs1:/srv/export" in outcome.reason


def test_mounted_from_another_source_fails_without_remounting():
    outcome = mount_plan(MountInfo("/shared", "old:/data", "nfs4", ("rw",)))
    assert isinstance(outcome, Failure)
    assert outcome.reason.startswith("/shared is already mounted from old:/data (nfs4), not "
                                     "nfs1:/srv/export")
    assert "umount /shared" in outcome.reason


def test_mount_point_that_is_a_file_fails():
    outcome = mount_plan("other")
    assert isinstance(outcome, Failure) and "is not a directory" in outcome.reason


# -- packages -------------------------------------------------------------------------------------

def os_info(family_id: str, manager: str | None) -> OsInfo:
    return OsInfo(family_id, (), "1", "x86_64", manager, True)


@pytest.mark.parametrize("os_id, manager, server, argv_tail", [
    ("debian", "apt", False, ["nfs-common"]),
    ("ubuntu", "apt", True, ["nfs-kernel-server"]),
    ("rocky", "dnf", False, ["nfs-utils"]),
    ("rhel", "yum", True, ["nfs-utils"]),
])
def test_packages_follow_the_os_family(os_id, manager, server, argv_tail):
    op = REGISTRY["nfs_packages"]
    args = {"server": server}
    facts = {f: os_info(os_id, manager) if isinstance(f, Os) else frozenset()
             for f in op.facts(args)}
    outcome = op.plan(args, facts, CTX)
    assert outcome.commands[0].run[-1:] == argv_tail
    facts = {f: os_info(os_id, manager) if isinstance(f, Os) else frozenset(f.names)
             for f in op.facts(args)}
    assert isinstance(op.plan(args, facts, CTX), NoChange)


def test_packages_on_an_unknown_os_fail():
    op = REGISTRY["nfs_packages"]
    facts = {f: os_info("arch", None) if isinstance(f, Os) else frozenset()
             for f in op.facts({})}
    assert "no NFS package known for arch" in op.plan({}, facts, CTX).reason


# -- the role, planned through the runner with a host answering from canned facts ----------------

class FactHost:
    """A host for run_roles: facts from `values` (by fact type), commands recorded."""

    def __init__(self, host: Host, values: dict, changed: bool = False):
        self.connection = type("Connection", (), {"host": host})()
        self.values, self.commands, self.round_trips = values, [], 0
        self._changed = changed

    def begin(self, role: str, task: str) -> None:
        """A task starts (HostSession.begin tells the live view)."""

    def changed(self, role: str) -> bool:
        """Whether this run changed anything of `role` on the host (HostSession.changed)."""
        return self._changed

    def gather(self, facts):
        return {f: self.values[type(f).__name__](f) for f in facts}

    def run(self, command, stdin=None):
        self.commands.append(command)
        return CommandResult(str(command), 0, "", "")


def inventory(tmp_path: Path, **vars):
    data = {"all": {"vars": {"nfs_server": "nfs1", **vars},
                    "hosts": {"nfs1": {"ansible_host": "10.0.0.1"},
                              "nfs2": {"ansible_host": "10.0.0.2"}},
                    "children": {"nfs_server": {"hosts": {"nfs1": {}}}}}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_inventory(path)


def fresh_debian_host(host: Host) -> FactHost:
    return FactHost(host, {
        "Os": lambda f: os_info("debian", "apt"),
        "InstalledPackages": lambda f: frozenset(),
        "PathState": lambda f: None,
        "ServiceState": lambda f: (False, False),
        "MountState": lambda f: MountState(f.path).parse("missing", 0),
    })


def test_role_exports_on_the_server_and_mounts_everywhere(tmp_path):
    inv = inventory(tmp_path)
    role = load_role("nfs")
    results = {}
    for name in ("nfs1", "nfs2"):
        session = fresh_debian_host(inv.hosts[name])
        results[name] = []
        run_roles(session, inv, [role], RunOptions(), lambda r: None, results[name])
        results[name] = ({r.task: r.status for r in results[name]}, session.commands)
    server_status, server_commands = results["nfs1"]
    assert all(s is Status.CHANGED for s in server_status.values()), server_status
    assert ["systemctl", "start", "nfs-server"] in server_commands
    assert ["exportfs", "-ra"] == server_commands[server_commands.index(
        ["systemctl", "start", "nfs-server"]) + 1]
    client_status, client_commands = results["nfs2"]
    assert {t for t, s in client_status.items() if s is Status.CHANGED} == \
        {"NFS client packages", "mounted", "fstab entry"}
    assert {t for t, s in client_status.items() if s is Status.SKIPPED} == \
        {"NFS server packages", "export directory", "exports line", "NFS server running",
         "re-export"}
    exports = [c for c in server_commands if isinstance(c, str) and "/etc/exports" in c]
    assert exports, "the exports file is written"
    # The mount comes before the fstab, on every client.
    order = [i for i, c in enumerate(client_commands)
             if isinstance(c, str) and ("mount -t nfs" in c or "/etc/fstab" in c)]
    assert "mount -t nfs" in client_commands[order[0]] and "/etc/fstab" in client_commands[order[1]]


def test_role_exports_to_every_inventory_host_by_default(tmp_path):
    inv = inventory(tmp_path)
    session = fresh_debian_host(inv.hosts["nfs1"])
    results = []
    run_roles(session, inv, [load_role("nfs")], RunOptions(check=True), lambda r: None, results)
    [exports] = [r for r in results if r.task == "exports line"]
    assert "+/srv/export 10.0.0.1(rw,sync,no_subtree_check) 10.0.0.2(rw,sync,no_subtree_check)" \
        in exports.diff.splitlines()
    assert session.commands == [], "check mode runs nothing"


def test_role_is_skipped_without_nfs_server(tmp_path):
    inv = inventory(tmp_path, nfs_server=None)
    session = fresh_debian_host(inv.hosts["nfs2"])
    results = []
    run_roles(session, inv, [load_role("nfs")], RunOptions(), lambda r: None, results)
    assert {r.status for r in results} == {Status.SKIPPED} and session.commands == []


# -- the cross-host check, with local "hosts" whose mount points are directories -------------------

class LocalHost(FactHost):
    """Runs commands here under sh: its mount point is a local directory."""

    def run(self, command, stdin=None):
        self.round_trips += 1
        done = subprocess.run(["sh", "-c", as_command(command)], capture_output=True, text=True,
                              timeout=30, check=False)
        return CommandResult(as_command(command), done.returncode, done.stdout, done.stderr)


def cluster(tmp_path: Path, mount_points: dict[str, Path], changed: bool = True):
    names = list(mount_points)
    data = {"all": {"vars": {"nfs_server": "srv", "nfs_export": "/e"},
                    "hosts": {n: {"ansible_host": f"10.0.0.{i + 1}",
                                  "nfs_mount_point": str(mount_points[n])}
                              for i, n in enumerate(names)}}}
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(data))
    inv = load_inventory(tmp_path / "inv.yaml")
    sessions = {n: LocalHost(inv.hosts[n], {}, changed) for n in names}
    return sessions, inv


def test_hosts_sharing_the_directory_pass_and_the_file_is_removed(tmp_path):
    share = tmp_path / "share $(touch pwned)"
    share.mkdir()
    sessions, inv = cluster(tmp_path, {"a": share, "b": share, "c": share})
    results = nfs_shared(check_context(sessions, inv, load_role("nfs"), False))
    assert [(r.host, r.status) for r in results] == [("a", Status.OK), ("b", Status.OK),
                                                     ("c", Status.OK)]
    assert "reads in" in results[1].message
    assert list(share.iterdir()) == [] and not (tmp_path / "pwned").exists()


def test_a_host_with_its_own_directory_fails_with_the_reason(tmp_path):
    dirs = {n: tmp_path / n for n in ("a", "b", "c")}
    for d in dirs.values():
        d.mkdir()
    dirs["c"] = dirs["a"]
    sessions, inv = cluster(tmp_path, dirs)
    results = {r.host: r for r in nfs_shared(check_context(sessions, inv, load_role("nfs"),
                                                           False))}
    assert results["a"].status is Status.OK and results["c"].status is Status.OK
    assert results["b"].status is Status.FAILED
    assert results["b"].message.startswith(f"does not see in {dirs['b']} the file a wrote")
    assert "are both mounted from srv:/e?" in results["b"].message
    assert not [p for p in tmp_path.rglob(SENTINEL_PREFIX + "*")]


def test_check_mode_and_no_op_runs_touch_nothing(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    sessions, inv = cluster(tmp_path, {"a": share, "b": share}, changed=False)
    role = load_role("nfs")
    for check_mode, reason in ((True, "check mode"), (False, "nothing changed")):
        results = nfs_shared(check_context(sessions, inv, role, check_mode))
        assert {r.status for r in results} == {Status.SKIPPED}
        assert all(reason in r.message for r in results)
    assert all(s.round_trips == 0 for s in sessions.values()), "no command ran"


def test_double_is_executable_and_says_what_it_stands_in_for():
    double = Path(__file__).resolve().parents[1] / "doubles" / "mount.nfs"
    assert os.access(double, os.X_OK)
    assert "standing in for `mount.nfs`" in " ".join(double.read_text().split()[:40])
    # Its usage error, as the real helper's: no lab needed to get there.
    done = subprocess.run([str(double)], capture_output=True, text=True, check=False)
    assert done.returncode == 32 and done.stderr.startswith("usage: mount.nfs remotetarget dir")
