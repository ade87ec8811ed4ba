"""Packages (apt, dnf or yum, as the host has) and services (systemd, or a pidfile without it)."""

from __future__ import annotations

import shlex

from provision.facts.system import (PROCESS_ALIVE_SH, InstalledPackages, Os, OsInfo,
                                    PidfileProcess, ServiceState)
from provision.operations.base import (Change, Command, FactValues, Failure, HostContext,
                                       NoChange, operation)
from provision.settings import Setting


@operation("package", [Setting("names", "list", item="name")], required=("names",),
           facts=lambda a: [Os(), InstalledPackages(tuple(a["names"]))])
def package_op(args: dict, facts: FactValues, ctx: HostContext):
    """The packages `names` are installed, with the host's package manager."""
    names = tuple(args["names"])
    return install_missing(names, facts[InstalledPackages(names)], facts[Os()])


def install_missing(names: tuple[str, ...], installed: frozenset[str], os_info: OsInfo):
    """The plan for package_op, from what is installed (a superset of `names` may be asked)."""
    missing = [n for n in names if n not in installed]
    if not missing:
        return NoChange(f"installed: {', '.join(names)}")
    manager = os_info.package_manager
    if manager == "apt":
        argv = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                "--no-install-recommends", *missing]
    elif manager in ("dnf", "yum"):
        argv = [manager, "install", "-y", "-q", *missing]
    else:
        return Failure(f"no supported package manager (apt, dnf, yum) to install "
                       f"{', '.join(missing)}")
    return Change(f"install {', '.join(missing)}", (Command(argv),))


def _service_facts(args: dict) -> list:
    facts = [Os(), ServiceState(args["unit"])]
    if args.get("pidfile"):
        facts.append(PidfileProcess(args["pidfile"]))
    return facts


# How long a restart without systemd waits for the old process to exit, and for the new one
# to write its pidfile.
STOP_WAIT_S = 10
START_WAIT_S = 10


def _poll(condition: str, seconds: int, message: str, *shown: str) -> list[str]:
    """sh lines: test `condition` every 0.1 s; after `seconds`, print `message` (text, quoted
    here) followed by the values of the shell variables `shown`, and exit 1."""
    words = " ".join([shlex.quote(message), *(f'"${name}"' for name in shown)])
    return [f"i=0; until {condition}; do",
            f'  i=$((i + 1)); [ "$i" -le {seconds * 10} ] || {{ echo {words} >&2; exit 1; }}',
            "  sleep 0.1",
            "done"]


def _without_systemd_script(unit: str, pidfile: str, start: list[str], stop_first: bool) -> str:
    """sh: (TERM the pidfile's process and wait until it exits,) run `start`, then wait until
    the pidfile names a running process. Fails with the reason at the first step that does not."""
    p, argv = shlex.quote(pidfile), shlex.join(start)
    lines = [PROCESS_ALIVE_SH, f"pid=$(head -n 1 {p} 2>/dev/null | tr -cd 0-9)"]
    if stop_first:
        lines += ['if [ -n "$pid" ] && alive "$pid"; then',
                  '  kill -TERM "$pid"',
                  *_poll('! alive "$pid"', STOP_WAIT_S,
                         f"{unit} did not exit within {STOP_WAIT_S} s of SIGTERM: pid", "pid"),
                  "fi"]
    # The start command's output goes to a file, never to this SSH channel: a daemon that kept
    # the channel's stdout open would hold the command (and the run) open forever.
    lines += ["out=$(mktemp)",
              f'if ! {argv} </dev/null >"$out" 2>&1; then',
              (f'  echo {shlex.quote(f"starting {unit} failed: {argv}")} >&2; '
               'cat "$out" >&2; rm -f "$out"; exit 1'),
              "fi",
              'rm -f "$out"',
              *_poll(f'new=$(head -n 1 {p} 2>/dev/null | tr -cd 0-9) && [ -n "$new" ] && '
                     'alive "$new"', START_WAIT_S,
                     f"started {unit} ({argv}), but {pidfile} names no running process "
                     f"after {START_WAIT_S} s")]
    return "\n".join(lines) + "\n"


@operation("service", [Setting("unit", "name"), Setting("enabled", "bool"),
                       Setting("started", "bool"), Setting("restarted", "bool"),
                       Setting("pidfile", "abspath"), Setting("start", "list")],
           required=("unit",), facts=_service_facts)
def service_op(args: dict, facts: FactValues, ctx: HostContext):
    """The service is enabled and/or running; `restarted: true` restarts it (use it with
    `if_changed`, so it restarts only when its configuration changed).

    With systemd: `systemctl enable/start/restart unit`. On a host without systemd (a container,
    the lab) the service is managed through `pidfile` and `start`: it runs when the pidfile
    names a live process; starting runs the `start` argv, which must daemonize and write the
    pidfile; restarting sends SIGTERM to the pidfile's process, waits until it exits, then
    starts. Such a host cannot start anything at boot, so `enabled` does not apply there.
    Without `pidfile` and `start` a host without systemd fails with the reason.
    """
    unit = args["unit"]
    started, restarted = args.get("started", True), args.get("restarted", False)
    if not facts[Os()].systemd:
        pidfile, start = args.get("pidfile"), [str(a) for a in args.get("start") or []]
        if not pidfile or not start:
            return Failure(f"cannot manage {unit}: systemd is not running on this host (give "
                           "the service op `pidfile` and `start` to manage it without systemd)")
        pid = facts[PidfileProcess(pidfile)]
        if restarted:
            what = f"restart {unit} (pid {pid})" if pid else f"start {unit}"
            return Change(what, (Command(_without_systemd_script(unit, pidfile, start, True)),))
        if started and pid is None:
            return Change(f"start {unit}",
                          (Command(_without_systemd_script(unit, pidfile, start, False)),))
        if pid is None:
            return NoChange(f"{unit} is not running, and not wanted running")
        return NoChange(f"{unit} runs (pid {pid}); without systemd it is not started at boot")
    enabled, active = facts[ServiceState(unit)]
    commands = []
    if args.get("enabled", True) and not enabled:
        commands.append(Command(["systemctl", "enable", unit]))
    if restarted:
        commands.append(Command(["systemctl", "restart", unit]))
    elif started and not active:
        commands.append(Command(["systemctl", "start", unit]))
    if not commands:
        wanted = [word for word, on in (("enabled", args.get("enabled", True)),
                                        ("running", started)) if on]
        return NoChange(f"{unit} is {' and '.join(wanted)}" if wanted
                        else f"{unit}: neither enabled nor running is asked for")
    verbs = [c.run[1] for c in commands]
    return Change(" and ".join(verbs) + f" {unit}", tuple(commands))
