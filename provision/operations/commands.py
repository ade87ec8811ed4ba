"""Run a command, guarded so that a second run does nothing."""

from __future__ import annotations

from provision.facts.files import CommandStatus, PathState
from provision.operations.base import Change, Command, FactValues, HostContext, NoChange, operation
from provision.settings import Setting


def _facts(args: dict) -> list:
    facts = []
    if args.get("creates"):
        facts.append(PathState(args["creates"]))
    if args.get("unless"):
        facts.append(CommandStatus(args["unless"]))
    return facts


@operation("command", [Setting("argv", "list"), Setting("script", "str"),
                       Setting("creates", "abspath"), Setting("unless", "str"),
                       Setting("description", "str")],
           facts=_facts)
def command_op(args: dict, facts: FactValues, ctx: HostContext):
    """Runs `argv` (or a sh `script`) unless `creates` exists or the `unless` check succeeds.

    Without a guard it runs every time and always reports a change, like Ansible's command.
    """
    if ("argv" in args) == ("script" in args):
        raise ValueError("command needs exactly one of argv and script")
    if args.get("creates") and facts[PathState(args["creates"])] is not None:
        return NoChange(f"{args['creates']} exists")
    if args.get("unless") and facts[CommandStatus(args["unless"])] == 0:
        return NoChange("its 'unless' check succeeds")
    run = [str(a) for a in args["argv"]] if "argv" in args else args["script"]
    return Change(args.get("description") or f"run {run if isinstance(run, str) else ' '.join(run)}",
                  (Command(run),))
