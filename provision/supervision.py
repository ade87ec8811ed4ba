"""Remote commands that die with their SSH channel, and stopping exactly one command's processes.

Every process of a supervised command carries a marker (NAME=VALUE) in its environment, so it
is found even when it started its own session or process group; another command has another
marker. The controller holds the channel's stdin open for as long as it wants the command; EOF
on it means the controller, or its connection, is gone, and a watcher on the host then stops
the command's processes. Train's jobs (marker PROVISION_RUN_ID) and every command the runner
sends (PROVISION_COMMAND_ID) use this one mechanism.
"""

from __future__ import annotations

import shlex

# Marks the processes of one command the runner sends (train's jobs use PROVISION_RUN_ID).
COMMAND_ID_VAR = "PROVISION_COMMAND_ID"


def _functions(marker: str, grace: float) -> str:
    quoted = shlex.quote(marker)
    steps = max(1, int(grace * 10))
    # environ is NUL-separated: grep -z reads it entry by entry. The shell running this has no
    # marker, so it never finds itself. One grep reads every environ (-s: processes that exit
    # meanwhile): a grep per process took seconds per scan on a busy node, and the grace loop
    # below scans every 0.1 s.
    return (
        f"job_pids() {{ grep -lsxz -- {quoted} /proc/[0-9]*/environ | "
        "sed 's,^/proc/\\([0-9]*\\)/environ$,\\1,'; }\n"
        "stop_job() {\n"
        "  pids=$(job_pids); [ -n \"$pids\" ] && kill -TERM $pids 2>/dev/null\n"
        f"  i=0; while [ $i -lt {steps} ] && [ -n \"$(job_pids)\" ]; do sleep 0.1; "
        "i=$((i+1)); done\n"
        "  pids=$(job_pids); [ -n \"$pids\" ] && kill -KILL $pids 2>/dev/null && sleep 0.2\n"
        "  job_pids | wc -l\n"
        "}\n")


def stop_script(marker: str, grace: float) -> str:
    """TERM every process carrying `marker`, KILL what is left after `grace` seconds, then
    print the number still alive (0 unless a process is stuck in the kernel)."""
    return _functions(marker, grace) + "stop_job\n"


def supervised_script(job: str, marker: str, grace: float, payload: int = 0) -> str:
    """Runs `job` (a sh line whose processes carry `marker`) and stops it when the channel's
    stdin reaches EOF while the job still runs. The job reads the first `payload` bytes of
    stdin, then EOF; the rest of stdin is only the controller's liveness signal.

    The payload is read, and only then the watcher started, by the pipeline's first part, so
    that no two processes race for stdin's bytes. The watcher holds none of the channel's
    output, so it never delays the channel's EOF after the job ends, and it stops nothing once
    this shell ($$) has exited: a finished command's daemons are not the job's to stop. It is
    no child of this shell either, which therefore waits for the job alone.
    """
    # `exec` rather than redirections on the groups: dash keeps a copy of a redirected fd
    # (above 9) while a group runs, and the watcher started inside would inherit the channel's
    # stderr through it.
    return (_functions(marker, grace)
            + "exec 3<&0\n"
            + f"{{ exec 2>/dev/null; head -c {int(payload)} <&3; exec >/dev/null; "
            + "{ cat >/dev/null; kill -0 $$ && stop_job >/dev/null; } <&3 & } | "
            + f"( exec 3<&-; {job} ) &\n"
            + "exec 3<&-\n"
            + "wait $!\n")


def marked_job(marker: str, script: str) -> str:
    """A sh line running `script` in a shell that carries `marker`, so that the shell itself is
    stopped too (an unmarked shell would go on to its next command)."""
    return "exec " + shlex.join(["env", marker, "sh", "-c", script])
