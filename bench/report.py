"""The table of figures from a results dict (what `python -m bench` writes as JSON)."""

from __future__ import annotations

from bench.stats import Summary, differences, format_table, ratio, summarize, verdict

HEADER = ["figure", "hosts", "median", "min", "max", "runs", "target", ""]

# DESIGN.md section 5 (issue 6 asks for 0.25x Ansible; DESIGN.md for a tenth).
SETUP_TARGET_S = 2.0          # at 16 hosts
RATIO_TARGET = 0.10           # at 16 hosts
FANOUT_TARGET = 2.0
LAUNCH_TARGET_S = 1.0         # at 8 nodes
SIGINT_TARGET_S = 3.0
DEATH_TARGET_S = 10.0


def _row(name: str, hosts, summary: Summary, unit: str = "s", target: str = "",
         mark: str = "", digits: int = 2) -> list[str]:
    def number(value: float) -> str:
        return "-" if summary.n == 0 else f"{value:.{digits}f}{unit}"
    return [name, str(hosts), number(summary.median), number(summary.low), number(summary.high),
            str(summary.n), target, mark]


def _walls(runs: list[dict]) -> list[float]:
    return [r["wall_s"] for r in runs if r.get("returncode") == 0]


def setup_rows(setup: dict) -> list[list[str]]:
    rows = []
    for key in sorted(setup, key=int):
        figure = setup[key]
        size = int(key)
        ours = _walls(figure.get("provision", []))
        if figure.get("provision"):
            target = "< 2 s" if size == 16 else ""
            mark = verdict(summarize(ours).median if ours else None, SETUP_TARGET_S) \
                if size == 16 else ""
            rows.append(_row("no-op setup, provision (wall)", size, summarize(ours),
                             target=target, mark=mark))
            trips = [max(r["round_trips"].values()) for r in figure["provision"]
                     if r.get("round_trips")]
            rows.append(_row("  round trips per host (max over hosts)", size, summarize(trips),
                             unit="", digits=0))
        for profile_key, label in (("startup_s", "  profile: Python start-up (setup --help)"),
                                   ("exec_true_s", "  profile: start-up+connect+1 cmd (exec true)")):
            values = [p[profile_key] for p in figure.get("profile", [])]
            if values:
                rows.append(_row(label, size, summarize(values)))
        for role in (figure.get("profile") or [{}])[0].get("role_s", {}):
            values = [p["role_s"].get(role) for p in figure["profile"]]
            rows.append(_row(f"  profile: setup --role {role} alone", size,
                             summarize([v for v in values if v is not None])))
        theirs = _walls(figure.get("ansible", []))
        if figure.get("ansible"):
            rows.append(_row("no-op, ansible-playbook (wall)", size, summarize(theirs)))
            value = ratio(ours, theirs)
            rows.append(["ratio provision/ansible", str(size),
                         "-" if value is None else f"{value:.3f}", "", "", "",
                         "<= 0.10" if size == 16 else "",
                         verdict(value, RATIO_TARGET) if size == 16 else ""])
        if figure.get("error"):
            rows.append([f"ERROR: {figure['error'].splitlines()[0][:80]}", str(size), "", "", "",
                         "", "", ""])
    return rows


def fanout_row(setup: dict) -> list[list[str]]:
    sizes = [int(k) for k in setup if _walls(setup[k].get("provision", []))]
    large = max([s for s in sizes if s > 8], default=None)
    if 8 not in sizes or large is None:
        return []
    value = ratio(_walls(setup[str(large)]["provision"]), _walls(setup["8"]["provision"]))
    return [[f"fan-out: no-op setup {large} / 8 hosts", f"{large}/8",
             "-" if value is None else f"{value:.2f}x", "", "", "", "<= 2x",
             verdict(value, FANOUT_TARGET)]]


def train_rows(train: dict) -> list[list[str]]:
    rows = []
    baseline = [b for b in train.get("baseline", []) if b is not None]
    if baseline:
        rows.append(_row("plain local torchrun, 1 node: first line", 1, summarize(baseline)))
    jobs = train.get("jobs", [])
    for nodes in train.get("node_counts", []):
        mine = [j for j in jobs if j["nodes"] == nodes]
        launched = [j["first_lines_s"] for j in mine if j.get("first_lines_s") is not None]
        if launched:
            rows.append(_row("train: every rank's first line", nodes, summarize(launched)))
            overhead = summarize(differences(launched, baseline))
            rows.append(_row("train: launch overhead over plain torchrun", nodes, overhead,
                             target="< 1 s" if nodes == 8 else "",
                             mark=verdict(overhead.median if overhead.n else None,
                                          LAUNCH_TARGET_S) if nodes == 8 else ""))
        together = [b for b in train.get("concurrent_baseline", {}).get(str(nodes), [])
                    if b is not None]
        if launched and together:
            rows.append(_row(f"  profile: {nodes} plain local torchruns at once", nodes,
                             summarize(together)))
            rows.append(_row("  overhead over those (this machine's CPU contention removed)",
                             nodes, summarize(differences(launched, together))))
        staged = [j["checks_and_staging_s"] for j in mine
                  if j.get("checks_and_staging_s") is not None]
        if staged:
            rows.append(_row("  profile: start, connect, checks, staging", nodes,
                             summarize(staged)))
            remote = [j["first_lines_s"] - j["checks_and_staging_s"] for j in mine
                      if j.get("checks_and_staging_s") is not None
                      and j.get("first_lines_s") is not None]
            rows.append(_row("  profile: then remote torchrun to first lines", nodes,
                             summarize(remote)))
        for stop, label, target, limit in (
                ("sigint", "train: Ctrl-C to all gone", "<= 3 s", SIGINT_TARGET_S),
                ("node_death", "train: node death to all gone", "<= 10 s", DEATH_TARGET_S)):
            runs = [j for j in mine if j["stop"] == stop]
            gone = [j["all_gone_s"] for j in runs if j.get("all_gone_s") is not None]
            if runs:
                worst = max(gone) if len(gone) == len(runs) else None
                rows.append(_row(label, nodes, summarize(gone), target=target,
                                 mark=verdict(worst, limit)))
        local_stops = [t for t in train.get("concurrent_teardown", {}).get(str(nodes), [])
                       if t is not None]
        if local_stops:
            rows.append(_row(f"  profile: {nodes} plain local torchruns, SIGTERM to all gone",
                             nodes, summarize(local_stops)))
        orphans = [j.get("orphans") for j in mine if j.get("orphans") is not None]
        if orphans:
            rows.append(["train: orphaned processes (all runs)", str(nodes), str(sum(orphans)),
                         "", "", str(len(orphans)), "0", "ok" if sum(orphans) == 0 else "MISSED"])
    if train.get("error"):
        rows.append([f"ERROR: {train['error'].splitlines()[0][:80]}", "", "", "", "", "", "", ""])
    return rows


def header_lines(results: dict) -> list[str]:
    m = results.get("machine", {})
    start, end = results.get("load_start"), results.get("load_end")
    load = ""
    if start:
        load = f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in start)} at start"
        if end:
            load += f", {'/'.join(f'{x:.2f}' for x in end)} at end"
        if max(start[0], (end or start)[0]) > 0.5 * (m.get("cores") or 1):
            load += " -- MEASURED UNDER LOAD"
    missing = results.get("missing_roles")
    lines = [(f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
              f"{m.get('memory_gb', '?')} GiB, Linux {m.get('kernel', '?')}, "
              f"Python {m.get('python', '?')}, {m.get('openssh', '?')}"),
             load,
             (f"command: {results.get('command', '')}; median/min/max of {results.get('runs')} "
              f"run(s); forks {results.get('forks')}"),
             f"roles run: {', '.join(results.get('roles', []))}"
             + (f"; NOT PRESENT (left out): {', '.join(missing)}" if missing else "")]
    if results.get("ansible_version"):
        lines.append(f"ansible: {results['ansible_version']} (pipelining, gathering explicit, "
                     "ControlPersist, same forks)")
    return [line for line in lines if line]


def render(results: dict) -> str:
    rows = setup_rows(results.get("setup", {})) + fanout_row(results.get("setup", {})) \
        + train_rows(results.get("train", {}))
    return "\n".join(header_lines(results)) + "\n\n" + format_table(HEADER, rows)
