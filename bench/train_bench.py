"""Figure 4: `provision train` launch overhead and teardown times, on lab hosts.

Launch: from starting `provision train` until every rank's first line came through, minus the
same for the same script under a plain local `torchrun` (1 node, nproc 1) on this machine.
Ctrl-C: SIGINT to the provision process, then the time until no process with the job's
PROVISION_RUN_ID is left on any node. Node death: kill -9 the worker of node rank 1, then the
same wait. Orphans: processes with the run id still there once provision has exited.
Processes are found through this machine's /proc (a lab host's processes are ours too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import cluster as clusters
from bench.proc import processes_with_env, wait_until_none
from provision.train.config import RUN_ID_VAR

SCRIPT = Path(__file__).resolve().parent / "first_line.py"
ENV = "/opt/trainenv"
PYTHON = f"{ENV}/bin/python"
TEARDOWN_TIMEOUT = 60
ENVIRONMENT = {**os.environ, "PYTHONUNBUFFERED": "1"}


def prepare(lab) -> None:
    """A training environment on every host, as the lab tests make it: the controller's Python
    (it has torch) and the lock marker the conda role writes last."""
    for host in lab.hosts:
        lab.sh(host.name, f"mkdir -p {ENV}/bin && ln -sf {sys.executable} {PYTHON} && "
                          f"echo lock-1 > {ENV}/.provision-lock-sha256")


class FirstLines:
    """Reads a process's stdout; notes when `count` distinct ranks have printed 'first-line'."""

    def __init__(self, process: subprocess.Popen, count: int, start: float):
        self.process, self.count, self.start = process, count, start
        self.ranks: set[str] = set()
        self.all_at: float | None = None
        self.done = threading.Event()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout or ():
            self.lines.append(line.rstrip("\n"))
            if "first-line rank=" in line:
                self.ranks.add(line.split("first-line rank=", 1)[1].split()[0])
                if len(self.ranks) >= self.count and self.all_at is None:
                    self.all_at = time.monotonic() - self.start
                    self.done.set()
        self.done.set()


def local_torchrun(copies: int = 1) -> tuple[float | None, float | None]:
    """Seconds until the script's first line under a plain single-node torchrun here; with
    copies > 1, until each of that many torchruns started at once has printed it (the CPU
    contention of N nodes sharing this machine's cores, without provision). Second: seconds
    from SIGTERM to every one of them, and their workers, gone (what a teardown cannot beat)."""
    start = time.monotonic()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=1",
         f"--master_port={29700 + index}", str(SCRIPT), "600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENVIRONMENT,
        start_new_session=True) for index in range(copies)]
    readers = [FirstLines(process, 1, start) for process in processes]
    for reader in readers:
        reader.done.wait(120)
    sent = time.monotonic()
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    while any(_group_alive(process.pid) for process in processes):
        time.sleep(0.02)
    gone = time.monotonic() - sent
    times = [r.all_at for r in readers if r.all_at is not None]
    return (max(times) if len(times) == len(readers) else None), gone


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def one_job(inventory: Path, nodes: int, runs_dir: Path, stop: str) -> dict:
    """Launch, wait for every rank's first line, then stop the job by `stop` ('sigint' or
    'node_death') and time the teardown."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in runs_dir.iterdir()}
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "provision", "train", "-i", str(inventory), "--python",
                                PYTHON, "--runs-dir", str(runs_dir), str(SCRIPT), "600"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENVIRONMENT)
    stderr: list[str] = []
    marks: dict[str, float] = {}

    def read_stderr() -> None:
        for line in process.stderr or ():
            # Printed once the checks and the staging are done, just before the launch.
            if line.startswith("run ") and "launched_s" not in marks:
                marks["launched_s"] = time.monotonic() - start
            stderr.append(line)

    threading.Thread(target=read_stderr, daemon=True).start()
    reader = FirstLines(process, nodes, start)
    result: dict = {"nodes": nodes, "stop": stop}
    try:
        reader.done.wait(120)
        result["first_lines_s"] = reader.all_at
        # Profile: controller start-up + connections + pre-launch checks + staging ...
        result["checks_and_staging_s"] = marks.get("launched_s")
        if reader.all_at is None:
            result["error"] = "not every rank printed: " + "".join(stderr)[-1500:]
            return result
        run_id = next((p.name for p in runs_dir.iterdir() if p.name not in before), None)
        result["run_id"] = run_id
        if run_id is None:
            result["error"] = f"no run directory appeared in {runs_dir}"
            return result
        if stop == "sigint":
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
        else:
            victims = [pid for pid, (argv, env) in processes_with_env(RUN_ID_VAR, run_id).items()
                       if env.get("GROUP_RANK") == "1" and str(SCRIPT.name) in " ".join(argv)
                       and "torch.distributed.run" not in argv]
            if not victims:
                result["error"] = "no worker of node rank 1 found"
                return result
            sent = time.monotonic()
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
        result["all_gone_s"] = wait_until_none(RUN_ID_VAR, run_id, sent, TEARDOWN_TIMEOUT)
        try:
            process.wait(TEARDOWN_TIMEOUT)
            result["provision_exit_s"] = time.monotonic() - sent
        except subprocess.TimeoutExpired:
            result["error"] = "provision train did not exit"
        result["returncode"] = process.returncode
        time.sleep(0.5)    # anything about to be re-parented or restarted shows up now
        result["orphans"] = len(processes_with_env(RUN_ID_VAR, run_id))
        expected = 130 if stop == "sigint" else None
        if expected is not None and process.returncode != expected:
            result["error"] = f"exit {process.returncode}, not {expected}"
        elif stop == "node_death" and process.returncode in (0, 130):
            result["error"] = f"exit {process.returncode} after a node death"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        result["stderr_tail"] = "".join(stderr)[-800:]
    return result


def measure(node_counts: list[int], runs: int, workdir: Path, log) -> dict:
    result: dict = {"node_counts": node_counts, "baseline": [], "concurrent_baseline": {},
                    "concurrent_teardown": {}, "jobs": []}
    for index in range(runs):
        seconds, _ = local_torchrun()
        result["baseline"].append(seconds)
        log(f"  plain local torchrun, first line: {_fmt(seconds)} s")
    for nodes in node_counts:
        times = result["concurrent_baseline"][str(nodes)] = []
        stops = result["concurrent_teardown"][str(nodes)] = []
        for index in range(runs):
            first, gone = local_torchrun(nodes)
            times.append(first)
            stops.append(gone)
            log(f"  {nodes} plain local torchruns at once, every first line: "
                f"{_fmt(first)} s, SIGTERM to all gone {_fmt(gone)} s")
    size = max(node_counts)
    with clusters.cluster(size, training=size, log=log) as lab:
        prepare(lab)
        names = [h.name for h in lab.hosts]
        for nodes in node_counts:
            inventory = clusters.write_inventory(lab, workdir / f"train-{nodes}.yaml",
                                                 training=names[:nodes], roles=False)
            for index in range(runs):
                for stop in ("sigint", "node_death"):
                    if stop == "node_death" and nodes < 2:
                        continue
                    job = one_job(inventory, nodes, workdir / "runs", stop)
                    result["jobs"].append(job)
                    log(f"  train {nodes} nodes ({stop}): first lines "
                        f"{_fmt(job.get('first_lines_s'))} s, all gone {_fmt(job.get('all_gone_s'))} s, "
                        f"orphans {job.get('orphans')}"
                        + (f", ERROR {job['error'][:300]}" if job.get("error") else ""))
    return result


def _fmt(value) -> str:
    return "?" if value is None else f"{value:.2f}"
