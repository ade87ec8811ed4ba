"""NFS: client packages, the mount, its fstab entry, the server's export, and a cross-host check.

Order on a client (roles/nfs): the mount is attempted with explicit arguments BEFORE the fstab is
touched. A bad or unreachable server then fails the mount task and the fstab task never runs, so
the fstab stays byte for byte as it was; and a run cut off between the two leaves a live mount
without its fstab line, which the next run sees and completes. The other order (fstab first,
roll back on failure) would leave a line that never mounts if the run were cut off mid-way.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
import secrets
import shlex

from provision.checks import CheckContext, cluster_check
from provision.facts.files import PathState
from provision.facts.nfs import FstabEntry, MountState, exports_path, parse_fstab_line
from provision.facts.system import InstalledPackages, Os
from provision.operations.base import (Change, Command, FactValues, Failure, HostContext,
                                       NoChange, operation)
from provision.operations.files import write_file_script
from provision.operations.system import install_missing
from provision.plan import Status, TaskResult
from provision.settings import Setting

PACKAGES = {  # family -> (client, server)
    "debian": (("nfs-common",), ("nfs-kernel-server",)),
    "redhat": (("nfs-utils",), ("nfs-utils",)),
}
OPTION_RE = re.compile(r"[A-Za-z0-9_.:=/+-]+")
CLIENT_RE = re.compile(r"[A-Za-z0-9_.:/*?@\[\]-]+")
# A hung server must not hang the cross-host check: each of its commands gets this long.
CHECK_TIMEOUT_S = 20
SENTINEL_PREFIX = ".provision-nfs-check-"

SERVER = Setting("server", "address", "the NFS server's name or address")
EXPORT = Setting("export", "abspath", "the exported directory on the server")
MOUNT_POINT = Setting("mount_point", "abspath")
OPTIONS = Setting("options", "list", "mount options")


def nfs_source(server: str, export: str) -> str:
    """`server:/path` as mount(8) takes it and the kernel shows it (IPv6 in brackets)."""
    host = f"[{server}]" if ":" in server else server
    return f"{host}:{posixpath.normpath(export)}"


def _normal_source(source: str) -> str:
    """`server:/path/` and `server:/path` name the same export."""
    server, _, path = source.rpartition(":")
    return f"{server}:{posixpath.normpath(path)}" if server and path.startswith("/") else source


def _check_options(options: list[str], what: str) -> None:
    bad = [o for o in options if not OPTION_RE.fullmatch(str(o))]
    if bad:
        raise ValueError(f"{what}: {', '.join(map(repr, bad))} is not an option like noatime or "
                         "vers=4.2 (letters, digits and _.:=/+- only; one option per list item)")


def _every_family(server: bool) -> InstalledPackages:
    """Facts come before the OS family is known: one query for the names of every family."""
    return InstalledPackages(tuple(sorted({n for names in PACKAGES.values()
                                           for n in names[server]})))


@operation("nfs_packages", [Setting("server", "bool")],
           facts=lambda a: [Os(), _every_family(bool(a.get("server")))])
def nfs_packages(args: dict, facts: FactValues, ctx: HostContext):
    """The NFS client (or server) packages of the host's OS family are installed."""
    os_info = facts[Os()]
    if os_info.family not in PACKAGES:
        return Failure(f"no NFS package known for {os_info.id} {os_info.version}: "
                       "install the NFS client yourself or use Debian/Ubuntu or RHEL")
    server = bool(args.get("server"))
    return install_missing(PACKAGES[os_info.family][server], facts[_every_family(server)],
                           os_info)


def _mount_script(source: str, mount_point: str, options: list[str], timeout: int,
                  create: bool, hint: str) -> str:
    mount = shlex.join(["timeout", "-k", "5", str(timeout), "mount", "-t", "nfs",
                        "-o", ",".join(options), source, mount_point])
    mp = shlex.quote(mount_point)
    lines = [f"mkdir -p -- {mp}"] if create else []
    lines += [f"{mount} && exit 0",
              "rc=$?",
              # timeout(1): 124 when it stopped mount, 137 when it had to kill it.
              f'case $rc in 124|137) echo "mount.nfs: no answer within {timeout} s" >&2;; esac']
    if create:
        lines.append(f"rmdir -- {mp}")   # leave the host as it was
    lines += [f"echo {shlex.quote(hint)} >&2", "exit $rc"]
    return "\n".join(lines) + "\n"


@operation("nfs_mount", [SERVER, EXPORT, MOUNT_POINT, OPTIONS,
                         Setting("timeout", "int", "seconds the first mount may take", min=1)],
           required=("server", "export", "mount_point"),
           facts=lambda a: [MountState(a["mount_point"])])
def nfs_mount(args: dict, facts: FactValues, ctx: HostContext):
    """`server:export` is mounted on `mount_point` (created if missing); a live mount from
    another source is reported, never replaced."""
    mount_point, options = args["mount_point"], list(args.get("options") or ["defaults"])
    _check_options(options, "NFS mount options")
    source = nfs_source(args["server"], args["export"])
    state = facts[MountState(mount_point)]
    if state.mount is not None:
        if _normal_source(state.mount.source) == source:
            return NoChange(f"{mount_point} is mounted from {source}")
        return Failure(f"{mount_point} is already mounted from {state.mount.source} "
                       f"({state.mount.fstype}), not {source}; provision does not replace a live "
                       f"mount: unmount it (umount {mount_point}) or set nfs_mount_point to "
                       "another path, then run again")
    if state.kind == "other":
        return Failure(f"{mount_point} exists and is not a directory: remove it or set "
                       "nfs_mount_point to another path")
    hint = (f"could not mount {source} on {mount_point}; /etc/fstab was not changed: check "
            f"nfs_server and nfs_export, and that {args['server']} exports "
            f"{posixpath.normpath(args['export'])} to this host")
    script = _mount_script(source, mount_point, options, args.get("timeout", 90),
                           state.kind == "missing", hint)
    verb = "create and mount" if state.kind == "missing" else "mount"
    return Change(f"{verb} {mount_point} from {source}", (Command(script),))


def _edit(text: str, matches: list[int], wanted: str) -> str:
    """`text` with the first matching line replaced by `wanted` and the other matches dropped;
    `wanted` appended when nothing matches. Every other line stays byte for byte."""
    lines = text.splitlines(keepends=True)
    if not matches:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines) + wanted + "\n"
    first = matches[0]
    ending = lines[first][len(lines[first].rstrip("\r\n")):] or "\n"
    return "".join(wanted + ending if i == first else line
                   for i, line in enumerate(lines) if i == first or i not in matches)


def _rewrite(path: str, info, old: str, new: str, what: str) -> Change:
    """Atomic replace with a backup, refused if the file changed since its facts were read."""
    p, stop = shlex.quote(path), shlex.quote(f"{path} changed while planning; run again")
    changed = (f"[ -e {p} ]" if info is None else
               f'[ "$(sha256sum < {p} | cut -d" " -f1)" != {info.sha256} ]')
    guard = f"if {changed}; then echo {stop} >&2; exit 1; fi"
    diff = "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        fromfile=f"{path} (current)", tofile=f"{path} (wanted)"))
    script = guard + "\n" + write_file_script(path, {"mode": info.mode if info else "644"},
                                              backup=True)
    data = new.encode(errors="surrogateescape")
    return Change(f"{'update' if info else 'create'} {path} ({what})",
                  (Command(script, stdin=data),), diff)


def _text(path: str, info) -> str:
    if info is not None and info.kind != "file":
        raise ValueError(f"{path} is a {info.kind}, not a file")
    if info is not None and info.content is None:
        raise ValueError(f"{path} is too large to edit")
    return (info.content or b"").decode(errors="surrogateescape") if info else ""


@operation("nfs_fstab", [SERVER, EXPORT, MOUNT_POINT, OPTIONS, Setting("path", "abspath")],
           required=("server", "export", "mount_point"),
           facts=lambda a: [PathState(a.get("path", "/etc/fstab"), True)])
def nfs_fstab(args: dict, facts: FactValues, ctx: HostContext):
    """The fstab has exactly one entry for `mount_point`: this NFS share with these options."""
    path, mount_point = args.get("path", "/etc/fstab"), posixpath.normpath(args["mount_point"])
    options = tuple(args.get("options") or ["defaults"])
    _check_options(list(options), "NFS mount options")
    info = facts[PathState(path, True)]
    text = _text(path, info)
    wanted = FstabEntry(nfs_source(args["server"], args["export"]), mount_point, "nfs", options)
    entries = [parse_fstab_line(line) for line in text.splitlines()]
    matches = [i for i, e in enumerate(entries)
               if e is not None and posixpath.normpath(e.target) == mount_point]
    if len(matches) == 1 and dataclasses.replace(
            entries[matches[0]], source=_normal_source(entries[matches[0]].source),
            target=mount_point).same_as(wanted):
        return NoChange(f"{path} mounts {wanted.source} on {mount_point}")
    new = _edit(text, matches, wanted.line())
    what = "fix the entry" if matches else "add an entry"
    return _rewrite(path, info, text, new, f"{what} for {mount_point}")


@operation("nfs_export", [EXPORT, Setting("clients", "list"), Setting("options", "list"),
                          Setting("path", "abspath")],
           required=("export", "clients"),
           facts=lambda a: [PathState(a.get("path", "/etc/exports"), True)])
def nfs_export(args: dict, facts: FactValues, ctx: HostContext):
    """The exports file has exactly one line for `export`, to `clients` with `options`."""
    path, export = args.get("path", "/etc/exports"), posixpath.normpath(args["export"])
    if re.search(r'[\s"\\#]', export):
        return Failure(f"export path {export!r} has a space, quote, '#' or backslash: choose a "
                       "plainer nfs_export")
    clients = [str(c) for c in args["clients"]]
    if not clients:
        return Failure("no clients to export to: set nfs_export_clients or add hosts")
    bad = [c for c in clients if not CLIENT_RE.fullmatch(c)]
    if bad:
        return Failure(f"nfs_export_clients: {', '.join(map(repr, bad))} is not a host, "
                       "address, network or wildcard")
    options = list(args.get("options") or ["rw", "sync", "no_subtree_check"])
    _check_options(options, "NFS export options")
    wanted = export + " " + " ".join(f"{c}({','.join(options)})" for c in clients)
    info = facts[PathState(path, True)]
    text = _text(path, info)
    lines = text.splitlines()
    matches = [i for i, line in enumerate(lines)
               if (p := exports_path(line)) is not None and posixpath.normpath(p) == export]
    if len(matches) == 1 and lines[matches[0]].split() == wanted.split():
        return NoChange(f"{path} exports {export}")
    new = _edit(text, matches, wanted)
    return _rewrite(path, info, text, new, f"export {export}")


# -- across hosts ----------------------------------------------------------------------------------

def _clients_by_share(ctx: CheckContext) -> dict[str, list[tuple[str, str]]]:
    """NFS source -> [(host, mount point)] of the hosts that mount it. The values are the
    inventory's (validated) data, used as they are: never rendered as templates."""
    shares: dict[str, list[tuple[str, str]]] = {}
    for name, variables in ctx.variables.items():
        server = variables.get("nfs_server")
        if server:
            source = nfs_source(server, variables["nfs_export"])
            shares.setdefault(source, []).append((name, variables["nfs_mount_point"]))
    return shares


@cluster_check("nfs_shared")
def nfs_shared(ctx: CheckContext) -> list[TaskResult]:
    """A file written in the share on one host is read on every other host, then removed."""
    sessions, role = ctx.sessions, ctx.role
    task = "same files on every host"
    results = []
    for source, clients in _clients_by_share(ctx).items():
        names = [name for name, _ in clients]
        if ctx.check_mode:
            reason = "check mode: this check writes a file in the share"
        elif len(clients) < 2:
            reason = f"the only host mounting {source}: no other host to compare with"
        elif not any(sessions[n].changed(role.name) for n in names):
            # A share verified when it was set up stays verified: a no-op run stays one round
            # trip per host.
            reason = (f"nothing changed on the hosts mounting {source}; the check runs after "
                      "a change")
        else:
            results += _exchange(ctx, clients, source, task)
            continue
        results += [TaskResult(n, role.name, task, Status.SKIPPED, reason) for n in names]
    return results


def _exchange(ctx: CheckContext, clients, source: str, task: str) -> list[TaskResult]:
    sessions, role = ctx.sessions, ctx.role.name
    (writer, writer_mp), readers = clients[0], clients[1:]
    token = secrets.token_hex(16)
    name = SENTINEL_PREFIX + token
    timeout = ["timeout", str(CHECK_TIMEOUT_S)]

    def at(mount_point: str) -> str:
        return posixpath.join(mount_point, name)
    # argv lists: the paths reach the commands as arguments, never inside a shell string.
    written = sessions[writer].run([*timeout, "sh", "-c", 'printf %s "$1" > "$2"', "sh", token,
                                    at(writer_mp)])
    if not written.ok:
        return [TaskResult(writer, role, task, Status.FAILED,
                           f"cannot write a file in {writer_mp} ({written.describe_failure()}): "
                           f"is {source} mounted there and writable by root?")] + [
            TaskResult(n, role, task, Status.SKIPPED, f"{writer} could not write the test file")
            for n, _ in readers]

    def read(host: str) -> TaskResult:
        mount_point = dict(readers)[host]
        done = sessions[host].run([*timeout, "cat", "--", at(mount_point)])
        if done.ok and done.stdout == token:
            return TaskResult(host, role, task, Status.OK,
                              f"reads in {mount_point} the file {writer} wrote in {writer_mp}")
        seen = done.describe_failure() if not done.ok else "other content"
        return TaskResult(host, role, task, Status.FAILED,
                          f"does not see in {mount_point} the file {writer} wrote in "
                          f"{writer_mp} ({seen}): are both mounted from {source}? compare "
                          f"`findmnt {mount_point}` on both hosts")
    results = ctx.map(read, [host for host, _ in readers])
    removed = sessions[writer].run([*timeout, "rm", "-f", "--", at(writer_mp)])
    if removed.ok:
        results.insert(0, TaskResult(writer, role, task, Status.OK,
                                     f"wrote a file in {writer_mp} for {len(readers)} other "
                                     "hosts to read, then removed it"))
    else:
        results.insert(0, TaskResult(writer, role, task, Status.FAILED,
                                     f"cannot remove {posixpath.join(writer_mp, name)} "
                                     f"({removed.describe_failure()}): remove it by hand"))
    return results
