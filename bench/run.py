"""python -m bench: bring up lab clusters, measure, print the table, write the raw runs as JSON."""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import cluster as clusters
from bench import report

FIGURES = ("setup", "ansible", "fanout", "train")
DEFAULT_FORKS = 16          # provision's default --forks; Ansible gets the same


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="4,16",
                        help="lab sizes for the setup and ansible figures (default 4,16; 64 is "
                             "opt-in: --sizes 4,16,64)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument("--json", dest="json_path", help="where the raw runs go (default: "
                        "~/.cache/provision-bench/results/bench-<time>.json)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"figures to measure, comma-separated from {','.join(FIGURES)}")
    parser.add_argument("--nodes", default="2,4,8",
                        help="node counts for the train figures (default 2,4,8)")
    parser.add_argument("--forks", type=int, default=DEFAULT_FORKS,
                        help=f"provision --forks and Ansible forks (default {DEFAULT_FORKS})")
    args = parser.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    args.nodes = sorted({int(s) for s in args.nodes.split(",") if s.strip()})
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in args.only if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if args.runs < 1 or any(s < 1 for s in args.sizes + args.nodes):
        parser.error("--runs, --sizes and --nodes must be positive")
    return args


def machine() -> dict:
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "openssh": ssh,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench needs root (the lab: namespaces, a bridge, mounts)",
              file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json_path) if args.json_path else \
        clusters.CACHE / "results" / f"bench-{stamp}.json"
    workdir = clusters.CACHE / "work" / stamp
    workdir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {message}",
              file=sys.stderr, flush=True)

    results: dict = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "load_start": os.getloadavg(), "runs": args.runs,
        "forks": args.forks, "figures": args.only, "roles": clusters.present_roles(),
        "missing_roles": clusters.missing_roles(), "setup": {}, "errors": [], "notes": []}
    # As `pip install` does: with PYTHONDONTWRITEBYTECODE set (it is on some machines), every
    # run would otherwise compile provision's modules again (~65 ms).
    compileall.compile_dir(str(clusters.REPO / "provision"), quiet=1)
    if "ansible" in args.only:
        from bench.setup_bench import ansible_playbook, ansible_version
        ansible_playbook()
        results["ansible_version"] = ansible_version()

    setup_sizes = set(args.sizes) if {"setup", "ansible"} & set(args.only) else set()
    fanout_large = max([s for s in args.sizes if s > 8], default=None)
    if "fanout" in args.only and fanout_large:
        setup_sizes |= {8, fanout_large}
    elif "fanout" in args.only:
        results["notes"].append("fan-out not measured: it needs a size above 8 in --sizes "
                                "(e.g. --sizes 4,16,64)")
    try:
        for size in sorted(setup_sizes):
            from bench.setup_bench import measure_size
            log(f"setup figures on {size} hosts")
            load = os.getloadavg()
            try:
                figure = measure_size(size, args.runs, args.forks,
                                      "ansible" in args.only and size in args.sizes, workdir, log)
            except Exception as exc:  # noqa: BLE001 -- a broken size does not lose the others
                figure = {"size": size, "error": f"{exc}\n{traceback.format_exc()[-2000:]}"}
            figure["load"] = load
            results["setup"][str(size)] = figure
            if figure.get("error"):
                results["errors"].append(f"setup {size} hosts: {figure['error'][:500]}")
                log(f"ERROR: {figure['error'][:1000]}")
        if "train" in args.only:
            from bench import train_bench
            log(f"train figures on {', '.join(map(str, args.nodes))} nodes")
            load = os.getloadavg()
            try:
                results["train"] = train_bench.measure(args.nodes, args.runs, workdir, log)
            except Exception as exc:  # noqa: BLE001 -- reported, the table still printed
                results["train"] = {"error": f"{exc}\n{traceback.format_exc()[-2000:]}"}
            results["train"]["load"] = load
            for job in results["train"].get("jobs", []):
                if job.get("error"):
                    results["errors"].append(f"train {job['nodes']} nodes {job['stop']}: "
                                             f"{job['error'][:500]}")
                if job.get("orphans"):
                    results["errors"].append(f"train {job['nodes']} nodes {job['stop']}: "
                                             f"{job['orphans']} orphaned process(es)")
            if results["train"].get("error"):
                results["errors"].append(f"train: {results['train']['error'][:500]}")
    except KeyboardInterrupt:
        results["errors"].append("interrupted")
    finally:
        results["load_end"] = os.getloadavg()
        results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1, default=str))
    print(report.render(results))
    for note in results["notes"]:
        print(f"note: {note}")
    print(f"\nraw runs: {json_path}")
    for error in results["errors"]:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if results["errors"] else 0

