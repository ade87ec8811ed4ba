"""NVIDIA verification (drivers are never installed): per host, and GPU models across hosts."""

from __future__ import annotations

from provision.checks import CheckContext, cluster_check
from provision.facts.gpu import NvidiaGpus
from provision.nvidia import check_gpus, model_mismatch
from provision.operations.base import FactValues, Failure, HostContext, NoChange, Skip, operation
from provision.plan import Status, TaskResult
from provision.settings import Setting


@operation("nvidia_check", [Setting("gpus", "int", min=-1), Setting("torch_cuda", "str")],
           required=("gpus",), facts=lambda a: [NvidiaGpus()] if a["gpus"] > 0 else [])
def nvidia_check(args: dict, facts: FactValues, ctx: HostContext):
    """The driver runs, is new enough for torch's CUDA, and the host has `gpus` healthy GPUs."""
    if args["gpus"] == 0:
        return Skip("CPU-only host (gpus: 0)")
    if args["gpus"] < 0:
        return Failure("the inventory does not say how many GPUs this host has: set `gpus` "
                       "(0 for a CPU-only host)")
    report = facts[NvidiaGpus()]
    problems = check_gpus(report, args["gpus"], args.get("torch_cuda"))
    if problems:
        return Failure("; ".join(problems))
    names = sorted({g.name for g in report.gpus})
    return NoChange(f"{len(report.gpus)}x {', '.join(names)}, driver {report.driver_version}, "
                    f"CUDA {report.cuda_version}")


@cluster_check("gpu_models")
def gpu_models(ctx: CheckContext) -> list[TaskResult]:
    """Warn when training hosts carry different GPU models (they then train at the slowest's pace)."""
    gpu_hosts = {name: s for name, s in ctx.sessions.items() if ctx.variables[name].get("gpus")}
    if len(gpu_hosts) < 2:
        return []
    # The run's own readings (nvidia_check read them): no second round trip per GPU host.
    reports = {name: s.facts[NvidiaGpus()] if NvidiaGpus() in s.facts
               else s.gather([NvidiaGpus()])[NvidiaGpus()] for name, s in gpu_hosts.items()}
    mismatch = model_mismatch(reports)
    message = f"warning: {mismatch}" if mismatch else "every host has the same GPU model"
    return [TaskResult(name, ctx.role.name, "same GPU model", Status.OK, message)
            for name in reports]
