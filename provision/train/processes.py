"""Finding and stopping exactly one job's processes on a node.

Every process of a job carries PROVISION_RUN_ID=<run id> in its environment (torchrun passes
its environment to the workers, and they to theirs), so a job is found by that marker even when
a worker started its own session or process group; another job on the same node has another id.
"""

from __future__ import annotations

import shlex

from provision.train.config import RUN_ID_VAR


def _functions(run_id: str, grace: float) -> str:
    marker = shlex.quote(f"{RUN_ID_VAR}={run_id}")
    steps = max(1, int(grace * 10))
    # environ is NUL-separated: grep -z reads it entry by entry. The shell running this has no
    # marker, so it never finds itself. One grep reads every environ (-s: processes that exit
    # meanwhile): a grep per process took seconds per scan on a busy node, and the grace loop
    # below scans every 0.1 s.
    return (
        f"job_pids() {{ grep -lsxz -- {marker} /proc/[0-9]*/environ | "
        "sed 's,^/proc/\\([0-9]*\\)/environ$,\\1,'; }\n"
        "stop_job() {\n"
        "  pids=$(job_pids); [ -n \"$pids\" ] && kill -TERM $pids 2>/dev/null\n"
        f"  i=0; while [ $i -lt {steps} ] && [ -n \"$(job_pids)\" ]; do sleep 0.1; "
        "i=$((i+1)); done\n"
        "  pids=$(job_pids); [ -n \"$pids\" ] && kill -KILL $pids 2>/dev/null && sleep 0.2\n"
        "  job_pids | wc -l\n"
        "}\n")


def stop_script(run_id: str, grace: float) -> str:
    """TERM every process of the job, KILL what is left after `grace` seconds, then print the
    number still alive (0 unless a process is stuck in the kernel)."""
    return _functions(run_id, grace) + "stop_job\n"


def supervised_script(job: str, run_id: str, grace: float) -> str:
    """Runs `job` (a sh line) and stops the whole job when the controller goes away: the
    controller holds the SSH channel's stdin open, so EOF on it means the controller or its
    connection is gone, and no worker may be left holding a GPU."""
    return (_functions(run_id, grace)
            + "exec 3<&0\n"
            + f"( {job} ) </dev/null &\n"
            + "child=$!\n"
            # Once stopping, the watcher ignores the TERM below: the job's leader (torchrun)
            # may exit at the first TERM while a worker that ignores it still waits for KILL.
            + "( while read -r _ <&3; do :; done; trap '' TERM; stop_job >/dev/null ) &\n"
            + "watch=$!\n"
            + "wait $child; rc=$?\n"
            + "kill $watch 2>/dev/null\n"
            + "exit $rc\n")
