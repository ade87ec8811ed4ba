"""Finding and stopping exactly one job's processes on a node.

Every process of a job carries PROVISION_RUN_ID=<run id> in its environment (torchrun passes
its environment to the workers, and they to theirs), so a job is found by that marker even when
a worker started its own session or process group; another job on the same node has another id.
The mechanism is provision.supervision's, which every remote command uses.
"""

from __future__ import annotations

from provision import supervision
from provision.train.config import RUN_ID_VAR


def stop_script(run_id: str, grace: float) -> str:
    """TERM every process of the job, KILL what is left after `grace` seconds, then print the
    number still alive (0 unless a process is stuck in the kernel)."""
    return supervision.stop_script(f"{RUN_ID_VAR}={run_id}", grace)


def supervised_script(job: str, run_id: str, grace: float) -> str:
    """Runs `job` (a sh line) and stops the whole job when the controller goes away: the
    controller holds the SSH channel's stdin open, so EOF on it means the controller or its
    connection is gone, and no worker may be left holding a GPU."""
    return supervision.supervised_script(job, f"{RUN_ID_VAR}={run_id}", grace)
