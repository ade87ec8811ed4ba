"""Packages (apt, dnf or yum, as the host has) and systemd services."""

from __future__ import annotations

from provision.facts.system import InstalledPackages, Os, ServiceState
from provision.operations.base import (Change, Command, FactValues, Failure, HostContext,
                                       NoChange, operation)
from provision.settings import Setting


@operation("package", [Setting("names", "list", item="name")], required=("names",),
           facts=lambda a: [Os(), InstalledPackages(tuple(a["names"]))])
def package_op(args: dict, facts: FactValues, ctx: HostContext):
    """The packages `names` are installed, with the host's package manager."""
    names = tuple(args["names"])
    missing = [n for n in names if n not in facts[InstalledPackages(names)]]
    if not missing:
        return NoChange(f"installed: {', '.join(names)}")
    manager = facts[Os()].package_manager
    if manager == "apt":
        argv = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                "--no-install-recommends", *missing]
    elif manager in ("dnf", "yum"):
        argv = [manager, "install", "-y", "-q", *missing]
    else:
        return Failure(f"no supported package manager (apt, dnf, yum) to install "
                       f"{', '.join(missing)}")
    return Change(f"install {', '.join(missing)}", (Command(argv),))


@operation("service", [Setting("unit", "name"), Setting("enabled", "bool"),
                       Setting("started", "bool")],
           required=("unit",), facts=lambda a: [Os(), ServiceState(a["unit"])])
def service_op(args: dict, facts: FactValues, ctx: HostContext):
    """The systemd unit is enabled and/or running."""
    unit = args["unit"]
    if not facts[Os()].systemd:
        return Failure(f"cannot manage {unit}: systemd is not running on this host")
    enabled, active = facts[ServiceState(unit)]
    commands = []
    if args.get("enabled", True) and not enabled:
        commands.append(Command(["systemctl", "enable", unit]))
    if args.get("started", True) and not active:
        commands.append(Command(["systemctl", "start", unit]))
    if not commands:
        return NoChange(f"{unit} is enabled and running")
    return Change(f"{'enable and ' if len(commands) == 2 else ''}"
                  f"{'start' if args.get('started', True) and not active else 'enable'} {unit}",
                  tuple(commands))
