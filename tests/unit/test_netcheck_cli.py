"""`provision net` before it connects anywhere: option checks, the plot hint, exit codes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from provision.cli import main
from provision.cli.net_cmd import EXIT_FLAGGED, EXIT_INTERRUPTED, EXIT_UNREACHABLE, exit_code
from provision.netcheck import plot
from provision.netcheck.collective import CollectiveResult
from provision.netcheck.endpoint import NodeState


def invoke(*args):
    return CliRunner().invoke(main, ["net", *map(str, args)])


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text("all:\n  hosts:\n    a: {ansible_host: 192.0.2.1}\n")
    return path


def test_plot_without_matplotlib_says_what_to_install(inventory, monkeypatch):
    monkeypatch.setattr(plot, "available", lambda: False)
    done = invoke(inventory, "--plot", "net.png")
    assert done.exit_code == 2
    assert "pip install 'provision[plot]'" in done.output
    assert "Traceback" not in done.output


@pytest.mark.parametrize("args, message", [
    (["--max-size", "64X"], "not a size"),
    (["--min-size", "1M", "--max-size", "1K"], "larger than --max-size"),
    (["--threshold", "0"], "--threshold"),
    (["--group", "nope"], "no hosts to check in group nope"),
])
def test_usage_errors(inventory, args, message):
    done = invoke(inventory, *args)
    assert done.exit_code == 2 and message in done.output, done.output


def test_nodes_that_refuse_ssh_are_unreachable_exit_4(tmp_path, isolated_home):
    # Port 1 on this machine's loopback: refused at once, nothing leaves the machine.
    path = tmp_path / "inventory.yaml"
    path.write_text("all:\n  hosts:\n"
                    "    a: {ansible_host: 127.0.0.1, ansible_port: 1}\n"
                    "    b: {ansible_host: 127.0.0.2, ansible_port: 1}\n")
    done = invoke(path, "--known-hosts", tmp_path / "known_hosts")
    assert done.exit_code == 4, done.output
    assert done.output.count("UNREACHABLE") == 2 and "Traceback" not in done.output
    assert "collective" not in done.output


def nodes(*states: NodeState) -> dict[str, NodeState]:
    return {s.name: s for s in states}


@pytest.mark.parametrize("states, flagged, result, code", [
    ((NodeState("a"), NodeState("b")), False, CollectiveResult(), 0),
    ((NodeState("a"), NodeState("b")), False, None, 0),
    ((NodeState("a"), NodeState("b")), True, CollectiveResult(), EXIT_FLAGGED),
    ((NodeState("a"), NodeState("b", problem="cannot listen")), False, None, EXIT_FLAGGED),
    ((NodeState("a"), NodeState("b", problem="down", unreachable=True)), False,
     CollectiveResult(skipped="b could not be measured"), EXIT_UNREACHABLE),
    ((NodeState("a"), NodeState("b", problem="down", unreachable=True)), True, None,
     EXIT_FLAGGED),
    ((NodeState("a"), NodeState("b")), False, CollectiveResult(problem="a: exit code 1"),
     EXIT_FLAGGED),
    ((NodeState("a"), NodeState("b")), True, CollectiveResult(interrupted=True),
     EXIT_INTERRUPTED),
])
def test_exit_code(states, flagged, result, code):
    assert exit_code(nodes(*states), flagged, result) == code
