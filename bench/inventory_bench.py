"""Loading large inventories (issue 11): 1,000 and 10,000 hosts, YAML and INI, each as an ops
team writes a fleet (racks as groups, ranges, group_vars/ and host_vars/). Measures the load
(parse, merge, validate) in this process and `provision inventory --json` as a user runs it;
prints, never fails on a time.

    python -m bench.inventory_bench                     # 1000,10000 hosts, 5 runs each
    python -m bench.inventory_bench --sizes 10000 --runs 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import format_table, summarize
from provision.inventory import load_inventory
from provision.setup import known_settings

RACK = 50      # hosts per rack group


def fleet_yaml(directory: Path, hosts: int) -> Path:
    """Racks of explicit hosts with their addresses, a training group as one range."""
    lines = ["all:", "  vars: {ansible_user: ops, gpus: 8, rendezvous_port: 29500}",
             "  children:"]
    for rack in range(hosts // RACK):
        lines += [f"    rack{rack:03d}:", f"      vars: {{rack: {rack}}}", "      hosts:"]
        for slot in range(RACK):
            n = rack * RACK + slot
            lines.append(f"        gpu{n:05d}: {{ansible_host: 10.{n // 65536}.{n // 256 % 256}."
                         f"{n % 256}}}")
    lines += ["    training:", "      hosts:", f"        gpu[00000:{hosts - 1:05d}]:"]
    path = directory / "hosts.yml"
    path.write_text("\n".join(lines) + "\n")
    (directory / "group_vars").mkdir()
    (directory / "group_vars" / "rack001.yml").write_text("ntp_servers: [10.250.0.1]\n")
    (directory / "host_vars").mkdir()
    (directory / "host_vars" / "gpu00007.yml").write_text("gpus: 4\n")
    return path


def fleet_ini(directory: Path, hosts: int) -> Path:
    """Racks as ranges with inline vars, [rack:vars], [training:children]."""
    lines = []
    for rack in range(hosts // RACK):
        first = rack * RACK
        lines += [f"[rack{rack:03d}]",
                  f"gpu[{first:05d}:{first + RACK - 1:05d}] ansible_user=ops rack={rack}",
                  f"[rack{rack:03d}:vars]", "gpus=8"]
    lines += ["[training:children]", *(f"rack{r:03d}" for r in range(hosts // RACK))]
    path = directory / "hosts"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inventory_bench", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000", help="host counts (default 1000,10000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    args = parser.parse_args(argv)
    known = known_settings()
    rows = []
    for size in sorted({int(s) for s in args.sizes.split(",")}):
        for kind, make in (("YAML", fleet_yaml), ("INI", fleet_ini)):
            with tempfile.TemporaryDirectory() as tmp:
                path = make(Path(tmp), size)
                loads, clis = [], []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    inventory = load_inventory(str(path), known)
                    loads.append(time.perf_counter() - started)
                    assert len(inventory.hosts) == size, (kind, size, len(inventory.hosts))
                    started = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "provision", "inventory", str(path),
                                    "--json"], check=True, stdout=subprocess.DEVNULL)
                    clis.append(time.perf_counter() - started)
                rows.append([f"{size} hosts, {kind}", summarize(loads).text(),
                             summarize(clis).text()])
                print(f"{size} hosts, {kind}: load {summarize(loads).text()}", file=sys.stderr)
    print(format_table(["inventory", "load (parse, merge, validate)",
                        "`provision inventory --json` (process)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
