"""Detached runs on lab clusters (issue 14): launch to every rank's first line, detached and in
the foreground; `runs` and `stop` wall time; a worker's death to every process of the run gone
with no controller. Measures and prints; never fails on a time (exit 1 when a run broke).

    sudo python -m bench.detached_bench                  # 2,4,8 nodes, 3 runs each
    sudo python -m bench.detached_bench --nodes 2,4 --runs 1

Every command is the real CLI in a subprocess. A detached run's first lines are seen through
`provision attach`, started as soon as `train --detach` returns (its connection set-up overlaps
the workers' start). Processes are found through this machine's /proc, as bench/train_bench.py
finds them. The nodes run a venv of this Python made in the lab directory (it sees this
interpreter's site-packages, where torch is), with the lock marker the conda role writes.
Labs as bench/cluster.py makes them (PROVISION_BENCH_LAB_NAME / _SUBNET move them).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import cluster as clusters
from bench.proc import processes_with_env, timed, wait_until_none
from bench.stats import format_table, summarize
from bench.train_bench import ENVIRONMENT, SCRIPT, FirstLines
from provision.train.config import RUN_ID_VAR

WAIT = 180.0                # seconds for any one step before it counts as broken
PORTS = {"firewall_extra_ports": ["29501"]}


def training_env(lab) -> str:
    """A venv every host can run (the lab directory is seen by every host), whose site-packages
    lead to this Python's: a bare symlink to a venv's python would not find torch."""
    env = lab.dir / "bench-env"
    base = Path(sys.base_prefix) / "bin" / Path(sys.executable).name
    subprocess.run([str(base), "-m", "venv", "--clear", "--without-pip", str(env)], check=True)
    site = next(env.glob("lib/python*/site-packages"))
    (site / "controller.pth").write_text(
        next(Path(sys.prefix).glob("lib/python*/site-packages")).as_posix() + "\n")
    (env / ".provision-lock-sha256").write_text("bench\n")
    return str(env / "bin" / "python")


def provision(*args: str) -> list[str]:
    return [sys.executable, "-m", "provision", *map(str, args)]


def foreground(inventory: Path, nodes: int, python: str, runs_dir: Path) -> float | None:
    """Seconds from `provision train` to every rank's first line; then Ctrl-C."""
    start = time.monotonic()
    process = subprocess.Popen(provision("train", "-i", inventory, "--python", python,
                                         "--runs-dir", runs_dir, SCRIPT, "600"),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=ENVIRONMENT)
    reader = FirstLines(process, nodes, start)
    reader.done.wait(WAIT)
    process.send_signal(signal.SIGINT)
    process.wait(WAIT)
    return reader.all_at


def detach(inventory: Path, python: str, *args: str) -> tuple[str, float]:
    """The run id and how long `train --detach` took."""
    done = timed(provision("train", "--detach", "-i", inventory, "--python", python, SCRIPT,
                           *args), timeout=WAIT, env=ENVIRONMENT)
    if done.returncode != 0:
        raise RuntimeError(f"train --detach: exit {done.returncode}: {done.stderr[-800:]}")
    return done.stdout.strip(), done.seconds


def first_lines(inventory: Path, run_id: str, nodes: int, start: float) -> float | None:
    """Seconds from `start` until `provision attach` showed every rank's first line."""
    attach = subprocess.Popen(provision("attach", run_id, "-i", inventory),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=ENVIRONMENT)
    reader = FirstLines(attach, nodes, start)
    reader.done.wait(WAIT)
    attach.send_signal(signal.SIGINT)     # detaches; the run goes on
    attach.wait(WAIT)
    return reader.all_at


def worker_death(run_id: str) -> float | None:
    """kill -9 the workers of node rank 1; seconds until no process of the run is left."""
    victims = [pid for pid, (argv, env) in processes_with_env(RUN_ID_VAR, run_id).items()
               if env.get("GROUP_RANK") == "1" and SCRIPT.name in " ".join(argv)
               and "torch.distributed.run" not in argv]
    if not victims:
        raise RuntimeError("no worker of node rank 1 found")
    sent = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return wait_until_none(RUN_ID_VAR, run_id, sent, WAIT)


def measure(node_counts: list[int], runs: int, log) -> dict[str, dict[int, list]]:
    figures: dict[str, dict[int, list]] = {}

    def note(name: str, nodes: int, value) -> None:
        figures.setdefault(name, {}).setdefault(nodes, []).append(value)
        log(f"  {nodes} nodes, {name}: " + ("?" if value is None else f"{value:.2f} s"))

    size = max(node_counts)
    with clusters.cluster(size, training=size, log=log) as lab:
        python = training_env(lab)
        names = [h.name for h in lab.hosts]
        for nodes in node_counts:
            inventory = clusters.write_inventory(lab, lab.dir / f"detached-{nodes}.yaml",
                                                 training=names[:nodes], extra_vars=PORTS,
                                                 roles=False)
            for _ in range(runs):
                note("foreground: every first line", nodes,
                     foreground(inventory, nodes, python, lab.dir / "runs"))
                start = time.monotonic()
                run_id, launch = detach(inventory, python, "600")
                note("train --detach returns", nodes, launch)
                note("detached: every first line", nodes,
                     first_lines(inventory, run_id, nodes, start))
                if nodes > 1:
                    note("worker killed to all gone, no controller", nodes, worker_death(run_id))
                else:
                    timed(provision("stop", run_id, "-i", inventory), timeout=WAIT)
                if nodes == size:
                    run_id, _ = detach(inventory, python, "600")
                    note("runs", nodes, timed(provision("runs", "-i", inventory)).seconds)
                    stopped = timed(provision("stop", run_id, "-i", inventory), timeout=WAIT)
                    note("stop", nodes, stopped.seconds)
                    if stopped.returncode != 0 or processes_with_env(RUN_ID_VAR, run_id):
                        raise RuntimeError(f"stop left processes: {stopped.stderr[-500:]}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detached_bench", description=__doc__)
    parser.add_argument("--nodes", default="2,4,8", help="node counts (default 2,4,8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench.detached_bench needs root (the lab)", file=sys.stderr)
        return 2
    node_counts = sorted({int(n) for n in args.nodes.split(",") if n.strip()})
    load = os.getloadavg()
    try:
        figures = measure(node_counts, args.runs, lambda m: print(m, file=sys.stderr))
        error = None
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        figures, error = {}, str(exc)
    print(f"detached runs, {args.runs} run(s) each, median (min-max); load average "
          f"{load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end\n")
    print(format_table(["figure", *(f"{n} nodes" for n in node_counts)],
                       [[name, *(summarize(by_nodes.get(n, [])).text() for n in node_counts)]
                        for name, by_nodes in figures.items()]))
    if error:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
