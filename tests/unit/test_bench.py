"""The pure parts of bench/: summaries, ratios, the table, Ansible's recap. Nothing is timed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:      # bench/ is not part of the installed package
    sys.path.insert(0, str(REPO))

from bench import report
from bench.setup_bench import parse_recap
from bench.stats import differences, format_table, ratio, summarize, verdict


def test_summary_is_median_min_max():
    s = summarize([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert summarize([4, 1, 3, 2]).median == 2.5
    assert summarize([1.0, None, 5.0]).n == 2


def test_summary_of_nothing():
    s = summarize([])
    assert s.n == 0 and math.isnan(s.median)
    assert s.text() == "-"
    assert summarize([1.234]).text() == "1.23s"
    assert summarize([1.0, 2.0, 4.0]).text() == "2.00s (1.00-4.00)"


def test_ratio_of_medians():
    assert ratio([1.0, 2.0, 9.0], [10.0, 20.0, 30.0]) == 0.1
    assert ratio([], [1.0]) is None
    assert ratio([1.0], []) is None
    assert ratio([1.0], [0.0]) is None


def test_differences_against_the_baseline_median():
    assert differences([3.0, 4.0, None], [1.0, 2.0, 1.0]) == [2.0, 3.0]
    assert differences([3.0], []) == []


def test_verdict_is_informational():
    assert verdict(1.5, 2.0) == "ok"
    assert verdict(2.5, 2.0) == "MISSED"
    assert verdict(None, 2.0) == "-"
    assert verdict(3.0, 2.0, lower_is_better=False) == "ok"


def test_table_columns_are_aligned():
    text = format_table(["a", "long header"], [["wide cell", "1"], ["x"]])
    lines = text.splitlines()
    assert lines[0] == "| a         | long header |"
    assert lines[1] == "|-----------|-------------|"
    assert lines[2] == "| wide cell | 1           |"
    assert lines[3] == "| x         |             |"
    assert len({len(line) for line in lines}) == 1


def test_parse_ansible_recap():
    out = ("PLAY RECAP *****\n"
           "bench1                     : ok=13   changed=0    unreachable=0    failed=0    "
           "skipped=9    rescued=0    ignored=0\n"
           "bench2                     : ok=12   changed=1    unreachable=1    failed=0    "
           "skipped=9    rescued=0    ignored=0\n")
    assert parse_recap(out) == {
        "bench1": {"ok": 13, "changed": 0, "unreachable": 0, "failed": 0, "skipped": 9},
        "bench2": {"ok": 12, "changed": 1, "unreachable": 1, "failed": 0, "skipped": 9}}


def _setup(walls, trips=1, returncode=0):
    return [{"wall_s": w, "returncode": returncode, "round_trips": {"h1": trips, "h2": trips}}
            for w in walls]


RESULTS = {
    "command": "python -m bench --sizes 8,16", "runs": 3, "forks": 16,
    "machine": {"cpu": "CPU", "cores": 2, "memory_gb": 8, "kernel": "6", "python": "3.11",
                "openssh": "OpenSSH_9"},
    "load_start": [3.0, 2.0, 1.0], "load_end": [1.0, 1.0, 1.0],
    "roles": ["preflight", "nfs"], "missing_roles": ["conda"],
    "setup": {
        "8": {"provision": _setup([0.8, 1.0, 1.2]), "profile": []},
        "16": {"provision": _setup([1.0, 1.5, 9.0]) + _setup([0.1], returncode=3),
               "ansible": [{"wall_s": w, "returncode": 0} for w in (20.0, 30.0, 40.0)],
               "profile": [{"startup_s": 0.3, "exec_true_s": 0.7}]}},
    "train": {"node_counts": [8], "baseline": [1.0, 2.0, 3.0],
              "concurrent_teardown": {"8": [0.4, None, 0.6]}, "jobs": [
        {"nodes": 8, "stop": "sigint", "first_lines_s": 2.5, "checks_and_staging_s": 1.0,
         "all_gone_s": 1.0, "orphans": 0},
        {"nodes": 8, "stop": "node_death", "first_lines_s": 3.5, "all_gone_s": 11.0,
         "orphans": 0}]},
}


def rows_by_name(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| figure"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_report_setup_rows_ratio_and_fanout():
    rows = rows_by_name(report.render(RESULTS))
    # the failed run (returncode 3) is not a time
    assert rows[("no-op setup, provision (wall)", "16")][:4] == ["1.50s", "1.00s", "9.00s", "3"]
    assert rows[("no-op setup, provision (wall)", "16")][4:] == ["< 2 s", "ok"]
    assert rows[("round trips per host (max over hosts)", "16")][0] == "1"
    assert rows[("ratio provision/ansible", "16")][0] == "0.050"
    assert rows[("ratio provision/ansible", "16")][-1] == "ok"
    assert rows[("fan-out: no-op setup 16 / 8 hosts", "16/8")][0] == "1.50x"


def test_report_train_rows():
    rows = rows_by_name(report.render(RESULTS))
    assert rows[("train: launch overhead over plain torchrun", "8")][:4] == \
        ["1.00s", "0.50s", "1.50s", "2"]
    assert rows[("train: launch overhead over plain torchrun", "8")][-1] == "ok"
    assert rows[("train: node death to all gone", "8")][-1] == "MISSED"
    assert rows[("train: Ctrl-C to all gone", "8")][-1] == "ok"
    assert rows[("train: orphaned processes (all runs)", "8")][0] == "0"
    assert rows[("profile: 8 plain local torchruns, SIGTERM to all gone", "8")][:4] == \
        ["0.50s", "0.40s", "0.60s", "2"]


def test_report_header_names_load_and_missing_roles():
    text = report.render(RESULTS)
    assert "MEASURED UNDER LOAD" in text
    assert "NOT PRESENT (left out): conda" in text
    quiet = {**RESULTS, "load_start": [0.1, 0.1, 0.1], "missing_roles": []}
    assert "UNDER LOAD" not in report.render(quiet)
