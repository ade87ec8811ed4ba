"""`provision lab up|down|status`: the local lab cluster (needs root)."""

from __future__ import annotations

import click

from provision.cli import fail
from provision.cli.output import emit
from provision.errors import LabError
from provision.lab import DEFAULT_HOSTS, DEFAULT_NAME, DEFAULT_SUBNET, Lab

EXIT_LAB_ERROR = 1


def lab_options(command):
    command = click.option("--dir", "directory", type=click.Path(file_okay=False),
                           help="Lab directory [default: ./.lab/NAME].")(command)
    return click.option("--name", default=DEFAULT_NAME, show_default=True,
                        help="Lab name; interface and namespace names derive from it.")(command)


def open_lab(name: str, directory: str | None, subnet: str | None = None) -> Lab:
    try:
        return Lab(name, directory, subnet)
    except LabError as exc:
        fail(str(exc), EXIT_LAB_ERROR)


@click.group()
def lab() -> None:
    """A cluster of hosts on this machine (network namespaces, each with a real sshd)."""


@lab.command("up")
@lab_options
@click.option("--hosts", "-n", default=DEFAULT_HOSTS, show_default=True, type=click.IntRange(1),
              help="Hosts the lab should have (never shrinks a running lab).")
@click.option("--subnet", help=f"Private IPv4 subnet of the lab [default: {DEFAULT_SUBNET}, "
                               "or the one the lab already has].")
@click.option("--training", type=click.IntRange(1),
              help="How many of the first hosts form the inventory's training group "
                   "[default: all].")
def up_cmd(name: str, directory: str | None, hosts: int, subnet: str | None,
           training: int | None) -> None:
    """Bring the lab up, or repair it: starts only the hosts that are not running."""
    the_lab = open_lab(name, directory, subnet)
    try:
        the_lab.up(hosts, training)
    except LabError as exc:
        fail(str(exc), EXIT_LAB_ERROR)
    show(the_lab)
    first = the_lab.hosts[0]
    emit(f"\ninventory: {the_lab.inventory_path}")
    emit(f"sudo password of 'deploy': {the_lab.sudo_password_path}")
    emit(f"try: ssh -i {the_lab.key_path} -o UserKnownHostsFile={the_lab.known_hosts_path} "
         f"root@{first.address} hostname")


@lab.command("down")
@lab_options
def down_cmd(name: str, directory: str | None) -> None:
    """Stop every host and remove the lab's namespaces, interfaces and runtime files."""
    the_lab = open_lab(name, directory)
    try:
        the_lab.down()
    except LabError as exc:
        fail(str(exc), EXIT_LAB_ERROR)
    emit(f"lab {name} is down")


@lab.command("status")
@lab_options
def status_cmd(name: str, directory: str | None) -> None:
    """List the lab's hosts; exits 1 when the lab is down or a host is unhealthy."""
    the_lab = open_lab(name, directory)
    if not the_lab.hosts:
        emit(f"lab {name} is down ({the_lab.dir})")
        raise SystemExit(EXIT_LAB_ERROR)
    if not show(the_lab):
        raise SystemExit(EXIT_LAB_ERROR)


def show(the_lab: Lab) -> bool:
    """Print one line per host; True when every host is healthy."""
    try:
        statuses = the_lab.status()
    except LabError as exc:
        fail(str(exc), EXIT_LAB_ERROR)
    width = max(len(s.name) for s in statuses)
    emit(f"{'HOST'.ljust(width)}  {'ADDRESS':15}  {'INIT PID':>8}  SSHD  SSH:22")
    for s in statuses:
        emit(f"{s.name.ljust(width)}  {s.address:15}  {s.init_pid or '-':>8}  "
             f"{yes_no(s.sshd_alive, 4)}  {yes_no(s.ssh_reachable, 3)}")
    return all(s.healthy for s in statuses)


def yes_no(flag: bool, width: int) -> str:
    return click.style("yes".ljust(width), fg="green") if flag else \
        click.style("no".ljust(width), fg="red")
