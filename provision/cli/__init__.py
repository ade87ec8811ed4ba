"""The `provision` command line: the only place that prints or exits.

Exit codes: 0 all hosts ok; 2 usage or inventory error; 3 some host failed; 4 some host
unreachable (and none failed); 130 interrupted (Ctrl-C, SIGTERM).

Longer than ~300 lines because it holds the options the commands share and the commands
that share them most (inventory, exec, setup, check, roles); train, runs, net and lab have
modules of their own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import click

from provision import __version__
from provision.cli.interrupt import stop_on_signals
from provision.cli.output import (emit, host_output, readiness, readiness_exit_code,
                                  readiness_table, recap)
from provision.cli.task_output import TaskOutput, quiet_option
from provision.connection import SUDO_PASSWORD_ENV, ConnectOptions
from provision.errors import InventoryError, ProvisionError
from provision.inventory import Inventory, load_inventory
from provision.plan import EXIT_USAGE, HostResult, Status, TaskResult, exit_code
from provision.relay.report import describe
from provision.runner import run_on_hosts
from provision.session import HostSession

CONTEXT = {"help_option_names": ["-h", "--help"]}


def fail(message: str, code: int = EXIT_USAGE) -> None:
    emit(click.style("error: ", fg="red", bold=True) + message, err=True)
    raise SystemExit(code)


def retry_path(inventory: Inventory) -> Path:
    return inventory.path.with_name(inventory.path.name + ".retry")


def resolve_limit(limit: str | None) -> str | None:
    """`--limit @file` reads the host names a previous run wrote to its retry file."""
    if limit and limit.startswith("@"):
        path = Path(limit[1:])
        try:
            return ",".join(path.read_text().split())
        except OSError as exc:
            fail(f"--limit {limit}: cannot read retry file: {exc.strerror}")
    return limit


def open_inventory(path: str | tuple[str, ...], limit: str | None, known=None,
                   extra_vars: tuple[str, ...] = ()):
    """The inventory (one source, or several merged in order) and the hosts --limit selects;
    its warnings on stderr; exit 2 listing every problem."""
    try:
        inventory = load_inventory(path, known, extra_vars)
        for warning in inventory.warnings:
            emit(click.style("warning: ", fg="yellow") + warning, err=True)
        return inventory, inventory.select(resolve_limit(limit))
    except InventoryError as exc:
        fail(f"{len(exc.problems)} problem(s) in the inventory:\n  " + "\n  ".join(exc.problems))


def more_inventories(command):
    """-i: more inventory sources, merged after the INVENTORY argument, in order."""
    return click.option("--inventory", "-i", "more_inventories", multiple=True,
                        type=click.Path(), metavar="SOURCE",
                        help="Another inventory (file, directory or host list) merged after "
                             "INVENTORY (repeatable, in order).")(command)


def connect_options(ssh: dict, hosts) -> ConnectOptions:
    password = os.environ.get(SUDO_PASSWORD_ENV)
    if ssh["ask_become_pass"] and password is None:
        password = click.prompt("sudo password", hide_input=True, err=True)
    known = Path(ssh["known_hosts"]).expanduser() if ssh["known_hosts"] else \
        ConnectOptions.known_hosts
    return ConnectOptions(known_hosts=known, host_key_policy=ssh["host_key_policy"],
                          connect_timeout=ssh["connect_timeout"], sudo_password=password)


def ssh_options(command):
    """Options every command that connects to hosts shares."""
    options = [
        click.option("--limit", "-l", help="Hosts or groups (comma-separated), or @RETRY-FILE."),
        click.option("--forks", "-f", default=16, show_default=True, type=click.IntRange(1),
                     help="Hosts worked on at once."),
        click.option("--host-key-policy", type=click.Choice(["accept-new", "strict"]),
                     default="accept-new", show_default=True,
                     help="accept-new records unknown host keys; strict refuses them. "
                          "A changed key is always refused."),
        click.option("--known-hosts", type=click.Path(dir_okay=False),
                     help="known_hosts file [default: ~/.ssh/known_hosts, or the inventory's "
                          "ssh_known_hosts]"),
        click.option("--connect-timeout", default=10.0, show_default=True, type=float,
                     help="Seconds to wait for each SSH connection."),
        click.option("--ask-become-pass", "-K", is_flag=True,
                     help=f"Prompt for the sudo password (or set {SUDO_PASSWORD_ENV})."),
        click.option("--extra-vars", "-e", "extra_vars", multiple=True, metavar="KEY=VALUE",
                     help="Set a var on every host, over the inventory (repeatable)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def ssh_settings(kwargs: dict) -> dict:
    return {k: kwargs.pop(k) for k in ("host_key_policy", "known_hosts", "connect_timeout",
                                       "ask_become_pass", "extra_vars")}


def finish(inventory: Inventory, results: list[HostResult], as_json: bool,
           transfers: list[dict] | None = None) -> None:
    """Recap (or JSON report), retry file, exit code. `transfers`: the relay's report of the
    files every host needed (provision/relay)."""
    if as_json:
        click.echo(json.dumps({"hosts": [r.as_dict() for r in results],
                               **({"transfers": transfers} if transfers is not None else {}),
                               "exit_code": exit_code(results)}, indent=2))
    else:
        recap(results)
        for entry in transfers or ():
            emit(describe(entry))
    failed = [r.host for r in results
              if r.status in (Status.FAILED, Status.UNREACHABLE, Status.INTERRUPTED)]
    retry = retry_path(inventory)
    try:
        if failed:
            retry.write_text("\n".join(failed) + "\n")
            if not as_json:
                emit(f"retry the {len(failed)} failed or interrupted host(s) with: "
                     f"--limit @{retry}")
        else:
            retry.unlink(missing_ok=True)
    except OSError as exc:
        emit(f"warning: cannot write retry file {retry}: {exc.strerror}", err=True)
    raise SystemExit(exit_code(results))


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """Provision bare-metal GPU servers over SSH and run distributed PyTorch on them."""


@main.command("inventory")
@click.argument("inventory", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="Print ansible-inventory --list's JSON: groups with their hosts and "
                   "children, _meta.hostvars with each host's merged vars.")
@click.option("--limit", "-l", help="Hosts or groups (comma-separated), or @RETRY-FILE.")
def inventory_cmd(inventory: tuple[str, ...], as_json: bool, limit: str | None) -> None:
    """Show the resolved hosts, groups and variables of an inventory: YAML or INI files,
    directories, host lists (several INVENTORY arguments merge in order)."""
    from provision.setup import known_settings
    inv, hosts = open_inventory(inventory, limit, known_settings())
    if as_json:
        click.echo(json.dumps(inv.ansible_list(hosts), indent=4, sort_keys=True, default=str))
        return
    for group in inv.groups.values():
        click.echo(f"@{group.name}: {', '.join(group.hosts) or '(no hosts)'}")
    for host in hosts:
        click.echo(f"{host.name} ({host.user or '-'}@{host.address}:{host.port})")
        for key, value in sorted(host.vars.items()):
            click.echo(f"    {key} = {value!r}")


@main.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("inventory", type=click.Path())
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@ssh_options
@more_inventories
@click.option("--sudo", is_flag=True, help="Run the command with sudo.")
@click.option("--timeout", type=float, help="Seconds the command may run on each host.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of a recap.")
def exec_cmd(inventory: str, command: tuple[str, ...], limit, forks, sudo, timeout, as_json,
             **kwargs) -> None:
    """Run an ad-hoc command on every host in parallel (one argument: a sh script)."""
    ssh = ssh_settings(kwargs)
    inv, hosts = open_inventory((inventory, *kwargs.pop("more_inventories")), limit,
                                extra_vars=ssh["extra_vars"])
    options = connect_options(ssh, hosts)
    run = command[0] if len(command) == 1 else list(command)
    width = max((len(h.name) for h in hosts), default=0)

    def work(session: HostSession, results: list[TaskResult]) -> None:
        host = session.connection.host
        result = session.connection.run(run, sudo=sudo or host.become, timeout=timeout,
                                        on_line=None if as_json else host_output(host.name, width))
        session.round_trips += 1
        status = Status.OK if result.ok else Status.FAILED
        results.append(TaskResult(host.name, "exec", "command", status,
                                  "exit code 0" if result.ok else result.describe_failure(1),
                                  output=result.stdout + result.stderr))

    with stop_on_signals() as stop:
        results = run_on_hosts(hosts, options, forks, work, stop=stop)
    if not as_json:
        for r in results:
            for t in r.tasks:
                if t.status is Status.FAILED:
                    emit(f"{click.style('FAILED', fg='red')} {t.host}: {t.message}")
    finish(inv, results, as_json)




def role_options(command):
    """Options of the commands that run roles."""
    options = [
        click.option("--tags", "-t", help="Only tasks with these tags or of these roles "
                                          "(comma-separated)."),
        click.option("--role", "role_names", multiple=True,
                     help="Only this role (repeatable) [default: every role, in order]."),
        click.option("--roles-dir", type=click.Path(file_okay=False, exists=True),
                     help="Directory of roles [default: the roles shipped with provision]."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print a JSON report instead of a recap."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_setup(inventory, limit, forks, tags, role_names, roles_dir, ssh, check: bool,
              output: TaskOutput, transfers: Callable[[list[dict]], None] | None = None,
              wait_for_lock: bool | None = None) -> tuple[Inventory, list[HostResult]]:
    """Run the roles, their results shown by `output`; `transfers` is given the relay's report
    (the files every host needed). With `wait_for_lock` (True: wait, False: fail), each host's
    run lock is held throughout."""
    from provision.host_lock import LockRequest
    from provision.relay import Relay
    from provision.relay.firewall import firewall_peers
    from provision.roles import ROLES_DIR
    from provision.runner import RunOptions, run_cluster_checks, run_roles
    from provision.setup import known_settings, load_roles, missing_required, selected_roles

    directory = Path(roles_dir) if roles_dir else ROLES_DIR
    run_options = RunOptions(check=check, forks=forks,
                             tags=frozenset(t.strip() for t in (tags or "").split(",") if t.strip()))
    try:
        roles = load_roles(directory, role_names)
        known = known_settings(directory)
    except ProvisionError as exc:
        fail(str(exc))
    selected = selected_roles(roles, run_options.tags)
    if not selected:
        names = ", ".join(r.name for r in roles)
        fail(f"--tags {tags}: no task of the roles {names} has these tags, and no role has "
             "these names" if run_options.tags else f"the roles {names} have no tasks")
    inv, hosts = open_inventory(inventory, limit, known, ssh["extra_vars"])
    if not hosts:
        fail(f"no hosts in {inv.path}" + (f" match --limit {limit}" if limit else ""))
    missing = missing_required(selected, hosts)
    if missing:
        fail(f"{len(missing)} required argument(s) not set:\n  " + "\n  ".join(missing))
    options = connect_options(ssh, hosts)
    relay = Relay(lambda: firewall_peers(inv, hosts, directory), len(hosts))

    def work(session: HostSession, out: list[TaskResult]) -> None:
        run_roles(session, inv, roles, run_options, output, out, relay)
        if session.round_trips == 0:
            # No task needed the host (every one skipped): reach it anyway, so a host that does
            # not answer is UNREACHABLE, never ok or ready.
            session.connection.open()

    def after_all(sessions: dict[str, HostSession], by_host: dict[str, HostResult]) -> None:
        relay.close()     # the hosts' copies go before the cross-host checks
        run_cluster_checks(sessions, by_host, inv, roles, run_options, output)

    lock = None if wait_for_lock is None else LockRequest.for_this_run(
        wait_for_lock, lambda host, message: emit(f"{host}: {message}", err=True))
    shown = [r.name for r in selected]
    with stop_on_signals() as stop, output.watching(shown, [h.name for h in hosts]) as progress:
        results = run_on_hosts(hosts, options, forks, work, after_all, stop=stop, lock=lock,
                               listener=output, progress=progress)
    if transfers is not None:
        transfers(relay.report())
    return inv, results


@main.command("setup")
@click.argument("inventory", type=click.Path())
@ssh_options
@more_inventories
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show the changes to files.")
@role_options
@click.option("--verbose", "-v", is_flag=True,
              help="Also print OK tasks on a terminal (above the live view), skipped tasks, "
                   "and where an unexpected error was raised.")
@quiet_option
@click.option("--no-wait", is_flag=True,
              help="Fail a host at once (exit 3) when another run holds its lock, instead of "
                   "waiting for that run to end.")
def setup_cmd(inventory, limit, forks, check, diff, tags, role_names, roles_dir, as_json,
              verbose, quiet, no_wait, **kwargs) -> None:
    """Make every host ready for training (idempotent; --check changes nothing).

    On a terminal, a live view shows each role's progress, with changes and failures printed
    above it; off a terminal, every task is a plain line.

    A run holds a lock on each host (not with --check), so two runs, even from two
    controllers, never change a host at once: the second waits, naming the first."""
    output = TaskOutput(check, diff, verbose, quiet, as_json, every_task=True)
    transfers: list[dict] = []
    inv, results = run_setup((inventory, *kwargs.pop("more_inventories")), limit, forks, tags,
                             role_names, roles_dir, ssh_settings(kwargs), check, output,
                             transfers.extend,
                             wait_for_lock=None if check else not no_wait)
    finish(inv, results, as_json, transfers)


@main.command("check")
@click.argument("inventory", type=click.Path())
@ssh_options
@more_inventories
@role_options
@click.option("--verbose", "-v", is_flag=True, help="Also print every task's result.")
@quiet_option
def check_cmd(inventory, limit, forks, tags, role_names, roles_dir, as_json, verbose, quiet,
              **kwargs) -> None:
    """Verify every host is ready (changes nothing): a host x role table; exit 3 if not.
    On a terminal, a live view shows each role's progress while the hosts are read."""
    output = TaskOutput(True, False, verbose, quiet, as_json, every_task=False)
    inv, results = run_setup((inventory, *kwargs.pop("more_inventories")), limit, forks, tags,
                             role_names, roles_dir, ssh_settings(kwargs), True, output)
    table = readiness(results)
    if as_json:
        click.echo(json.dumps({"ready": table, "hosts": [r.as_dict() for r in results]},
                              indent=2))
    else:
        readiness_table(table)
    raise SystemExit(readiness_exit_code(results))


@main.command("roles")
@click.argument("names", nargs=-1)
@click.option("--roles-dir", type=click.Path(file_okay=False, exists=True),
              help="Directory of roles [default: the roles shipped with provision].")
def roles_cmd(names: tuple[str, ...], roles_dir: str | None) -> None:
    """List the roles, their tasks and the inventory vars that set their arguments."""
    from provision.roles import ROLES_DIR
    from provision.setup import load_roles

    directory = Path(roles_dir) if roles_dir else ROLES_DIR
    try:
        roles = load_roles(directory, names)
    except ProvisionError as exc:
        fail(str(exc))
    for role in roles:
        click.echo(click.style(role.name, bold=True) + f": {role.description}")
        for name, setting in role.args.items():
            default = role.defaults.get(name)
            click.echo(f"  {name} ({setting.type}) = "
                       + ("(required)" if name in role.required else
                          "(unset)" if default is None else repr(default))
                       + (f"\n      {setting.help}" if setting.help else ""))
        click.echo("  tasks: " + ", ".join(t.name for t in role.tasks)
                   + (f"; cluster checks: {', '.join(role.cluster_checks)}"
                      if role.cluster_checks else ""))


def _register() -> None:
    from provision.cli.lab_cmd import lab
    from provision.cli.net_cmd import net_cmd
    from provision.cli.runs_cmd import attach_cmd, logs_cmd, runs_cmd, stop_cmd
    from provision.cli.train_cmd import train_cmd
    main.add_command(lab)
    main.add_command(net_cmd)
    main.add_command(train_cmd)
    for command in (runs_cmd, logs_cmd, attach_cmd, stop_cmd):
        main.add_command(command)


_register()
