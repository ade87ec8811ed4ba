"""Preflight: refuse early, with the reason, a host that the later roles would fail on midway."""

from __future__ import annotations

from provision.facts.system import CommandsPresent, FreeSpace, Os
from provision.operations.base import FactValues, Failure, HostContext, NoChange, operation
from provision.settings import Setting

SUPPORTED = {"debian": "Debian/Ubuntu", "redhat": "RHEL/Rocky/Alma"}
GIB = 1024 ** 3


@operation("preflight_check",
           [Setting("commands", "list", item="name"), Setting("space_path", "abspath"),
            Setting("min_free_gb", "float", min=0), Setting("arches", "list", item="name")],
           required=("commands", "space_path", "min_free_gb"),
           facts=lambda a: [Os(), CommandsPresent(tuple(a["commands"])), FreeSpace(a["space_path"])])
def preflight_check(args: dict, facts: FactValues, ctx: HostContext):
    """The OS family, architecture, required commands and free disk space are fit."""
    os_info = facts[Os()]
    problems = []
    if os_info.family not in SUPPORTED:
        problems.append(f"unsupported OS {os_info.id} {os_info.version}: provision supports "
                        f"{' and '.join(SUPPORTED.values())}")
    arches = args.get("arches") or ["x86_64", "aarch64"]
    if os_info.arch not in arches:
        problems.append(f"unsupported architecture {os_info.arch} (supported: {', '.join(arches)})")
    missing = sorted(set(args["commands"]) - facts[CommandsPresent(tuple(args["commands"]))])
    if missing:
        problems.append(f"missing commands: {', '.join(missing)}")
    space = facts[FreeSpace(args["space_path"])]
    need = args["min_free_gb"] * GIB
    if space.free_bytes < need:
        problems.append(
            f"{space.free_bytes / GIB:.1f} GB free on the filesystem of {space.path} (for "
            f"{args['space_path']}), need {args['min_free_gb']:g} GB: free "
            f"{(need - space.free_bytes) / GIB:.1f} GB more or set conda_prefix elsewhere")
    if problems:
        return Failure("; ".join(problems))
    return NoChange(f"{os_info.id} {os_info.version} {os_info.arch}, "
                    f"{space.free_bytes / GIB:.1f} GB free at {space.path}")
