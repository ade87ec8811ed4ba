"""`provision net` wall time on lab clusters: the full tournament, the --quick ring, and the full
check with its all-reduce sweep, on each size (issue 15). Measures and prints; never fails on a
time (exit 1 only when a run broke: an exit code other than 0, or a problem in its report).

    sudo python -m bench.net_bench                       # 4,8,16 hosts, 1 run each
    sudo python -m bench.net_bench --sizes 4 --runs 3 --seconds 2

Each run is the real CLI in a subprocess, as a user runs it, with --json (the terminal tables
cost nothing worth timing). The sweep uses this Python (it has torch) on every lab host, and a
small sweep (1 KiB to 1 MiB, 5 iterations): its time is mostly N torch imports on 2 cores.
Labs as bench/cluster.py makes them (PROVISION_BENCH_LAB_NAME / _SUBNET move them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench import cluster as clusters
from bench.stats import format_table, summarize

VARIANTS = {
    "full": ["--no-collective"],
    "quick": ["--quick", "--no-collective"],
    "full + all-reduce": ["--python", sys.executable, "--max-size", "1M", "--iters", "5"],
}


def one_run(inventory, seconds: float, extra: list[str]) -> tuple[float, str | None]:
    """Seconds the command took, and what went wrong, if anything did."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "provision", "net", str(inventory), "--json",
                           "--seconds", str(seconds), *extra],
                          capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - started
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return elapsed, f"exit {done.returncode}, no report: {done.stderr.strip()[-500:]}"
    problems = [f["message"] for f in report["findings"]] + \
        [n["problem"] for n in report["nodes"] if n["problem"]]
    if report["collective"] and report["collective"]["problem"]:
        problems.append(report["collective"]["problem"])
    if done.returncode != 0 or problems:
        return elapsed, f"exit {done.returncode}: {'; '.join(problems)[:500]}"
    return elapsed, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.net_bench", description=__doc__)
    parser.add_argument("--sizes", default="4,8,16", help="lab sizes (default 4,8,16)")
    parser.add_argument("--runs", type=int, default=1, help="runs per figure (default 1)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="provision net --seconds (default 1)")
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated from: {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench.net_bench needs root (the lab)", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.only.split(",") if v.strip()]
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--only: choose from {', '.join(VARIANTS)}")
    times: dict[tuple[int, str], list[float]] = {}
    errors: list[str] = []
    load = os.getloadavg()
    for size in sorted({int(s) for s in args.sizes.split(",")}):
        with clusters.cluster(size, log=lambda m: print(m, file=sys.stderr)) as lab:
            inventory = clusters.write_inventory(lab, lab.dir / "bench-net.yaml", roles=False)
            for variant in variants:
                for _ in range(args.runs):
                    elapsed, error = one_run(inventory, args.seconds, VARIANTS[variant])
                    times.setdefault((size, variant), []).append(elapsed)
                    if error:
                        errors.append(f"{size} hosts, {variant}: {error}")
                    print(f"{size} hosts, {variant}: {elapsed:.1f} s", file=sys.stderr)
    print(f"provision net, --seconds {args.seconds:g}, {args.runs} run(s) each; load average "
          f"{load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end\n")
    sizes = sorted({size for size, _ in times})
    print(format_table(["hosts", *variants],
                       [[str(size), *(summarize(times.get((size, v), [])).text() for v in variants)]
                        for size in sizes]))
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
